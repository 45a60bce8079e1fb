"""The DRAW math: filterbanks, read/write, KL, shapes and gradients."""

from __future__ import annotations

import math

import pytest
import torch

from drawcli.model import ATTENTION_FIELDS, DRAW, kl_per_image


def set_head(head: torch.nn.Linear, gx_=0.0, gy_=0.0, log_sigma2=0.0, log_delta_=0.0, log_gamma=0.0):
    """Make an attention head output fixed raw values whatever the decoder state."""
    with torch.no_grad():
        head.weight.zero_()
        head.bias.copy_(torch.tensor([gx_, gy_, log_sigma2, log_delta_, log_gamma]))


def params(model, head, n, **raw):
    set_head(head, **raw)
    return model.attention_params(torch.zeros(1, model.hidden), head, n)


def test_offsets_use_the_papers_one_based_index():
    m = DRAW(read_n=2, write_n=5, hidden=8, latent=2, glimpses=1)
    # (i - N/2 - 0.5) for i = 1..N: symmetric about the centre for even and odd N.
    assert m.read_offsets.tolist() == [-0.5, 0.5]
    assert m.write_offsets.tolist() == [-2.0, -1.0, 0.0, 1.0, 2.0]


def test_attention_params_hand_worked_case():
    m = DRAW(read_n=5, write_n=5, hidden=8, latent=2, glimpses=1)
    p = params(m, m.read_attention, 5, gx_=0.0, gy_=-0.5, log_sigma2=math.log(2.0), log_delta_=0.0, log_gamma=math.log(3.0))
    gx, gy, delta, sigma2, gamma = p[0].tolist()
    assert gx == pytest.approx(14.5)  # (A+1)/2 (0 + 1): the centre of a 1-based 28-pixel row
    assert gy == pytest.approx(7.25)  # (B+1)/2 (-0.5 + 1)
    assert delta == pytest.approx(27 / 4)  # (max(A,B) - 1)/(N - 1) exp(0)
    assert sigma2 == pytest.approx(2.0) and gamma == pytest.approx(3.0)
    assert len(ATTENTION_FIELDS) == p.shape[1]


def test_filter_centres_match_the_formula():
    m = DRAW(read_n=5, write_n=5, hidden=8, latent=2, glimpses=1)
    # Tiny sigma: each filter becomes a one-hot at its centre mu_i = g + (i - N/2 - 0.5) delta.
    g_ = 14 / 14.5 - 1  # g = (A+1)/2 (g~ + 1) = 14
    p = params(m, m.read_attention, 5, gx_=g_, gy_=g_, log_sigma2=math.log(0.01), log_delta_=math.log(4 / 6.75))
    fx, fy = m.filterbank(p, m.read_offsets)
    expected = [14 + (i - 2.5 - 0.5) * 4.0 for i in range(1, 6)]  # 6, 10, 14, 18, 22
    centre_of_mass = (fx[0] * m.grid_x).sum(-1)
    assert centre_of_mass.tolist() == pytest.approx(expected, abs=1e-3)
    assert (fy[0] * m.grid_y).sum(-1).tolist() == pytest.approx(expected, abs=1e-3)


@pytest.mark.parametrize("n", [1, 2, 5, 12])
def test_filterbank_rows_sum_to_one(n):
    g = torch.Generator().manual_seed(0)
    m = DRAW(read_n=n, write_n=n, hidden=16, latent=2, glimpses=1)
    # Windows anywhere on the image (every centre inside it), any spacing, sigma^2 down to 0.1.
    delta = 0.1 + (27 / max(n - 1, 1) - 0.1) * torch.rand(64, generator=g)
    half = (n - 1) / 2 * delta
    gx, gy = (1 + half + (27 - 2 * half) * torch.rand(64, generator=g) for _ in range(2))
    sigma2 = 0.1 + 3 * torch.rand(64, generator=g)
    p = torch.stack([gx, gy, delta, sigma2, torch.ones(64)], dim=1)
    fx, fy = m.filterbank(p, m.read_offsets)
    assert fx.shape == (64, n, 28) and fy.shape == (64, n, 28)
    assert torch.allclose(fx.sum(-1), torch.ones(64, n), atol=1e-5)
    assert torch.allclose(fy.sum(-1), torch.ones(64, n), atol=1e-5)


def test_full_size_centred_read_returns_the_image():
    m = DRAW(read_n=28, write_n=28, hidden=8, latent=2, glimpses=1)
    # N = A, delta = 1, centred: mu_i = i, one filter per pixel; small sigma: (almost) identity.
    p = params(m, m.read_attention, 28, log_sigma2=math.log(0.02))
    assert p[0, 2].item() == pytest.approx(1.0)
    torch.manual_seed(1)
    x = torch.rand(1, 28, 28)
    r = m.read_glimpse(x, 1 - x, p).reshape(1, 28, 2, 28)
    assert torch.allclose(r[:, :, 0], x, atol=1e-4)
    assert torch.allclose(r[:, :, 1], 1 - x, atol=1e-4)


