"""The native engine (drawcli/model/csrc/draw_loop.cpp, built and loaded by drawcli/model/native_build.py,
called by drawcli/model/native_loop.py) computes what draw.py's plain loops compute: losses, the
log ratio and every gradient agree to 1e-10 relative in float64, for training and for
evaluation, grey and colour; float32 with oneDNN's packed products and bfloat16 products agree
with the Python engine to their precision. Also: its ops' schemas (opcheck), NaN and infinity,
where it runs, and a machine without a compiler. Every call names the engine it runs.

The library is built once per machine into ~/.cache/drawcli (about 15 s here). On a machine
without a working C++ compiler these tests skip, except the fallback tests.
"""

from __future__ import annotations

import dataclasses
import os
import platform
import subprocess
import sys

import pytest
import torch

from drawcli.model import DRAW, fast, native_loop
from drawcli.model import native_build as native
from drawcli.model.draw import FILTER_EPS
from drawcli.model.layout import LoopWeights, loop_weights

needs_compiler = pytest.mark.skipif(native.compiler() is None or not sys.platform.startswith("linux"),
                                    reason="no C++ compiler: the native engine cannot be built here")


@pytest.fixture(scope="module")
def loaded():
    assert native.load(), native.unavailable_reason()


def run(model: DRAW, x: torch.Tensor, engine: str, bf16: bool = False, train: bool = True):
    """Loss with uneven weights per image (so every gradient path carries a different signal),
    log ratio included; backward when training. (lx, lz, log_ratio, grads or None, dx or None)."""
    model.zero_grad(set_to_none=True)
    x = x.clone().requires_grad_(train)
    b = x.shape[0]
    with torch.set_grad_enabled(train), torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        out = model(x, log_ratio=True, generator=torch.Generator().manual_seed(7), engine=engine)
    if not train:
        return out.lx, out.lz, out.log_ratio, None, None
    w1 = torch.linspace(0.5, 1.5, b, dtype=x.dtype)
    w2 = torch.linspace(1.2, 0.3, b, dtype=x.dtype)
    ((out.lx * w1).sum() + (out.lz * w2).sum() + 0.1 * (out.log_ratio * w1).sum()).backward()
    grads = {k: p.grad.clone() for k, p in model.named_parameters()}
    return out.lx.detach(), out.lz.detach(), out.log_ratio.detach(), grads, x.grad


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max() / b.abs().max().clamp_min(1e-30))


def model_for(seed: int, dtype=torch.float64, **config) -> DRAW:
    torch.manual_seed(seed)
    m = DRAW(**{"attention": True, **config}).to(dtype)
    g = torch.Generator().manual_seed(seed + 100)
    with torch.no_grad():  # off the initialisation, biases included; windows stay on the image
        for name, p in m.named_parameters():
            p.add_((0.05 if "attention" in name else 0.2) * torch.randn(p.shape, generator=g, dtype=p.dtype))
    return m


def images(b, c, h, w, seed=1, dtype=torch.float64):
    return torch.rand(b, c, h, w, dtype=dtype, generator=torch.Generator().manual_seed(seed))


CASES = [
    # (channels, height, width, steps, hidden, embed, read_n, write_n, batch)
    (1, 28, 28, 4, 16, 5, 2, 5, 3),  # the paper's MNIST attention shapes, short
    (1, 12, 9, 3, 8, 3, 3, 2, 20),  # non-square, taller than wide; two chunks on two threads
    (1, 7, 10, 2, 8, 2, 1, 1, 17),  # N = 1 read and write; uneven chunks
    (1, 6, 6, 1, 8, 4, 2, 3, 5),  # T = 1
    (1, 10, 10, 3, 8, 3, 4, 4, 1),  # batch 1
    (3, 12, 9, 3, 8, 3, 3, 2, 20),  # colour, non-square
    (2, 7, 10, 2, 8, 2, 1, 4, 17),  # two channels, N = 1 read
    (3, 10, 10, 2, 8, 3, 4, 4, 1),  # colour, batch 1
    (1, 7, 10, 2, 8, 2, 2, 3, 150),  # chunks of 75 rows: blocks of lanes (draw_loop.cpp's LANES = 64)
    (3, 9, 12, 2, 8, 3, 3, 2, 133),  # the same in colour, uneven
]


