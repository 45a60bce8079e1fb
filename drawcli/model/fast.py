"""The front of the fast engines behind ``DRAW.forward`` and ``DRAW.generate`` (engine "python" or "native").

They compute exactly what draw.py's plain loops compute (eq 3-8, the same parameters), faster.
This module resolves the engine of a call (engine.resolve), keeps autocast out of the loops, and
wraps training in one autograd node (_DrawLoop) whose backward is hand-written:

- python_loop.py / python_backward.py: the time loop in PyTorch ops, into preallocated buffers;
- native_loop.py: the same loop in C++ (csrc/draw_loop.cpp, loaded by drawcli/model/native_build.py);
- sampling.py: the decoder alone, for DRAW.generate;
- layout.py: the parameters as both loops read them (LoopWeights), and cached constants.

tests/test_fastpath.py and tests/test_native.py check every engine against draw.py's loops in
float64, forward and every gradient. No I/O here.
"""

from __future__ import annotations

import functools

import torch

from drawcli.model import native_loop, python_backward, python_loop, sampling
from drawcli.model.engine import Engine, Resolved, resolve
from drawcli.model.layout import loop_weights
from drawcli.model.parts import kl_per_image, log_ratio_per_image


def _eager(fn):
    """Keep ``fn`` out of torch.compile's tracing (it is one fused node already, with buffers
    reused across calls and private oneDNN ops that no compiler can improve): a compiled DRAW
    compiles the rest and calls this eagerly. torch.compiler.disable is applied only when
    compiling, because importing torch._dynamo costs seconds that `draw sample` should not pay."""

    disabled: list = []  # made on the first compiled call

    @functools.wraps(fn)
    def call(*args, **kwargs):
        if torch.compiler.is_compiling():
            if not disabled:
                disabled.append(torch.compiler.disable(fn))
            return disabled[0](*args, **kwargs)
        return fn(*args, **kwargs)

    return call


def low_precision(ref: torch.Tensor) -> torch.dtype | None:
    """The dtype of the LSTM products under torch.autocast to bfloat16, else None.

    Mixed precision in the fast engines: inside an autocast region the two LSTM products of every
    step (eq 5 and 7, about 94% of the model's FLOPs) and their gradients run with inputs cast to
    autocast's dtype, accumulating in float32. Everything else stays in the model's dtype:
    the cell states, canvas, losses and KL, the small q and attention heads (whose outputs are
    exponentiated: eq 1-2, 21-24) and the filterbanks. Only float32 models are cast.

    A user's autocast to float16 leaves the products in float32: float16's range needs loss
    scaling (a GradScaler) to keep small gradients from flushing to zero, and the hand-written
    backward would round the gate gradients to float16 with whatever scale it is given.
    """
    dev = ref.device.type
    if ref.dtype != torch.float32 or not torch.is_autocast_enabled(dev):
        return None
    dtype = torch.get_autocast_dtype(dev)
    return dtype if dtype == torch.bfloat16 else None


def _window(m) -> int:
    return max(m.read_n, m.write_n) if m.attention else 0


@_eager
def choose(m, x: torch.Tensor, record: bool, engine: str | Engine | Resolved | None) -> Resolved:
    """The engine that runs this forward of model m on x (engine.resolve)."""
    work = "record" if record else ("train" if torch.is_grad_enabled() else "evaluate")
    return resolve(engine, attention=m.attention, window=_window(m), device=x.device, work=work, dtype=x.dtype,
                   mm_dtype=low_precision(x), say=_announce)


def _announce(line: str) -> None:
    """A library user's first forward that can run the native engine builds it (once per machine):
    said as a warning, since the model prints nothing (the commands say it on their console)."""
    import warnings

    warnings.warn(line, UserWarning, stacklevel=4)


@_eager
def choose_sampling(m, engine: str | Engine | Resolved | None, device: torch.device, dtype: torch.dtype) -> Resolved:
    """The engine that samples from model m (engine.resolve; sampling has no native loop)."""
    return resolve(engine, attention=m.attention, window=_window(m), device=device, work="sample", dtype=dtype)