def test_read_and_write_are_adjoint():
    torch.manual_seed(2)
    n = 4
    m = DRAW(height=20, width=28, read_n=n, write_n=n, hidden=16, latent=2, glimpses=1)
    p = m.attention_params(torch.randn(8, 16), m.read_attention, n)
    p[:, 4] = 1.0  # gamma = 1
    x = torch.randn(8, 20, 28)
    w = torch.randn(8, n, n)
    read_x = m.read_glimpse(x, torch.zeros_like(x), p).reshape(8, n, 2, n)[:, :, 0]
    lhs = (read_x * w).sum((1, 2))  # <F_y x F_x^T, w>
    rhs = (x * m.write_patch(w, p)).sum((1, 2))  # <x, F_y^T w F_x>
    assert torch.allclose(lhs, rhs, rtol=1e-4, atol=1e-4)


def test_gamma_scales_read_and_inverse_scales_write():
    torch.manual_seed(3)
    m = DRAW(read_n=3, write_n=3, hidden=16, latent=2, glimpses=1)
    p = m.attention_params(torch.randn(2, 16), m.read_attention, 3)
    x, w = torch.rand(2, 28, 28), torch.randn(2, 3, 3)
    p1, p4 = p.clone(), p.clone()
    p1[:, 4], p4[:, 4] = 1.0, 4.0
    assert torch.allclose(m.read_glimpse(x, x, p4), 4 * m.read_glimpse(x, x, p1))
    assert torch.allclose(m.write_patch(w, p4), m.write_patch(w, p1) / 4)


def test_kl_is_zero_at_the_prior_with_the_right_constant():
    # The constant is -T*Z/2: with -T/2 this would be (T*Z - T)/2 = 27 for T=3, Z=10.
    mu = torch.zeros(3, 5, 10)
    assert torch.allclose(kl_per_image(mu, torch.zeros_like(mu)), torch.zeros(5), atol=1e-6)


def test_kl_matches_a_monte_carlo_estimate():
    g = torch.Generator().manual_seed(4)
    t, b, z = 3, 4, 6
    mu = torch.randn(t, b, z, generator=g, dtype=torch.float64)
    log_sigma = 0.5 * torch.randn(t, b, z, generator=g, dtype=torch.float64)
    k = 200_000
    eps = torch.randn(k, t, b, z, generator=g, dtype=torch.float64)
    samples = mu + log_sigma.exp() * eps
    # log q - log p for each sample, summed over steps and latent dims.
    ratio = (0.5 * samples.pow(2) - 0.5 * eps.pow(2) - log_sigma).sum((1, 3))
    estimate, stderr = ratio.mean(0), ratio.std(0) / math.sqrt(k)
    exact = kl_per_image(mu, log_sigma)
    assert torch.all((estimate - exact).abs() < 4 * stderr + 1e-9)


def test_log_ratio_averages_to_the_analytic_kl():
    torch.manual_seed(5)
    m = DRAW(height=6, width=5, glimpses=3, hidden=16, latent=4, read_n=2, write_n=3)
    x = torch.rand(1, 6, 5).bernoulli().expand(4000, 6, 5)
    out = m(x, log_ratio=True)
    # Same image, independent z sequences. Given z_<t, E[log q/p at step t] is step t's analytic
    # KL, so log_ratio - L^z has mean zero (mu_t, sigma_t themselves vary with earlier samples).
    d = (out.log_ratio - out.lz).double()
    assert abs(d.mean().item()) < 4 * d.std().item() / math.sqrt(len(d))
    assert d.std().item() > 0.1  # the Monte-Carlo term really is random


@pytest.mark.parametrize("attention", [True, False])
def test_shapes_losses_and_gradients(attention):
    torch.manual_seed(6)
    m = DRAW(height=12, width=9, glimpses=4, hidden=32, latent=5, attention=attention, read_n=2, write_n=3)
    x = torch.rand(7, 12, 9).bernoulli()
    out = m(x, record=True)
    assert out.lx.shape == out.lz.shape == (7,)
    assert out.canvases.shape == (4, 7, 12, 9)
    if attention:
        assert out.read.shape == out.write.shape == (4, 7, 5)
    else:
        assert out.read is None and out.write is None
    # L_x is the Bernoulli NLL of x under sigmoid(c_T), summed over pixels.
    manual = -(x * torch.log(torch.sigmoid(out.canvases[-1])) + (1 - x) * torch.log(1 - torch.sigmoid(out.canvases[-1])))
    assert torch.allclose(out.lx, manual.sum((1, 2)), rtol=1e-4)
    assert torch.isfinite(out.loss).all() and (out.lz >= 0).all()
    out.loss.mean().backward()
    for name, p in m.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
        assert p.grad.abs().sum() > 0, f"{name} gets no gradient"
    canvases, writes = m.generate(3)
    assert canvases.shape == (4, 3, 12, 9)
    assert (writes is not None) == attention


