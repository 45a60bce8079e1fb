"""Which implementation runs a model call: the engine, decided by one function, ``resolve``.

Three engines compute the same function from the same parameters:

* ``reference``: draw.py's plain loops, eq 1-29 as the paper writes them, autograd for every
  gradient. The yardstick of the tests; slow.
* ``python``: the Python engine (python_loop.py forward, python_backward.py backward by hand,
  sampling.py for sampling; fast.py is the front of both fast engines). Runs on every device but MPS.
* ``native``: the same loop in C++ (csrc/draw_loop.cpp, glue in native_loop.py): training and
  evaluation on the CPU, with or without attention, grey or colour, windows up to
  NATIVE_MAX_WINDOW wide. native_build.py builds and loads its library.

``resolve`` takes the request (a name of core.device.ENGINES, or an Engine with options), what the
model is (attention, its widest window), where and in what it runs (device, dtype, the products'
low-precision dtype) and the work (training, evaluation, sampling, a recorded forward), and returns
a Resolved engine with the one line that says why. ``auto`` gives the native engine wherever it can
run that work and its library builds or loads here (resolve builds it the first time: 20-40 s,
once per machine), else the Python engine; on MPS the reference loops, because the Python engine
writes with ``out=`` into strided views, which some torch releases have computed wrongly on MPS. An
engine named explicitly runs, or resolve raises EngineError saying why it cannot; it never hands
the call to another engine. The answer depends on the arguments and the machine only, so a fresh
process gets the same engine as one that has already loaded the library.

The model's loops take Resolved engines; DRAW.forward and DRAW.generate resolve a name or an
Engine they are given through this function (via fast.py), and the commands resolve once and pass
the Resolved on.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from drawcli.core.device import ENGINES
from drawcli.core.errors import DrawError

# Why the Python engine does not run on MPS (issue 27): its loop writes results with out= into
# slices of larger buffers, and out= into non-contiguous views has given silently wrong results
# on MPS in some torch releases. No MPS machine has tested it here, so MPS runs the plain loops.
MPS_REASON = "on MPS the Python engine's writes into strided views are not trusted (some torch releases got them wrong)"

# The widest read or write window (N) the native loop takes: its kernels keep a window's column in
# fixed arrays (NMAX in csrc/kernels.h; tests/test_native.py runs a window this wide natively).
NATIVE_MAX_WINDOW = 64

# The work a model call or a command does, and whether the native engine has a loop for it.
NATIVE_WORK = {"train": True, "evaluate": True, "sample": False, "animate": False, "inspect-attention": False,
               "record": False}
_NO_NATIVE = {"sample": "sampling has no native loop", "animate": "draw animate has no native loop",
              "inspect-attention": "draw inspect-attention has no native loop",
              "record": "the native engine does not record canvases and windows (pictures run the Python engine)"}
_LABELS = {"native": "native (C++ loop)", "python": "python (PyTorch loop)", "reference": "reference (draw.py's plain loops)"}


class EngineError(DrawError, ValueError):
    """An engine named explicitly cannot run this work here (or the name is not an engine)."""


@dataclass(frozen=True)
class Engine:
    """A request: an engine name (core.device.ENGINES) and its options.

    packed_gemm: on the CPU, run the per-step LSTM products through oneDNN with the weights
    packed once per loop (packed_gemm.py), where this build of torch can; False runs torch.mm
    (benchmarks/speed.py compares the two)."""

    name: str = "auto"
    packed_gemm: bool = True

    def __post_init__(self):
        if self.name not in ENGINES:
            raise EngineError(f"engine: expected one of {', '.join(ENGINES)}, got {self.name!r}")


@dataclass(frozen=True)
class Resolved:
    """What ``resolve`` decided: the engine that runs (native, python or reference), why, and the
    request's options."""

    name: str
    why: str
    packed_gemm: bool = True

    @property
    def line(self) -> str:
        """The one line a command prints: ``engine: native (C++ loop); auto: CPU, library loaded``."""
        return f"engine: {_LABELS[self.name]}; {self.why}"