@_eager
def encode_decode(m, x: torch.Tensor, eps: torch.Tensor, record: bool, log_ratio: bool, name: str, packed: bool = True):
    """DRAW.encode_decode by engine ``name`` (python or native): (c_T, L^z, log ratio or None, records)."""
    mm_dtype = low_precision(x)
    training = torch.is_grad_enabled() and (x.requires_grad or any(p.requires_grad for p in m.parameters()))
    weights = loop_weights(m)
    # The loops write into preallocated buffers of x's dtype: autocast stays out of them, and
    # mm_dtype says which products run in low precision instead.
    with torch.autocast(x.device.type, enabled=False):
        if not training and name == "native":
            canvas, lz, ratio = native_loop.evaluate(m, x, eps, weights, mm_dtype, log_ratio, packed)
            return canvas, lz, ratio, ()
        if training:
            canvas, mu_ls, lz, *records = _DrawLoop.apply(m, record, mm_dtype, name, packed, x, eps, *weights)
        else:  # evaluation: no buffers kept for backward
            canvas, mu_ls, records, _ = python_loop.forward(m, x, eps, weights, save=False, record=record,
                                                            mm_dtype=mm_dtype, packed=packed)
            lz = kl_per_image(*mu_ls.split(m.embed, -1))
    ratio = log_ratio_per_image(*mu_ls.split(m.embed, -1), eps) if log_ratio else None
    return canvas, lz, ratio, tuple(records)


@_eager
def decode(m, z_all: torch.Tensor, every_step: bool = True, packed: bool = True) -> tuple[torch.Tensor, torch.Tensor | None]:
    """DRAW.decode by the Python engine: the decoder, write head and write attention only."""
    mm_dtype = low_precision(z_all)
    with torch.autocast(z_all.device.type, enabled=False):  # the loop writes into buffers of z's dtype
        return sampling.decode(m, z_all, every_step, mm_dtype, packed)


class _DrawLoop(torch.autograd.Function):
    """DRAW's time loop as one autograd node: forward by python_loop or native_loop, backward by
    python_backward or native_loop.

    Inputs: the module (for its shapes), the record flag, the low-precision dtype of the LSTM
    products (or None), the engine (python or native), whether products may be packed, x, eps,
    the LoopWeights. Outputs: c_T, [mu | log sigma] (T, B, 2Z), L^z (B,) (eq 11, here so that its
    gradient is three bulk ops instead of an autograd graph), then the records (no gradient).
    """

    @staticmethod
    def forward(ctx, model, record, mm_dtype, name, packed, x, eps, *weights):
        if name == "native":
            canvas, mu_ls, lz, saved = native_loop.forward(model, x, eps, weights, mm_dtype, packed)
            records = ()
        else:
            canvas, mu_ls, records, saved = python_loop.forward(model, x, eps, weights, save=True, record=record,
                                                                mm_dtype=mm_dtype, packed=packed)
            lz = kl_per_image(*mu_ls.split(model.embed, -1))
        ctx.model, ctx.saved, ctx.native = model, saved, name == "native"
        ctx.save_for_backward(mu_ls)  # an output: saved this way to avoid a reference cycle
        ctx.mark_non_differentiable(*records)
        return (canvas, mu_ls, lz, *records)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, d_canvas, d_mu_ls, d_lz, *_):
        if ctx.saved is None:
            raise RuntimeError("the fast engines' backward reuses its buffers: backward through one forward only once")
        (mu_ls,) = ctx.saved_tensors
        need_x = ctx.needs_input_grad[5]
        with torch.autocast(mu_ls.device.type, enabled=False):
            run = native_loop.backward if ctx.native else python_backward.backward
            dx, grads = run(ctx.model, ctx.saved, d_canvas, d_mu_ls, d_lz, mu_ls, need_x)
        ctx.saved = None  # drop this forward's per-step tensors now (its buffers went back to the workspace store)
        return (None, None, None, None, None, dx, None, *grads)