def case_id(c):
    return f"C{c[0]}-{c[1]}x{c[2]}-T{c[3]}-N{c[6]}{c[7]}-B{c[8]}"


# The model without attention (eq 17-18): (channels, height, width, steps, hidden, embed, batch)
PLAIN_CASES = [
    (1, 28, 28, 3, 16, 5, 3),  # the paper's MNIST shapes, short
    (1, 12, 9, 3, 8, 3, 20),  # non-square; two chunks on two threads
    (3, 12, 9, 3, 8, 3, 20),  # colour, non-square: the (H, C, W) rows of layout.py
    (2, 5, 6, 1, 8, 4, 1),  # T = 1, batch 1
    (1, 7, 10, 2, 8, 2, 150),  # chunks of 75 rows
]


def plain_id(c):
    return f"C{c[0]}-{c[1]}x{c[2]}-T{c[3]}-B{c[6]}"


@needs_compiler
@pytest.mark.usefixtures("loaded")
@pytest.mark.parametrize("case", CASES, ids=case_id)
def test_native_equals_the_reference_loops_in_float64_forward_and_every_gradient(case):
    """engine="native" against engine="reference" (draw.py's loops, autograd): training forward,
    backward (every parameter and the input) and evaluation forward with the log ratio."""
    channels, height, width, steps, hidden, embed, read_n, write_n, batch = case
    m = model_for(sum(case), channels=channels, height=height, width=width, glimpses=steps, hidden=hidden, latent=embed,
                  read_n=read_n, write_n=write_n)
    equals_the_reference(m, images(batch, channels, height, width))


@needs_compiler
@pytest.mark.usefixtures("loaded")
@pytest.mark.parametrize("case", PLAIN_CASES, ids=plain_id)
def test_without_attention_native_equals_the_reference_loops_in_float64(case):
    """The same for DRAW without attention: r_t = [x, x_hat_t] (eq 17), c_t = c_{t-1} + W(h^dec_t) (eq 18)."""
    channels, height, width, steps, hidden, embed, batch = case
    m = model_for(sum(case), channels=channels, height=height, width=width, glimpses=steps, hidden=hidden, latent=embed,
                  attention=False)
    equals_the_reference(m, images(batch, channels, height, width))


def equals_the_reference(m: DRAW, x: torch.Tensor) -> None:
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(2)  # two chunks where the batch allows
        for train in (True, False):
            a, b = run(m, x, "native", train=train), run(m, x, "reference", train=train)
            for i in range(3):
                assert rel(a[i], b[i]) < 1e-10, ("lx", "lz", "log_ratio")[i]
            if train:
                for k in b[3]:
                    assert rel(a[3][k], b[3][k]) < 1e-10, k
                assert rel(a[4], b[4]) < 1e-10  # dL/dx
    finally:
        torch.set_num_threads(before)


@needs_compiler
@pytest.mark.usefixtures("loaded")
def test_chunks_on_two_threads_equal_one_thread():
    m = model_for(3, height=12, width=9, glimpses=3, hidden=8, latent=3, read_n=3, write_n=2, channels=3)
    x = images(24, 3, 12, 9, seed=2)
    before = torch.get_num_threads()
    try:
        results = []
        for threads in (1, 2):
            torch.set_num_threads(threads)
            results.append((run(m, x, "native"), run(m, x, "native", train=False)))
    finally:
        torch.set_num_threads(before)
    (one, one_eval), (two, two_eval) = results
    assert rel(one[0], two[0]) < 1e-12 and rel(one_eval[2], two_eval[2]) < 1e-12
    for k in one[3]:
        assert rel(two[3][k], one[3][k]) < 1e-10, k


