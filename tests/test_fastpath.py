"""The fast DRAW loop (hand-written backward) equals a straightforward autograd DRAW.

The reference is benchmarks/baseline.py: torch.nn.LSTMCell, one Linear per head, filterbanks
rebuilt each step, autograd for every gradient. Same weights and the same noise, float64:
losses, records, samples and every parameter's gradient agree to 1e-6 relative.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch

from drawcli.model import DRAW

_spec = importlib.util.spec_from_file_location("draw_baseline", Path(__file__).parents[1] / "benchmarks" / "baseline.py")
baseline = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(baseline)

RTOL = 1e-6


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


def pair(seed=0, **config):
    torch.manual_seed(seed)
    fast = DRAW(**config).double()
    randomise(fast, seed + 100)
    return fast, baseline.BaselineDRAW.from_draw(fast)


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
def test_loss_and_every_gradient_match_the_baseline(case):
    height, width, steps, hidden, embed, attention, read_n, write_n, batch = case
    config = dict(height=height, width=width, steps=steps, hidden=hidden, embed=embed,
                  attention=attention, read_n=read_n, write_n=write_n)
    fast, base = pair(seed=sum(case), **config)
    x = torch.rand(batch, height, width, dtype=torch.float64, generator=torch.Generator().manual_seed(1))

    out = fast(x, log_ratio=True, generator=torch.Generator().manual_seed(7))
    ref = base(x, log_ratio=True, generator=torch.Generator().manual_seed(7))
    for key in ("lx", "lz", "log_ratio"):
        assert close(getattr(out, key), ref[key]), key
    # A loss that reaches every output of the loop: c_T (L^x), mu and sigma (L^z, log_ratio).
    weights = torch.linspace(0.5, 1.5, batch, dtype=torch.float64)
    ((out.loss + 0.3 * out.log_ratio) * weights).sum().backward()
    ((ref["loss"] + 0.3 * ref["log_ratio"]) * weights).sum().backward()

    expected = base.grads_as_draw()
    names = [name for name, _ in fast.named_parameters()]
    assert sorted(names) == sorted(expected)
    for name, p in fast.named_parameters():
        assert p.grad is not None, name
        assert close(p.grad, expected[name]), (name, (p.grad - expected[name]).abs().max().item())


@pytest.mark.parametrize("attention", [True, False])
def test_gradient_with_respect_to_the_input(attention):
    config = dict(height=9, width=11, steps=3, hidden=8, embed=3, attention=attention, read_n=3, write_n=2)
    fast, base = pair(seed=3, **config)
    x = torch.rand(2, 9, 11, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    x_fast, x_base = x.clone().requires_grad_(), x.clone().requires_grad_()
    fast(x_fast, generator=torch.Generator().manual_seed(5)).loss.sum().backward()
    base(x_base, generator=torch.Generator().manual_seed(5))["loss"].sum().backward()
    assert close(x_fast.grad, x_base.grad)


@pytest.mark.parametrize("attention", [True, False])
def test_records_evaluation_and_samples_match_the_baseline(attention):
    config = dict(height=10, width=8, steps=4, hidden=12, embed=3, attention=attention, read_n=2, write_n=3)
    fast, base = pair(seed=11, **config)
    x = torch.rand(3, 10, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(4))
    ref = base(x, record=True, generator=torch.Generator().manual_seed(9))
    out = fast(x, record=True, generator=torch.Generator().manual_seed(9))  # gradient path
    with torch.no_grad():  # evaluation path: two reused slots instead of T
        out_eval = fast(x, record=True, generator=torch.Generator().manual_seed(9))
    for o in (out, out_eval):
        assert close(o.loss, ref["loss"])
        assert close(o.canvases, ref["canvases"])
        if attention:
            assert close(o.read, ref["read"]) and close(o.write, ref["write"])
        else:
            assert o.read is None and o.write is None
    assert not out.canvases.requires_grad  # pictures only

    canvases, writes = fast.generate(5, generator=torch.Generator().manual_seed(3))
    ref_canvases, ref_writes = base.generate(5, generator=torch.Generator().manual_seed(3))
    assert close(canvases, ref_canvases)
    assert (writes is None) == (not attention)
    if attention:
        assert close(writes, ref_writes)


def test_float32_paper_config_agrees_with_the_baseline():
    """The paper's configuration in float32 at full length: same numbers up to rounding."""
    torch.manual_seed(0)
    fast = DRAW()
    base = baseline.BaselineDRAW.from_draw(fast)
    x = torch.rand(4, 28, 28, generator=torch.Generator().manual_seed(0)).bernoulli()
    out = fast(x, generator=torch.Generator().manual_seed(1))
    ref = base(x, generator=torch.Generator().manual_seed(1))
    assert torch.allclose(out.loss, ref["loss"], rtol=1e-4)
    out.loss.mean().backward()
    ref["loss"].mean().backward()
    expected = base.grads_as_draw()
    for name, p in fast.named_parameters():
        err = (p.grad - expected[name]).norm() / expected[name].norm().clamp_min(1e-12)
        assert err < 1e-3, (name, err.item())


def test_backward_twice_through_one_forward_is_refused():
    fast = DRAW(steps=2, hidden=8, embed=2)
    loss = fast(torch.rand(2, 28, 28)).loss.sum()
    loss.backward(retain_graph=True)
    with pytest.raises(RuntimeError, match="only once"):
        loss.backward()


def test_autocast_leaves_the_fast_path_in_the_models_dtype():
    fast, base = pair(seed=2, height=8, width=8, steps=2, hidden=8, embed=2, read_n=2, write_n=3)
    fast, base = fast.float(), base.float()
    x = torch.rand(3, 8, 8)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = fast(x, generator=torch.Generator().manual_seed(0))
        canvases, _ = fast.generate(2)
    ref = base(x, generator=torch.Generator().manual_seed(0))
    assert out.loss.dtype == canvases.dtype == torch.float32
    assert torch.allclose(out.loss, ref["loss"], rtol=1e-5)
    out.loss.sum().backward()