def test_fresh_noise_each_step_and_reproducible_with_a_generator():
    m = DRAW(glimpses=5, hidden=16, latent=3)
    x = torch.rand(2, 28, 28).bernoulli()
    a = m(x, generator=torch.Generator().manual_seed(0)).loss
    b = m(x, generator=torch.Generator().manual_seed(0)).loss
    c = m(x, generator=torch.Generator().manual_seed(1)).loss
    assert torch.equal(a, b) and not torch.equal(a, c)
    # Prior samples: different steps draw different z (canvas updates differ from step to step).
    canvases, _ = m.generate(1, generator=torch.Generator().manual_seed(0))
    updates = canvases.diff(dim=0)
    assert not torch.allclose(updates[0], updates[1])


def test_overfits_one_batch_of_real_mnist(mnist_splits):
    torch.manual_seed(0)
    x = (torch.from_numpy(mnist_splits.train[:32]).float() / 255 >= 0.5).float()
    # The best model with independent pixels (per-pixel means of these 32 digits) scores this:
    p = x.mean(0).clamp(1e-6, 1 - 1e-6)
    independent = -(x * p.log() + (1 - x) * (1 - p).log()).sum((1, 2)).mean().item()
    m = DRAW(glimpses=8, hidden=128, latent=8, read_n=2, write_n=5)
    opt = torch.optim.Adam(m.parameters(), lr=3e-3, betas=(0.5, 0.999))
    first = m(x).loss.mean().item()
    for _ in range(300):
        loss = m(x).loss.mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        final = m(x).loss.mean().item()
    # Starts near 784 log 2 = 543 nats; to go well below the independent-pixel model (~191 nats)
    # the latent path must carry information about each digit.
    assert first > 400
    assert final < independent - 25, (first, final, independent)


def test_colour_read_and_write_equal_a_per_channel_loop_of_the_grey_functions():
    """eq 27-29 for C channels: one set of filterbanks applied to every channel."""
    torch.manual_seed(0)
    grey = DRAW(height=9, width=11, glimpses=1, hidden=8, latent=2, read_n=3, write_n=4)
    colour = DRAW(height=9, width=11, channels=3, glimpses=1, hidden=8, latent=2, read_n=3, write_n=4)
    p = torch.tensor([[5.5, 4.0, 1.7, 0.9, 1.3], [3.0, 6.0, 2.2, 1.4, 0.7]])
    x, x_hat = torch.rand(2, 3, 9, 11), torch.rand(2, 3, 9, 11)
    r = colour.read_glimpse(x, x_hat, p).reshape(2, 3, 6, 3)  # (B, i, image, j): images x_1..x_3, x_hat_1..x_3
    for c in range(3):
        g = grey.read_glimpse(x[:, c], x_hat[:, c], p).reshape(2, 3, 2, 3)  # (B, i, [x, x_hat], j)
        assert torch.allclose(r[:, :, c], g[:, :, 0], atol=1e-6)
        assert torch.allclose(r[:, :, 3 + c], g[:, :, 1], atol=1e-6)
    w = torch.randn(2, 3, 4, 4)
    out = colour.write_patch(w, p)
    assert out.shape == (2, 3, 9, 11)
    for c in range(3):
        assert torch.allclose(out[:, c], grey.write_patch(w[:, c], p), atol=1e-6)
    assert colour.encoder.linear.in_features == 2 * 3 * 9 + 2 * 8 and colour.write_head.out_features == 3 * 16


def test_the_constructor_takes_the_settings_names_and_the_old_ones_warn():
    """DRAW(glimpses=, latent=) as the settings say model.glimpses and model.latent; glimpses= and latent=
    still work with a FutureWarning, and stored configurations with the old names load silently."""
    import warnings

    from drawcli.model.draw import canonical_config

    new = DRAW(height=8, width=8, glimpses=3, hidden=8, latent=2)
    assert (new.glimpses, new.latent, new.steps, new.embed) == (3, 2, 3, 2)
    assert {"glimpses": 3, "latent": 2} .items() <= new.config().items() and "steps" not in new.config()
    with pytest.warns(FutureWarning) as said:
        old = DRAW(height=8, width=8, steps=3, hidden=8, embed=2)
    assert sorted(str(w.message).split(",")[0] for w in said) == ["DRAW(embed=...) is now DRAW(latent=...)",
                                                                  "DRAW(steps=...) is now DRAW(glimpses=...)"]
    assert old.config() == new.config()
    with pytest.raises(TypeError, match="both glimpses= and its old name steps="):
        DRAW(glimpses=3, steps=3)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        stored = canonical_config({"height": 8, "width": 8, "steps": 3, "hidden": 8, "embed": 2})
        assert DRAW(**stored).config() == new.config()
    with pytest.raises(ValueError, match="both steps and glimpses"):
        canonical_config({"steps": 3, "glimpses": 4})