@needs_compiler
@pytest.mark.usefixtures("loaded")
def test_threads_changed_between_forward_and_backward_do_not_change_the_gradient():
    m = model_for(4, height=12, width=9, glimpses=3, hidden=8, latent=3, read_n=3, write_n=2)
    x = images(24, 1, 12, 9, seed=2)[:, 0]
    ref = run(m, x, "reference")
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(2)  # two chunks in forward ...
        m.zero_grad(set_to_none=True)
        out = m(x, generator=torch.Generator().manual_seed(7), log_ratio=True, engine="native")
        torch.set_num_threads(1)  # ... and the backward must cut the batch the same way
        b = x.shape[0]
        w1 = torch.linspace(0.5, 1.5, b, dtype=x.dtype)
        ((out.lx * w1).sum() + (out.lz * torch.linspace(1.2, 0.3, b, dtype=x.dtype)).sum()
         + 0.1 * (out.log_ratio * w1).sum()).backward()
    finally:
        torch.set_num_threads(before)
    for k, p in m.named_parameters():
        assert rel(p.grad, ref[3][k]) < 1e-10, k


@needs_compiler
@pytest.mark.usefixtures("loaded")
@pytest.mark.parametrize("channels,attention", [(1, True), (3, True), (1, False), (3, False)])
def test_float32_with_packed_products_agrees_with_the_python_engine(channels, attention):
    """64 and 97 images (uneven chunks of 49 and 48 rows on two threads, weights packed by oneDNN
    for 49), training and evaluation, float32 and bfloat16 products, with and without attention."""
    m = model_for(5, dtype=torch.float32, height=28, width=28, glimpses=4, hidden=64, latent=10, read_n=2, write_n=5,
                  channels=channels, attention=attention)
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        for b in (64, 97):
            x = images(b, channels, 28, 28, seed=b, dtype=torch.float32).bernoulli()
            for bf16 in (False, True):
                for train in (True, False):
                    a, p = run(m, x, "native", bf16, train), run(m, x, "python", bf16, train)
                    tol = 1e-2 if bf16 else 1e-5
                    assert rel(a[0], p[0]) < tol and rel(a[1], p[1]) < tol and rel(a[2], p[2]) < 10 * tol
                    for k in p[3] or ():
                        if bf16:  # both round the same product inputs to bfloat16; the kernels' rounding differs
                            cos = torch.nn.functional.cosine_similarity(a[3][k].flatten(), p[3][k].flatten(), dim=0)
                            assert cos > 0.99, k
                        else:
                            assert rel(a[3][k], p[3][k]) < 1e-3, k
    finally:
        torch.set_num_threads(before)


@needs_compiler
@pytest.mark.usefixtures("loaded")
def test_bfloat16_products_run_in_bfloat16():
    m = model_for(6, dtype=torch.float32, height=28, width=28, glimpses=4, hidden=64, latent=10, read_n=2, write_n=5)
    x = images(64, 1, 28, 28, seed=4, dtype=torch.float32).bernoulli()
    for train in (True, False):
        low, full = run(m, x, "native", True, train), run(m, x, "native", False, train)
        assert rel(low[0], full[0]) < 2e-2  # bfloat16 is close to float32 ...
        assert not torch.equal(low[0], full[0])  # ... without being it: the products did run in bfloat16


@needs_compiler
@pytest.mark.usefixtures("loaded")
@pytest.mark.parametrize("bf16", [False, True])
def test_a_nan_weight_reaches_the_loss(bf16):
    """The compiled loop (-ffast-math) must not turn a NaN into a saturated gate: training's
    finite-loss check would then miss a broken model."""
    m = DRAW(height=8, width=8, glimpses=2, hidden=8, latent=2, read_n=2, write_n=2)
    with torch.no_grad():
        m.encoder.linear.weight[0, 0] = float("nan")
    x = torch.rand(4, 8, 8)
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        out = m(x, engine="native")
        with torch.no_grad():
            ev = m(x, engine="native", log_ratio=True)
    assert not torch.isfinite(out.loss).any() and not torch.isfinite(ev.loss).any()
    out.loss.sum().backward()
    assert not torch.isfinite(m.decoder.linear.weight.grad).all()


