"""The Python engine (drawcli/model/fast.py, python_loop.py and python_backward.py: hand-written
backward; sampling.py) equals draw.py's plain loops (engine "reference", autograd for every
gradient). Every call names the engine it runs.

Same weights and the same noise, float64: losses, records, samples and every parameter's
gradient agree to 1e-6 relative.
"""

from __future__ import annotations

import copy

import pytest
import torch

from drawcli.model import DRAW, Engine
from drawcli.model import packed_gemm

RTOL = 1e-6
PYTHON = "python"


def close(a: torch.Tensor, b: torch.Tensor, rtol: float = RTOL) -> bool:
    """Relative agreement: elementwise to rtol of the larger of |b| and a scale of b's size,
    so tiny entries of a tensor are judged against the tensor's magnitude."""
    scale = b.abs().max().clamp_min(1e-30)
    return bool(torch.all((a - b).abs() <= rtol * torch.maximum(b.abs(), 1e-3 * scale)))


def randomise(model: DRAW, seed: int) -> None:
    """Move every parameter off its initialisation (biases included) so that no gradient path
    is trivially zero; the attention heads get modest changes so windows stay on the image."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            scale = 0.05 if "attention" in name else 0.2
            p.add_(scale * torch.randn(p.shape, generator=g, dtype=p.dtype))


class Named:
    """A model whose forward and generate run ``engine`` (named in every call); everything else
    is the model's."""

    def __init__(self, model: DRAW, engine: str | Engine):
        self.model, self.engine = model, engine

    def __call__(self, *args, **kwargs):
        return self.model(*args, engine=self.engine, **kwargs)

    def generate(self, *args, **kwargs):
        return self.model.generate(*args, engine=self.engine, **kwargs)

    def __getattr__(self, name):
        return getattr(self.model, name)


def pair(seed=0, **config):
    """The Python engine and the reference loops on two copies of the same weights."""
    torch.manual_seed(seed)
    fast = DRAW(**config).double()
    randomise(fast, seed + 100)
    return Named(fast, PYTHON), Named(copy.deepcopy(fast), "reference")


def grads_of(model) -> dict[str, torch.Tensor]:
    return {name: p.grad for name, p in model.named_parameters()}


CASES = [
    # (height, width, steps, hidden, embed, attention, read_n, write_n, batch)
    (28, 28, 4, 16, 5, True, 2, 5, 3),  # the paper's MNIST attention shapes, short
    (12, 9, 3, 8, 3, True, 3, 2, 4),  # non-square, wider than tall
    (7, 10, 2, 8, 2, True, 1, 1, 2),  # N = 1 read and write
    (6, 6, 1, 8, 4, True, 2, 3, 5),  # T = 1
    (10, 10, 3, 8, 3, True, 4, 4, 1),  # batch 1
    (12, 9, 3, 8, 3, False, 2, 5, 4),  # no attention, non-square
    (5, 5, 1, 6, 2, False, 2, 5, 3),  # no attention, T = 1
]


@pytest.mark.parametrize("case", CASES, ids=lambda c: "x".join(map(str, c[:2])) + f"-T{c[2]}-att{int(c[5])}-N{c[6]}{c[7]}-B{c[8]}")
def test_loss_and_every_gradient_match_the_plain_loop(case):
    height, width, steps, hidden, embed, attention, read_n, write_n, batch = case
    config = dict(height=height, width=width, glimpses=steps, hidden=hidden, latent=embed,
                  attention=attention, read_n=read_n, write_n=write_n)
    fast, base = pair(seed=sum(case), **config)
    x = torch.rand(batch, height, width, dtype=torch.float64, generator=torch.Generator().manual_seed(1))

    out = fast(x, log_ratio=True, generator=torch.Generator().manual_seed(7))
    ref = base(x, log_ratio=True, generator=torch.Generator().manual_seed(7))
    for key in ("lx", "lz", "log_ratio"):
        assert close(getattr(out, key), getattr(ref, key)), key
    # A loss that reaches every output of the loop: c_T (L^x), mu and sigma (L^z, log_ratio).
    weights = torch.linspace(0.5, 1.5, batch, dtype=torch.float64)
    ((out.loss + 0.3 * out.log_ratio) * weights).sum().backward()
    ((ref.loss + 0.3 * ref.log_ratio) * weights).sum().backward()

    expected = grads_of(base)
    names = [name for name, _ in fast.named_parameters()]
    assert sorted(names) == sorted(expected)
    for name, p in fast.named_parameters():
        assert p.grad is not None, name
        assert close(p.grad, expected[name]), (name, (p.grad - expected[name]).abs().max().item())