def as_engine(request: str | Engine | None) -> Engine:
    """An Engine from a name, an Engine, or None (auto)."""
    if request is None:
        return Engine()
    return request if isinstance(request, Engine) else Engine(request)


def window_refusal(attention: bool, widest: int) -> str | None:
    """Why the native loop cannot take windows of side ``widest``, or None."""
    if attention and widest > NATIVE_MAX_WINDOW:
        return f"windows are at most {NATIVE_MAX_WINDOW} wide, this model's are {widest}"
    return None


def native_refusal(attention: bool, window: int, device: torch.device, dtype: torch.dtype, work: str,
                   mm_dtype: torch.dtype | None) -> str | None:
    """Why the native engine cannot run this work, from the arguments alone (the library aside), or None."""
    if not NATIVE_WORK[work]:
        return _NO_NATIVE[work]
    if device.type != "cpu":
        return f"the native engine runs on the CPU only, not {device.type}"
    if dtype not in (torch.float32, torch.float64):
        return f"the native engine runs float32 and float64 models, not {dtype}"
    if mm_dtype not in (None, torch.bfloat16) or (mm_dtype is not None and dtype != torch.float32):
        return f"the native engine's low-precision products are bfloat16 under a float32 model, not {mm_dtype} under {dtype}"
    too_wide = window_refusal(attention, window)
    return f"the native engine's {too_wide}" if too_wide else None


def resolve(request: str | Engine | Resolved | None, *, attention: bool, window: int, device, work: str,
            dtype: torch.dtype = torch.float32, mm_dtype: torch.dtype | None = None, flag: str = "engine",
            say=None) -> Resolved:
    """The engine that runs ``work`` (a key of NATIVE_WORK) for a model with or without ``attention``
    whose widest read or write window is ``window``, on ``device`` in ``dtype`` (``mm_dtype``: the
    LSTM products' low-precision dtype, or None); see the module doc.

    Builds or loads the native library when the native engine could run (``say`` gets the line
    announcing a build). A Resolved request is checked against this work and returned. An engine
    named explicitly that cannot run is an EngineError naming ``flag`` (``--engine`` for commands)."""
    from drawcli.model import native_build

    device = torch.device(device)
    if isinstance(request, Resolved):
        if request.name == "native":
            why = native_refusal(attention, window, device, dtype, work, mm_dtype)
            if why is not None:
                raise EngineError(f"{flag} native: {why}")
        return request
    if isinstance(request, str) and request not in ENGINES:
        raise EngineError(f"{flag}: expected one of {', '.join(ENGINES)}, got {request!r}")
    engine = as_engine(request)
    name, packed = engine.name, engine.packed_gemm
    if name == "reference":
        return Resolved("reference", f"{flag} reference", packed)
    if device.type == "mps":
        if name != "auto":
            raise EngineError(f"{flag} {name}: {MPS_REASON}; use {flag} auto or reference")
        return Resolved("reference", f"auto: {MPS_REASON}", packed)
    if name == "python":
        return Resolved("python", f"{flag} python", packed)
    why_not = native_refusal(attention, window, device, dtype, work, mm_dtype)
    if why_not is None and name == "auto" and native_build.switched_off():
        why_not = "DRAWCLI_NATIVE=0"
    if why_not is None and not native_build.load(say=say):
        why_not = f"the native engine is unavailable: {native_build.unavailable_reason()}"
    if why_not is None:
        return Resolved("native", f"{flag} native" if name == "native" else "auto: CPU, library loaded", packed)
    if name == "native":
        raise EngineError(f"{flag} native: {why_not}; use {flag} auto or python")
    return Resolved("python", f"auto: {why_not}", packed)


def resolve_for(request: str | Engine | Resolved | None, model, device, work: str, **options) -> Resolved:
    """``resolve`` for a model or its settings (anything with attention, read_n and write_n)."""
    window = max(model.read_n, model.write_n) if model.attention else 0
    return resolve(request, attention=model.attention, window=window, device=device, work=work, **options)