@needs_compiler
@pytest.mark.usefixtures("loaded")
@pytest.mark.parametrize("value", [float("inf"), -float("inf"), 1e30, -1e30])
def test_infinite_pre_activations_saturate_as_in_the_python_engine(value):
    """Gates pushed to +-infinity (a bias of +-inf or +-1e30) saturate to exactly 0 or 1, as
    torch.sigmoid does: the compiled loop's clamps (under -ffast-math, 1 / (1 + inf) may come
    from a reciprocal estimate) keep loss and gradients finite and equal to the Python engine's."""
    m = model_for(8, dtype=torch.float32, height=8, width=8, glimpses=3, hidden=8, latent=2, read_n=2, write_n=2)
    with torch.no_grad():
        for cell in (m.encoder, m.decoder):
            cell.linear.bias[8:12] = value  # some forget gates
            cell.linear.bias[16:20] = value  # some cell inputs g (tanh)
    x = images(4, 1, 8, 8, dtype=torch.float32)
    for train in (True, False):
        a, p = run(m, x, "native", train=train), run(m, x, "python", train=train)
        assert torch.isfinite(a[0]).all() and torch.isfinite(a[1]).all()
        assert rel(a[0], p[0]) < 1e-5 and rel(a[1], p[1]) < 1e-5
        for k in p[3] or ():
            assert torch.isfinite(a[3][k]).all() and rel(a[3][k], p[3][k]) < 1e-3, k


@needs_compiler
@pytest.mark.usefixtures("loaded")
def test_where_it_runs_and_where_it_refuses():
    x = torch.rand(4, 1, 8, 8)
    att = DRAW(height=8, width=8, glimpses=2, hidden=8, latent=2, read_n=2, write_n=2)
    plain = DRAW(height=8, width=8, glimpses=2, hidden=8, latent=2, attention=False)
    def auto(m, x, record=False):
        return fast.choose(m, x, record, "auto").name

    assert auto(att, x) == "native"
    assert auto(att, x, record=True) == "python"  # pictures
    assert auto(plain, x) == "native"
    assert auto(att.half(), x.half()) == "python"
    wide = DRAW(height=70, width=70, glimpses=1, hidden=8, latent=2, read_n=65, write_n=2)
    wide_x = torch.rand(2, 1, 70, 70)
    assert auto(wide, wide_x) == "python"
    with pytest.raises(ValueError, match="windows are at most 64 wide, this model's are 65"):
        wide(wide_x, engine="native")
    widest = DRAW(height=64, width=64, glimpses=2, hidden=8, latent=2, read_n=64, write_n=64).double()
    assert auto(widest, torch.rand(2, 1, 64, 64, dtype=torch.float64)) == "native"
    # ... and computes it: NATIVE_MAX_WINDOW (engine.py) is the C++ kernels' NMAX
    x64 = torch.rand(3, 1, 64, 64, dtype=torch.float64)
    a, b = run(widest, x64, "native"), run(widest, x64, "reference")
    assert rel(a[0], b[0]) < 1e-10 and all(rel(a[3][k], b[3][k]) < 1e-10 for k in b[3])
    with pytest.raises(ValueError, match="does not record"):
        att(x, record=True, engine="native")
    with pytest.raises(ValueError, match="sampling has no native loop"):
        att.generate(2, engine="native")


@needs_compiler
@pytest.mark.usefixtures("loaded")
def test_training_step_runs_natively_and_learns():
    m = DRAW(height=28, width=28, glimpses=8, hidden=32, latent=8, read_n=2, write_n=5, channels=3)
    x = torch.rand(32, 3, 28, 28, generator=torch.Generator().manual_seed(5)).bernoulli()
    opt = torch.optim.Adam(m.parameters(), lr=3e-3)
    losses = []
    for _ in range(15):
        opt.zero_grad()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss = m(x, engine="native").loss.mean()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    assert losses[-1] < losses[0] - 20