@pytest.mark.parametrize("attention", [True, False])
def test_gradient_with_respect_to_the_input(attention):
    config = dict(height=9, width=11, glimpses=3, hidden=8, latent=3, attention=attention, read_n=3, write_n=2)
    fast, base = pair(seed=3, **config)
    x = torch.rand(2, 9, 11, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    x_fast, x_base = x.clone().requires_grad_(), x.clone().requires_grad_()
    fast(x_fast, generator=torch.Generator().manual_seed(5)).loss.sum().backward()
    base(x_base, generator=torch.Generator().manual_seed(5)).loss.sum().backward()
    assert close(x_fast.grad, x_base.grad)


@pytest.mark.parametrize("attention", [True, False])
def test_records_evaluation_and_samples_match_the_plain_loop(attention):
    config = dict(height=10, width=8, glimpses=4, hidden=12, latent=3, attention=attention, read_n=2, write_n=3)
    fast, base = pair(seed=11, **config)
    x = torch.rand(3, 10, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(4))
    ref = base(x, record=True, generator=torch.Generator().manual_seed(9))
    out = fast(x, record=True, generator=torch.Generator().manual_seed(9))  # gradient path
    with torch.no_grad():  # evaluation path: two reused slots instead of T
        out_eval = fast(x, record=True, generator=torch.Generator().manual_seed(9))
    for o in (out, out_eval):
        assert close(o.loss, ref.loss)
        assert close(o.canvases, ref.canvases)
        if attention:
            assert close(o.read, ref.read) and close(o.write, ref.write)
        else:
            assert o.read is None and o.write is None
    assert not out.canvases.requires_grad  # pictures only

    canvases, writes = fast.generate(5, generator=torch.Generator().manual_seed(3))
    ref_canvases, ref_writes = base.generate(5, generator=torch.Generator().manual_seed(3))
    assert close(canvases, ref_canvases)
    assert (writes is None) == (not attention)
    if attention:
        assert close(writes, ref_writes)


def test_float32_paper_config_agrees_with_the_plain_loop():
    """The paper's configuration in float32 at full length: same numbers up to rounding."""
    torch.manual_seed(0)
    fast = Named(DRAW(), PYTHON)
    base = Named(copy.deepcopy(fast.model), "reference")
    x = torch.rand(4, 28, 28, generator=torch.Generator().manual_seed(0)).bernoulli()
    out = fast(x, generator=torch.Generator().manual_seed(1))
    ref = base(x, generator=torch.Generator().manual_seed(1))
    assert torch.allclose(out.loss, ref.loss, rtol=1e-4)
    out.loss.mean().backward()
    ref.loss.mean().backward()
    expected = grads_of(base)
    for name, p in fast.named_parameters():
        err = (p.grad - expected[name]).norm() / expected[name].norm().clamp_min(1e-12)
        assert err < 1e-3, (name, err.item())


def test_backward_twice_through_one_forward_is_refused():
    fast = DRAW(glimpses=2, hidden=8, latent=2)
    loss = fast(torch.rand(2, 28, 28), engine=PYTHON).loss.sum()
    loss.backward(retain_graph=True)
    with pytest.raises(RuntimeError, match="only once"):
        loss.backward()


def test_autocast_keeps_the_fast_paths_outputs_in_the_models_dtype():
    """Under bfloat16 autocast only the LSTM products run in bf16 (tests/test_precision.py); the
    loop's buffers and outputs stay float32 and agree with float32 up to bf16 rounding."""
    fast, base = pair(seed=2, height=8, width=8, glimpses=2, hidden=8, latent=2, read_n=2, write_n=3)
    fast.model.float()
    base.model.float()
    x = torch.rand(3, 8, 8)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = fast(x, generator=torch.Generator().manual_seed(0))
        canvases, _ = fast.generate(2)
    ref = base(x, generator=torch.Generator().manual_seed(0))
    assert out.loss.dtype == canvases.dtype == torch.float32
    assert torch.allclose(out.loss, ref.loss, rtol=2e-3)
    out.loss.sum().backward()


@pytest.mark.parametrize("attention", [True, False])
def test_packed_products_equal_torch_mm_in_float32(attention, monkeypatch):
    """CPU float32 runs each step's LSTM products through oneDNN with weights packed once per
    loop; the loss, every gradient and the samples must equal the torch.mm path up to rounding."""
    if not packed_gemm.packed_gemm_works():
        pytest.skip("this torch build has no working oneDNN linear: torch.mm is the only path")
    config = dict(height=12, width=10, glimpses=5, hidden=32, latent=6, attention=attention, read_n=2, write_n=3)
    torch.manual_seed(4)
    fast = DRAW(**config)
    randomise(fast, 40)
    x = torch.rand(40, 12, 10, generator=torch.Generator().manual_seed(1))  # >= 32 rows: packed
    works, packed_calls = packed_gemm.packed_gemm_works, []
    monkeypatch.setattr(packed_gemm, "packed_gemm_works", lambda dtype: packed_calls.append(1) or works(dtype))
    results = []
    for packed in (True, False):
        engine = Engine(PYTHON, packed_gemm=packed)
        fast.zero_grad(set_to_none=True)
        out = fast(x, generator=torch.Generator().manual_seed(2), engine=engine)
        out.loss.sum().backward()
        samples, _ = fast.generate(33, generator=torch.Generator().manual_seed(3), engine=engine)
        results.append((out.loss.detach(), {n: p.grad.clone() for n, p in fast.named_parameters()}, samples))
    (loss_p, grads_p, samples_p), (loss_m, grads_m, samples_m) = results
    assert len(packed_calls) == 5  # forward 2, backward 2, sampling 1: the packed run packed
    assert torch.allclose(loss_p, loss_m, rtol=1e-5)
    assert torch.allclose(samples_p, samples_m, rtol=1e-4, atol=1e-4)
    for name, g in grads_m.items():
        err = (grads_p[name] - g).norm() / g.norm().clamp_min(1e-12)
        assert err < 1e-4, (name, err.item())


def test_packed_products_can_be_switched_off(monkeypatch):
    """With the engine's packed_gemm off no weight is packed: every step's product is torch.mm
    (the comparison benchmarks/speed.py prints)."""
    def refuse(*args, **kwargs):
        raise AssertionError("a weight was packed although packed products are off")

    monkeypatch.setattr(packed_gemm, "packed_gemm_works", refuse)
    m = DRAW(height=8, width=8, glimpses=2, hidden=8, latent=2, read_n=2, write_n=3)
    engine = Engine(PYTHON, packed_gemm=False)
    out = m(torch.rand(33, 8, 8), engine=engine)  # >= 32 rows: only the option keeps these products off oneDNN
    out.loss.sum().backward()
    m.generate(33, engine=engine)
    assert all(p.grad is not None for p in m.parameters())


@pytest.mark.parametrize("attention", [True, False])
def test_final_step_sampling_equals_the_last_of_every_step(attention):
    """generate(every_step=False), what `draw sample` uses, returns exactly the last canvas and
    window of the full sequence drawn from the same noise."""
    fast, base = pair(seed=8, height=9, width=7, glimpses=4, hidden=10, latent=3, attention=attention, read_n=2, write_n=3)
    every, writes = fast.generate(5, generator=torch.Generator().manual_seed(6))
    last, last_writes = fast.generate(5, generator=torch.Generator().manual_seed(6), every_step=False)
    assert last.shape == (1, 5, 9, 7)
    assert torch.equal(last, every[-1:])
    if attention:
        assert last_writes.shape == (1, 5, 5) and torch.equal(last_writes, writes[-1:])
    else:
        assert last_writes is None and writes is None
    ref_last, _ = base.generate(5, generator=torch.Generator().manual_seed(6), every_step=False)
    assert close(last, ref_last)


def test_reused_step_buffers_give_the_same_results_across_shapes_and_modes():
    """The loop keeps its step buffers (and views into them) between calls: training per model,
    evaluation per model. Interleaving batch sizes, training and evaluation, and sampling must not
    leak anything from one call into the next."""
    torch.manual_seed(0)
    m = DRAW(height=9, width=11, glimpses=3, hidden=16, latent=3, read_n=2, write_n=3).double()
    randomise(m, 1)
    m = Named(m, PYTHON)
    xs = {b: torch.rand(b, 9, 11, dtype=torch.float64, generator=torch.Generator().manual_seed(b)) for b in (2, 5)}

    def train_grads(b):
        m.zero_grad(set_to_none=True)
        out = m(xs[b], generator=torch.Generator().manual_seed(3))
        out.loss.sum().backward()
        return out.loss.detach(), [p.grad.clone() for p in m.parameters()]

    def evaluate(b):
        with torch.no_grad():
            return m(xs[b], record=True, generator=torch.Generator().manual_seed(4))

    first = {b: (train_grads(b), evaluate(b)) for b in (2, 5)}
    for b in (5, 2, 2, 5):
        m.generate(3)
        (loss, grads), ev = train_grads(b), evaluate(b)
        (loss0, grads0), ev0 = first[b]
        assert torch.equal(loss, loss0)
        assert all(torch.equal(g, g0) for g, g0 in zip(grads, grads0))
        assert torch.equal(ev.loss, ev0.loss) and torch.equal(ev.canvases, ev0.canvases)
        assert torch.equal(ev.read, ev0.read) and torch.equal(ev.write, ev0.write)


def test_evaluation_after_inference_mode_reuses_buffers_safely():
    """Buffers made under torch.inference_mode are plain tensors, so a later no_grad (or frozen
    model) call that reuses them may write into them."""
    fast, base = pair(seed=5, height=8, width=8, glimpses=2, hidden=8, latent=2, read_n=2, write_n=3)
    x = torch.rand(3, 8, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        first = fast(x, generator=torch.Generator().manual_seed(1)).loss
    with torch.no_grad():
        again = fast(x, generator=torch.Generator().manual_seed(1)).loss
    fast.model.requires_grad_(False)
    frozen = fast(x, generator=torch.Generator().manual_seed(1)).loss
    ref = base(x, generator=torch.Generator().manual_seed(1)).loss
    assert close(first, ref) and torch.equal(first, again) and torch.equal(first, frozen)


@pytest.mark.parametrize("shape", [(9, 12), (12, 9), (10, 10)])
def test_a_non_finite_batch_does_not_poison_later_gradients(shape):
    """Backward reuses scratch buffers (the filterbank gradients of non-square images have padding
    columns): after a batch that produced NaNs, the same clean batch gives the same gradients."""
    h, w = shape
    torch.manual_seed(0)
    m = Named(DRAW(height=h, width=w, glimpses=2, hidden=8, latent=2, read_n=2, write_n=3).double(), PYTHON)
    x = torch.rand(4, h, w, dtype=torch.float64, generator=torch.Generator().manual_seed(0))

    def grads(inp):
        m.zero_grad(set_to_none=True)
        m(inp, generator=torch.Generator().manual_seed(1)).loss.sum().backward()
        return [p.grad.clone() for p in m.parameters()]

    before = grads(x)
    bad = x.clone()
    bad[0, 0, 0] = float("nan")
    assert not all(torch.isfinite(g).all() for g in grads(bad))
    after = grads(x)
    assert all(torch.equal(a, b) for a, b in zip(before, after))


def test_torch_compile_of_the_model_runs_the_loop_eagerly_and_agrees():
    """torch.compile(model) traces around the time loop (it is one fused node already, with
    buffers and private oneDNN ops no compiler can improve) and gives the eager numbers.
    aot_eager goes through AOTAutograd like the default backend, without needing a C++ compiler;
    tracing into the loop fails there."""
    torch.manual_seed(0)
    m = DRAW(height=8, width=8, glimpses=2, hidden=8, latent=2, read_n=2, write_n=3)
    compiled = torch.compile(m, backend="aot_eager")
    x = torch.rand(33, 8, 8, generator=torch.Generator().manual_seed(0))  # >= 32 rows: the packed path
    eps = torch.randn(2, 33, 2, generator=torch.Generator().manual_seed(1))
    grads = []
    for net in (m, compiled):
        m.zero_grad(set_to_none=True)
        out = net(x, eps=eps, engine=PYTHON)
        out.loss.sum().backward()
        grads.append((out.loss.detach(), [p.grad.clone() for p in m.parameters()]))
    (loss_e, g_e), (loss_c, g_c) = grads
    assert torch.allclose(loss_e, loss_c, rtol=1e-6)
    assert all(torch.allclose(a, b, rtol=1e-5, atol=1e-7) for a, b in zip(g_e, g_c))
    with torch.no_grad():
        assert torch.allclose(compiled(x, eps=eps, engine=PYTHON).loss, loss_e, rtol=1e-6)


# ----------------------------------------------------------------------------- colour (C channels)
COLOUR_CASES = [
    # (height, width, channels, steps, attention, read_n, write_n, batch)
    (10, 10, 3, 3, True, 2, 3, 4),  # square, RGB
    (9, 12, 3, 2, True, 3, 2, 3),  # non-square, wider than tall
    (12, 7, 2, 2, True, 1, 4, 2),  # two channels, N = 1 read
    (6, 8, 3, 2, False, 2, 5, 3),  # no attention, non-square
    (5, 5, 1, 2, True, 2, 3, 2),  # one channel given as (B, 1, H, W)
]


@pytest.mark.parametrize("case", COLOUR_CASES, ids=lambda c: f"{c[0]}x{c[1]}x{c[2]}-att{int(c[4])}")
def test_colour_loss_gradients_records_and_samples_match_the_plain_loop(case):
    height, width, channels, steps, attention, read_n, write_n, batch = case
    fast, base = pair(seed=sum(case), height=height, width=width, channels=channels, glimpses=steps, hidden=12, latent=3,
                      attention=attention, read_n=read_n, write_n=write_n)
    x = torch.rand(batch, channels, height, width, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    xf, xb = x.clone().requires_grad_(), x.clone().requires_grad_()
    out = fast(xf, log_ratio=True, record=True, generator=torch.Generator().manual_seed(7))
    ref = base(xb, log_ratio=True, record=True, generator=torch.Generator().manual_seed(7))
    for key in ("lx", "lz", "log_ratio"):
        assert close(getattr(out, key), getattr(ref, key)), key
    assert out.canvases.shape == (steps, batch, channels, height, width)
    assert close(out.canvases, ref.canvases)
    if attention:
        assert close(out.read, ref.read) and close(out.write, ref.write)
    weights = torch.linspace(0.5, 1.5, batch, dtype=torch.float64)
    ((out.loss + 0.3 * out.log_ratio) * weights).sum().backward()
    ((ref.loss + 0.3 * ref.log_ratio) * weights).sum().backward()
    expected = grads_of(base)
    for name, p in fast.named_parameters():
        assert close(p.grad, expected[name]), (name, (p.grad - expected[name]).abs().max().item())
    assert close(xf.grad, xb.grad)
    with torch.no_grad():  # the evaluation path
        ev = fast(x, record=True, generator=torch.Generator().manual_seed(7))
    assert close(ev.loss, ref.loss) and close(ev.canvases, ref.canvases)
    for every in (True, False):
        samples, writes = fast.generate(4, generator=torch.Generator().manual_seed(3), every_step=every)
        ref_samples, ref_writes = base.generate(4, generator=torch.Generator().manual_seed(3), every_step=every)
        want = ((steps if every else 1), 4) + ((channels,) if channels > 1 else ()) + (height, width)
        assert samples.shape == want and close(samples, ref_samples)
        if attention:
            assert close(writes, ref_writes)


def test_one_channel_as_three_or_four_dimensions_is_the_same_model():
    """(B, H, W) and (B, 1, H, W) give the same losses and gradients; outputs keep the input's layout."""
    m, _ = pair(seed=4, height=8, width=9, glimpses=2, hidden=8, latent=2, read_n=2, write_n=3)
    x = torch.rand(3, 8, 9, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    results = []
    for inp in (x, x[:, None]):
        m.zero_grad(set_to_none=True)
        out = m(inp, record=True, generator=torch.Generator().manual_seed(1))
        out.loss.sum().backward()
        results.append((out, [p.grad.clone() for p in m.parameters()]))
    (a, ga), (b, gb) = results
    assert torch.equal(a.loss, b.loss) and all(torch.equal(u, v) for u, v in zip(ga, gb))
    assert a.canvases.shape == (2, 3, 8, 9) and b.canvases.shape == (2, 3, 1, 8, 9)
    with pytest.raises(ValueError, match=r"expected images \(1, 8, 9\), got \(3, 8, 9\)"):
        m(torch.rand(2, 3, 8, 9, dtype=torch.float64))


def test_colour_bf16_agrees_with_float32():
    torch.manual_seed(0)
    m = Named(DRAW(height=12, width=12, channels=3, glimpses=3, hidden=32, latent=4, read_n=3, write_n=4), PYTHON)
    x = torch.rand(40, 3, 12, 12, generator=torch.Generator().manual_seed(0))
    eps = torch.randn(3, 40, 4, generator=torch.Generator().manual_seed(1))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        low = m(x, eps=eps).loss
    full = m(x, eps=eps).loss
    assert torch.allclose(low, full, rtol=3e-3)
