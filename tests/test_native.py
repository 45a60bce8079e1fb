"""The native training loop (drawcli/model/csrc/draw_loop.cpp, loaded by drawcli/native.py)
computes what fused.py's Python loop computes: losses and every parameter's gradient agree to
1e-10 relative in float64; float32 with oneDNN's packed products and bfloat16 products agree to
their precision. Also: where it applies, its switch, and a machine without a compiler.

The library is built once per machine into ~/.cache/drawcli (about 15 s on the CI machine).
On a machine without a working C++ compiler these tests skip, except the fallback test.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

from drawcli import native
from drawcli.model import DRAW
from drawcli.model.fused import _WORKSPACES

pytestmark = pytest.mark.skipif(native.compiler() is None or not sys.platform.startswith("linux"),
                                reason="no C++ compiler: the native loop cannot be built here")


@pytest.fixture(scope="module", autouse=True)
def loaded():
    assert native.load(), native.unavailable_reason()
    yield
    native.set_native(True)


def run(model: DRAW, x: torch.Tensor, use_native: bool, bf16: bool = False, log_ratio: bool = False):
    """Loss with uneven weights per image (so every gradient path carries a different signal),
    backward; (lx, lz, log_ratio, grads, dx, which engine ran)."""
    native.set_native(use_native)
    try:
        model.zero_grad(set_to_none=True)
        x = x.clone().requires_grad_(True)
        b = x.shape[0]
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            out = model(x, log_ratio=log_ratio, generator=torch.Generator().manual_seed(7))
        w1 = torch.linspace(0.5, 1.5, b, dtype=x.dtype)
        w2 = torch.linspace(1.2, 0.3, b, dtype=x.dtype)
        loss = (out.lx * w1).sum() + (out.lz * w2).sum()
        if log_ratio:
            loss = loss + 0.1 * (out.log_ratio * w1).sum()  # reaches mu and log sigma directly
        loss.backward()
        engine = _WORKSPACES[model]["key"][0] == "native"
        grads = {k: p.grad.clone() for k, p in model.named_parameters()}
        lr = out.log_ratio.detach() if log_ratio else out.lx.detach()
        return out.lx.detach(), out.lz.detach(), lr, grads, x.grad, engine
    finally:
        native.set_native(True)


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max() / b.abs().max().clamp_min(1e-30))


def model_for(seed: int, dtype=torch.float64, **config) -> DRAW:
    torch.manual_seed(seed)
    m = DRAW(attention=True, **config).to(dtype)
    g = torch.Generator().manual_seed(seed + 100)
    with torch.no_grad():  # off the initialisation, biases included; windows stay on the image
        for name, p in m.named_parameters():
            p.add_((0.05 if "attention" in name else 0.2) * torch.randn(p.shape, generator=g, dtype=p.dtype))
    return m


CASES = [
    # (height, width, steps, hidden, embed, read_n, write_n, batch)
    (28, 28, 4, 16, 5, 2, 5, 3),  # the paper's MNIST attention shapes, short
    (12, 9, 3, 8, 3, 3, 2, 20),  # non-square, taller than wide; two chunks on two threads
    (7, 10, 2, 8, 2, 1, 1, 17),  # N = 1 read and write; uneven chunks
    (6, 6, 1, 8, 4, 2, 3, 5),  # T = 1
    (10, 10, 3, 8, 3, 4, 4, 1),  # batch 1
]


@pytest.mark.parametrize("case", CASES, ids=lambda c: f"{c[0]}x{c[1]}-T{c[2]}-N{c[5]}{c[6]}-B{c[7]}")
def test_float64_losses_and_every_gradient_equal_the_python_loop(case):
    height, width, steps, hidden, embed, read_n, write_n, batch = case
    m = model_for(sum(case), height=height, width=width, steps=steps, hidden=hidden, embed=embed,
                  read_n=read_n, write_n=write_n)
    x = torch.rand(batch, height, width, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    a = run(m, x, True, log_ratio=True)
    b = run(m, x, False, log_ratio=True)
    assert a[5] and not b[5], "the switch did not choose the engines"
    for i in range(3):
        assert rel(a[i], b[i]) < 1e-10
    for k in b[3]:
        assert rel(a[3][k], b[3][k]) < 1e-10, k
    assert rel(a[4], b[4]) < 1e-10  # dL/dx


def test_chunks_on_two_threads_equal_one_thread():
    m = model_for(3, height=12, width=9, steps=3, hidden=8, embed=3, read_n=3, write_n=2)
    x = torch.rand(24, 12, 9, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = run(m, x, True)
        torch.set_num_threads(2)
        two = run(m, x, True)
    finally:
        torch.set_num_threads(before)
    assert rel(one[0], two[0]) < 1e-12
    for k in one[3]:
        assert rel(two[3][k], one[3][k]) < 1e-10, k


def test_threads_changed_between_forward_and_backward_do_not_change_the_gradient():
    m = model_for(4, height=12, width=9, steps=3, hidden=8, embed=3, read_n=3, write_n=2)
    x = torch.rand(24, 12, 9, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    ref = run(m, x, False)
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(2)  # two chunks in forward ...
        m.zero_grad(set_to_none=True)
        out = m(x, generator=torch.Generator().manual_seed(7))
        torch.set_num_threads(1)  # ... and the backward must cut the batch the same way
        b = x.shape[0]
        ((out.lx * torch.linspace(0.5, 1.5, b, dtype=x.dtype)).sum()
         + (out.lz * torch.linspace(1.2, 0.3, b, dtype=x.dtype)).sum()).backward()
    finally:
        torch.set_num_threads(before)
    for k, p in m.named_parameters():
        assert rel(p.grad, ref[3][k]) < 1e-10, k


def test_float32_paper_shapes_with_packed_products_agree_with_the_python_loop():
    # batch 64: oneDNN's packed products (32 rows or more per chunk) in both engines
    m = model_for(5, dtype=torch.float32, height=28, width=28, steps=6, hidden=64, embed=10, read_n=2, write_n=5)
    x = torch.rand(64, 28, 28, generator=torch.Generator().manual_seed(3)).bernoulli()
    a, b = run(m, x, True), run(m, x, False)
    assert rel(a[0], b[0]) < 1e-5 and rel(a[1], b[1]) < 1e-5
    for k in b[3]:
        assert rel(a[3][k], b[3][k]) < 1e-3, k


def test_uneven_chunks_with_packed_products_agree_with_the_python_loop():
    """97 images on two threads: chunks of 49 and 48 rows, the weights packed by oneDNN for 49."""
    m = model_for(7, dtype=torch.float32, height=28, width=28, steps=3, hidden=64, embed=10, read_n=2, write_n=5)
    x = torch.rand(97, 28, 28, generator=torch.Generator().manual_seed(6)).bernoulli()
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        for bf16 in (False, True):
            a, b = run(m, x, True, bf16=bf16), run(m, x, False, bf16=bf16)
            assert a[5] and not b[5]
            assert rel(a[0], b[0]) < (1e-2 if bf16 else 1e-5)
            for k in b[3]:
                if bf16:
                    cos = torch.nn.functional.cosine_similarity(a[3][k].flatten(), b[3][k].flatten(), dim=0)
                    assert cos > 0.99, k
                else:
                    assert rel(a[3][k], b[3][k]) < 1e-3, k
    finally:
        torch.set_num_threads(before)


def test_a_nan_weight_reaches_the_loss():
    """The compiled loop must not turn a NaN into a saturated gate (training's finite-loss check
    would then miss a broken model)."""
    m = DRAW(height=8, width=8, steps=2, hidden=8, embed=2, read_n=2, write_n=2)
    with torch.no_grad():
        m.encoder.linear.weight[0, 0] = float("nan")
    x = torch.rand(4, 8, 8)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = m(x)
    assert not torch.isfinite(out.loss).all()
    out.loss.sum().backward()
    assert _WORKSPACES[m]["key"][0] == "native"


def test_bfloat16_products_agree_with_the_python_loops_bfloat16():
    m = model_for(6, dtype=torch.float32, height=28, width=28, steps=6, hidden=64, embed=10, read_n=2, write_n=5)
    x = torch.rand(64, 28, 28, generator=torch.Generator().manual_seed(4)).bernoulli()
    a, b = run(m, x, True, bf16=True), run(m, x, False, bf16=True)
    f32 = run(m, x, True)
    assert a[5] and not b[5]
    # Both round the same product inputs to bfloat16; what differs is rounding inside the kernels.
    assert rel(a[0], b[0]) < 1e-2 and rel(a[1], b[1]) < 1e-2
    for k in b[3]:
        cos = torch.nn.functional.cosine_similarity(a[3][k].flatten(), b[3][k].flatten(), dim=0)
        assert cos > 0.99, k
    assert rel(a[0], f32[0]) < 2e-2  # and bfloat16 is close to float32
    assert not torch.equal(a[0], f32[0])  # ... without being it: the products did run in bfloat16


def test_where_it_applies():
    x = torch.rand(4, 1, 8, 8)
    colour = DRAW(height=8, width=8, steps=2, hidden=8, embed=2, read_n=2, write_n=2, channels=3)
    plain = DRAW(height=8, width=8, steps=2, hidden=8, embed=2, attention=False)
    att = DRAW(height=8, width=8, steps=2, hidden=8, embed=2, read_n=2, write_n=2)
    for model, inp, expected in ((colour, torch.rand(4, 3, 8, 8), False), (plain, x, False), (att, x, True)):
        model(inp).loss.mean().backward()
        assert (_WORKSPACES[model]["key"][0] == "native") is expected
    # a training forward that records (canvases and windows) keeps the Python loop
    del _WORKSPACES[att]
    out = att(x, record=True)
    out.loss.mean().backward()
    assert out.canvases is not None and _WORKSPACES[att]["key"][0] != "native"


def test_training_step_runs_natively_and_learns():
    m = DRAW(height=28, width=28, steps=8, hidden=32, embed=8, read_n=2, write_n=5)
    x = torch.rand(32, 28, 28, generator=torch.Generator().manual_seed(5)).bernoulli()
    opt = torch.optim.Adam(m.parameters(), lr=3e-3)
    losses = []
    for _ in range(15):
        opt.zero_grad()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss = m(x).loss.mean()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    assert _WORKSPACES[m]["key"][0] == "native"
    assert losses[-1] < losses[0] - 20


def test_without_a_compiler_training_falls_back_to_the_python_loop(tmp_path):
    """A fresh cache and a compiler that fails: load() says why, remembers it, and training runs."""
    code = (
        "import torch\n"
        "from drawcli import native\n"
        "from drawcli.model import DRAW\n"
        "from drawcli.model.fused import _WORKSPACES\n"
        "ok = native.load()\n"
        "m = DRAW(height=8, width=8, steps=2, hidden=8, embed=2, read_n=2, write_n=2)\n"
        "m(torch.rand(3, 8, 8)).loss.mean().backward()\n"
        "print(ok, _WORKSPACES[m]['key'][0] == 'native', native.unavailable_reason())\n"
    )
    env = dict(os.environ, DRAWCLI_CACHE=str(tmp_path), CXX="false")
    env["PATH"] = str(tmp_path / "nothing")  # no c++, g++ or clang++ either
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("False False no C++ compiler"), out.stdout
    # a compiler that fails leaves a FAILED marker, and the next process does not try again
    fake = tmp_path / "bin"
    fake.mkdir()
    (fake / "c++").write_text("#!/bin/sh\necho 'fatal error: broken' >&2\nexit 1\n")
    (fake / "c++").chmod(0o755)
    env["PATH"] = f"{fake}:/usr/bin:/bin"
    env.pop("CXX")
    for _ in range(2):
        out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
        assert out.returncode == 0, out.stderr
        assert out.stdout.startswith("False False c++ failed: fatal error: broken"), out.stdout
    assert list(tmp_path.glob("native/*/FAILED"))


def test_switched_off_by_the_environment():
    code = "from drawcli import native\nprint(native.native_enabled(), native.ready())\n"
    out = subprocess.run([sys.executable, "-c", code], env=dict(os.environ, DRAWCLI_NATIVE="0"),
                         capture_output=True, text=True, timeout=60)
    assert out.stdout.split() == ["False", "False"], out.stdout + out.stderr