# ----------------------------------------------------------------------------- AMX tiles
def amx_or_skip():
    if not native_loop.amx_available():
        pytest.skip("this CPU (or build) has no AMX tiles: bfloat16 products run by oneDNN")


def unpack(packed: torch.Tensor, k: int, n: int) -> torch.Tensor:
    """B (k x n) back from amx_pack's layout: tiles (n / 16, k / 32) of 16 pairs of rows x 16 columns x 2."""
    kp, np_ = -(-k // 32) * 32, -(-n // 32) * 32
    tiles = packed.view(np_ // 16, kp // 32, 16, 16, 2)  # (n tile, k tile, k pair, n, k parity)
    return tiles.permute(1, 2, 4, 0, 3).reshape(kp, np_)[:k, :n]


@needs_compiler
@pytest.mark.usefixtures("loaded")
def test_amx_pack_lays_out_the_weight_in_bfloat16():
    """Both layouts hold exactly torch's bfloat16 rounding of the weight (NaN included), the
    padding zero."""
    amx_or_skip()
    w = torch.randn(72, 45, generator=torch.Generator().manual_seed(3))
    w[5, 7] = float("nan")
    for transpose, cols in ((True, 0), (False, 45), (False, 21)):
        k, n = (45, 72) if transpose else (72, cols)
        out = torch.full((-(-n // 32) * 32 * -(-k // 32) * 32,), 7.0, dtype=torch.bfloat16)
        torch.ops.drawcli.amx_pack(w, cols, transpose, out)
        want = (w.t() if transpose else w[:, :cols]).to(torch.bfloat16)
        got = unpack(out, k, n)
        nan = want.isnan()
        assert torch.equal(got.isnan(), nan) and int(nan.sum()) == (1 if transpose or cols > 7 else 0)
        assert torch.equal(got[~nan].view(torch.int16), want[~nan].view(torch.int16))  # the same rounding
        assert int((out != 0).sum()) == int((want != 0).sum())  # the padding is zero
    torch.library.opcheck(torch.ops.drawcli.amx_pack.default, (w, 21, False, torch.empty(96 * 32, dtype=torch.bfloat16)))


@needs_compiler
@pytest.mark.usefixtures("loaded")
@pytest.mark.parametrize("channels,b,hidden", [(1, 37, 64), (3, 32, 20)])
def test_amx_products_agree_with_onednns_bfloat16_products(channels, b, hidden):
    """The same training forward, backward and evaluation with the LSTM products on AMX tiles and
    by oneDNN (at::mm): equal to bfloat16's precision. Uneven shapes: 37 rows (padded to 64), 4H =
    80 (padded to 96), encoder inputs not a multiple of 32."""
    amx_or_skip()
    m = model_for(11, dtype=torch.float32, height=12, width=10, glimpses=3, hidden=hidden, latent=5, read_n=3, write_n=4,
                  channels=channels)
    x = images(b, channels, 12, 10, seed=2, dtype=torch.float32)
    eps = torch.randn(3, b, 5, generator=torch.Generator().manual_seed(4))
    w = LoopWeights(*(t.detach() for t in loop_weights(m)))
    out = {}
    for amx in (True, False):
        canvas, mu_ls, lz, saved = native_loop.forward(m, x, eps, w, torch.bfloat16, amx=amx)
        d_canvas = torch.linspace(-1, 1, canvas.numel()).view_as(canvas)
        dx, grads = native_loop.backward(m, saved, d_canvas, None, torch.ones(b), mu_ls, need_x=True)
        ev = native_loop.evaluate(m, x, eps, w, torch.bfloat16, log_ratio=True, amx=amx)
        out[amx] = (canvas, lz, dx, *grads, *ev)
    for a, o in zip(out[True], out[False]):
        assert rel(a, o) < 2e-2
        assert torch.nn.functional.cosine_similarity(a.flatten(), o.flatten(), dim=0) > 0.999


# ----------------------------------------------------------------------------- the ops
def workspace_for(m: DRAW, x: torch.Tensor, eps: torch.Tensor, keep: bool):
    """The weights (x's columns cut off without attention), workspace, inputs and products of a call, and
    what the ops take besides them (enc_base, attention)."""
    w = LoopWeights(*(t.detach().contiguous() for t in loop_weights(m)))
    w, base, _ = native_loop.split_encoder(m, w, x, None)
    ws = native_loop.workspace(m, x.shape[0], x.dtype, w.enc_w.shape[1], w.dec_w.shape[1], False, keep)
    native_loop._start(m, ws, w.heads_b)
    return w, ws, native_loop.inputs(m, x, eps), native_loop.products(m, w, x.shape[0], None, False, keep), \
        {"enc_base": base, "attention": m.attention}


def named(op, *sources, **given) -> dict:
    """op's arguments by schema name, as native_loop.call finds them."""
    out = {}
    for arg in op._schema.arguments:
        out[arg.name] = given[arg.name] if arg.name in given else next(
            getattr(s, arg.name) for s in sources if arg.name in native_loop._names(s))
    return out


@needs_compiler
@pytest.mark.usefixtures("loaded")
def test_opcheck_every_registered_op():
    """torch.library.opcheck: the schemas declare every tensor each op writes (Tensor(a!)) and no
    other, the fake (meta) registration matches, and the ops trace under AOTAutograd."""
    x, eps = images(3, 2, 6, 5), torch.randn(2, 3, 2, dtype=torch.float64)
    fwd, bwd = torch.ops.drawcli.loop_forward.default, torch.ops.drawcli.loop_backward.default
    for attention in (True, False):
        m = model_for(9, height=6, width=5, glimpses=2, hidden=4, latent=2, read_n=2, write_n=2, channels=2, attention=attention)
        for keep in (True, False):  # training and evaluation buffers
            w, ws, ins, prods, extra = workspace_for(m, x, eps, keep)
            mu_ls = x.new_empty(2, 3, 4) if keep else ws.mu_ls
            args = named(fwd, ins, w, prods, ws, mu_ls=mu_ls, canvas=torch.empty_like(x), lz=x.new_empty(3),
                         log_ratio=None if keep else x.new_empty(3), filter_eps=FILTER_EPS, chunks=1, **extra)
            torch.library.opcheck(fwd, (), args)
            if keep:
                fwd(**args)
                ws.d_heads.zero_()
                torch.library.opcheck(bwd, (), named(bwd, ins, w, prods, ws, mu_ls=mu_ls, d_canvas=torch.randn_like(x),
                                                     dx=torch.zeros_like(x), d_lz=torch.ones(3, dtype=x.dtype), d_mu_ls=None,
                                                     filter_eps=FILTER_EPS, chunks=1, attention=attention))
    torch.library.opcheck(torch.ops.drawcli.abi_version.default, ())
    assert torch.ops.drawcli.abi_version() == native.ABI


@needs_compiler
@pytest.mark.usefixtures("loaded")
def test_the_glue_names_every_argument_of_the_schemas():
    """Every argument of both ops is a field of native_loop's dataclasses (or one of the few
    given per call), and every NativeWorkspace buffer is an argument of one of them: the schemas and
    the glue cannot drift apart unnoticed."""
    given = {"mu_ls", "canvas", "lz", "log_ratio", "filter_eps", "chunks", "d_canvas", "dx", "d_lz", "d_mu_ls", "enc_base",
             "attention"}
    fields = set()
    for cls in (native_loop.Inputs, native_loop.Products, native_loop.NativeWorkspace):
        fields |= {f.name for f in dataclasses.fields(cls)}
    fields |= set(LoopWeights._fields)
    args = set()
    for op in (torch.ops.drawcli.loop_forward.default, torch.ops.drawcli.loop_backward.default):
        names = {a.name for a in op._schema.arguments}
        assert names <= fields | given, names - fields - given
        args |= names
    assert {f.name for f in dataclasses.fields(native_loop.NativeWorkspace)} - {"key"} <= args


@needs_compiler
@pytest.mark.usefixtures("loaded")
def test_wrong_buffers_are_refused_in_one_message():
    m = model_for(9, height=6, width=5, glimpses=2, hidden=4, latent=2, read_n=2, write_n=2)
    x, eps = images(3, 1, 6, 5), torch.randn(2, 3, 2, dtype=torch.float64)
    w, ws, ins, prods, extra = workspace_for(m, x, eps, True)
    fwd = torch.ops.drawcli.loop_forward.default
    args = named(fwd, ins, w, prods, ws, mu_ls=x.new_empty(2, 3, 4), canvas=torch.empty_like(x), lz=x.new_empty(3),
                 log_ratio=None, filter_eps=FILTER_EPS, chunks=1, **extra)
    with pytest.raises(RuntimeError, match="se has 10 values, expected 12"):
        fwd(**dict(args, se=x.new_empty(2, 5)))
    with pytest.raises(RuntimeError, match="heads must be Double"):
        fwd(**dict(args, heads=args["heads"].float()))
    with pytest.raises(RuntimeError, match="filter offsets come with attention, and only with it"):
        fwd(**dict(args, attention=False))
    with pytest.raises(RuntimeError, match="enc_base comes without attention, and only without it"):
        fwd(**dict(args, enc_base=x.new_zeros(3, 16)))


# ----------------------------------------------------------------------------- building
def test_the_build_key_follows_what_the_build_depends_on(monkeypatch, tmp_path):
    cxx = "/usr/bin/c++"
    base = native.build_key(cxx)
    assert native.build_key("/usr/bin/clang++") != base
    monkeypatch.setattr(native, "ABI", native.ABI + 1)  # a flag (-DDRAWCLI_ABI) changes
    assert native.build_key(cxx) != base
    monkeypatch.undo()
    header = tmp_path / "kernels.h"
    header.write_bytes(native.HEADERS[0].read_bytes() + b"\n// changed\n")
    monkeypatch.setattr(native, "HEADERS", (header,))
    assert native.build_key(cxx) != base
    monkeypatch.undo()
    src = tmp_path / "draw_loop.cpp"
    src.write_bytes(native.SOURCE.read_bytes() + b"\n// changed\n")
    monkeypatch.setattr(native, "SOURCE", src)
    assert native.build_key(cxx) != base


def test_the_target_and_amx_switches_are_flags_and_part_of_the_key(monkeypatch):
    cxx = "/usr/bin/c++"
    base = native.build_key(cxx)
    assert "-march=native" in native.flags(cxx)[0] and "-DDRAWCLI_NO_AMX" not in native.flags(cxx)[0]
    monkeypatch.setenv("DRAWCLI_NATIVE_ARCH", "x86-64-v3")  # AVX2 only, as most laptops
    assert "-march=x86-64-v3" in native.flags(cxx)[0] and "-march=native" not in native.flags(cxx)[0]
    assert native.build_key(cxx) != base
    monkeypatch.delenv("DRAWCLI_NATIVE_ARCH")
    monkeypatch.setenv("DRAWCLI_AMX", "0")
    assert "-DDRAWCLI_NO_AMX" in native.flags(cxx)[0] and native.build_key(cxx) != base


GENERIC_CHECK = """
import torch
from drawcli.model import native_build, native_loop
from drawcli.model.draw import DRAW
assert native_build.load(), native_build.unavailable_reason()
assert not native_loop.amx_available()
torch.manual_seed(0)
worst = 0.0
for attention, c in ((True, 1), (False, 3)):
    m = DRAW(height=9, width=7, glimpses=3, hidden=8, latent=3, read_n=2, write_n=3, attention=attention, channels=c).double()
    x = torch.rand(11, c, 9, 7, dtype=torch.float64, requires_grad=True)
    eps = torch.randn(3, 11, 3, dtype=torch.float64)
    got = []
    for engine in ("native", "reference"):
        m.zero_grad()
        x.grad = None
        out = m(x, eps=eps, engine=engine, log_ratio=True)
        (out.loss.sum() + 0.1 * out.log_ratio.sum()).backward()
        got.append([out.loss.detach(), x.grad.clone(), *(p.grad.clone() for p in m.parameters())])
    for a, b in zip(*got):
        worst = max(worst, float((a - b).abs().max() / b.abs().max().clamp_min(1e-30)))
print("worst", worst)
assert worst < 1e-10
"""


@needs_compiler
@pytest.mark.skipif(platform.machine() not in ("x86_64", "AMD64"), reason="-march=x86-64 is the x86 baseline")
def test_the_generic_build_without_x86_extensions_equals_the_reference():
    """What an Arm machine builds: no -march=native (here the x86-64 baseline: SSE2, no AVX) and no AMX
    kernels. It compiles, and it computes draw.py's function, with and without attention (float64)."""
    env = dict(os.environ, DRAWCLI_NATIVE_ARCH="x86-64", DRAWCLI_AMX="0", OMP_NUM_THREADS="1")
    done = subprocess.run([sys.executable, "-c", GENERIC_CHECK], env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "worst" in done.stdout


def test_a_compilers_error_line_is_remembered_but_not_a_killed_build():
    out = ("[1/2] c++ -MMD ... -c draw_loop.cpp -o draw_loop.o\nFAILED: draw_loop.o\n"
           "draw_loop.cpp:3:10: fatal error: ATen/ATen.h: No such file or directory\nninja: build stopped: subcommand failed.\n")
    assert native.refusal(out) == "draw_loop.cpp:3:10: fatal error: ATen/ATen.h: No such file or directory"
    assert native.refusal("c++: fatal error: Killed signal terminated program cc1plus") is None
    assert native.refusal("ninja: build stopped: interrupted by user.") is None


FALLBACK = (
    "import torch\n"
    "from drawcli.model import native_build as native\n"
    "from drawcli.model import DRAW\n"
    "from drawcli.model.engine import resolve_for\n"
    "ok = native.load()\n"
    "m = DRAW(height=8, width=8, glimpses=2, hidden=8, latent=2, read_n=2, write_n=2)\n"
    "x = torch.rand(3, 8, 8)\n"
    "m(x).loss.mean().backward()\n"
    "print(ok, resolve_for('auto', m, 'cpu', 'train').name, native.unavailable_reason())\n"
)


def test_without_a_compiler_the_python_engine_runs(tmp_path):
    """A fresh cache and no compiler: load() says why, and auto runs the Python engine."""
    env = dict(os.environ, DRAWCLI_CACHE=str(tmp_path), CXX="false")
    env["PATH"] = str(tmp_path / "nothing")  # no c++, g++ or clang++ either
    out = subprocess.run([sys.executable, "-c", FALLBACK], env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("False python no C++ compiler"), out.stdout


def test_a_failing_compiler_is_remembered_with_the_file_to_delete(tmp_path):
    """A compiler that fails leaves a FAILED marker, and the next process does not try again."""
    fake = tmp_path / "bin"
    fake.mkdir()
    # answers for its version (cpp_extension asks), refuses to compile
    (fake / "c++").write_text("#!/bin/sh\ncase \"$1\" in -dump*|--version) echo 12.2.0; exit 0;; esac\n"
                              "echo 'fatal error: broken' >&2\nexit 1\n")
    (fake / "c++").chmod(0o755)
    env = dict(os.environ, DRAWCLI_CACHE=str(tmp_path), PATH=f"{fake}:/usr/bin:/bin")
    env.pop("CXX", None)
    outs = [subprocess.run([sys.executable, "-c", FALLBACK], env=env, capture_output=True, text=True, timeout=300)
            for _ in range(2)]
    for out in outs:
        assert out.returncode == 0, out.stderr
    if "ninja is missing" in outs[0].stdout:
        pytest.skip("no ninja here: cpp_extension cannot run the build")
    assert outs[0].stdout.startswith("False python c++ failed: fatal error: broken"), outs[0].stdout
    failed = list(tmp_path.glob("native/*/FAILED"))
    assert len(failed) == 1
    assert outs[1].stdout.startswith(f"False python c++ failed: fatal error: broken (remembered in {failed[0]}: delete it"), outs[1].stdout
