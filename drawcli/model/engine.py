"""Which implementation runs ``DRAW.forward`` and ``DRAW.generate``: the engine, chosen per call.

Three engines compute the same function from the same parameters:

* ``reference``: draw.py's plain loops, eq 1-29 as the paper writes them, autograd for every
  gradient. The yardstick of the tests; slow.
* ``python``: fused.py, the time loop as one autograd node with a hand-written backward
  (python_loop.py), the sampling decoder (sampling.py). Runs on every device but MPS (below).
* ``native``: the same loop in C++ (csrc/draw_loop.cpp, glue in native_loop.py): training and
  evaluation on the CPU, with or without attention, grey or colour, windows up to NATIVE_MAX_WINDOW. drawcli/model/native_build.py builds and
  loads it; the model itself never does (it does no I/O).

``auto`` (the default) picks, for each call: the native engine where it is loaded and can run
that call, else the Python engine; on MPS the reference loops, because the fused engine writes
with ``out=`` into strided views, which some torch releases have computed wrongly on MPS.
An engine named explicitly runs or raises ValueError saying why it cannot; it never hands the
call to another engine. No module state is involved: the choice is an argument.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

ENGINES = ("auto", "native", "python", "reference")

# Why the fused engine does not run on MPS (issue 27): its loop writes results with out= into
# slices of larger buffers, and out= into non-contiguous views has given silently wrong results
# on MPS in some torch releases. No MPS machine has tested it here, so MPS runs the plain loops.
MPS_REASON = "on MPS the fused engine's writes into strided views are not trusted (some torch releases got them wrong)"

# The widest read or write window (N) the native loop takes: its kernels keep a window's column in
# fixed arrays (NMAX in csrc/kernels.h). Wider windows run the Python engine.
NATIVE_MAX_WINDOW = 64


def window_refusal(attention: bool, widest: int) -> str | None:
    """Why the native loop cannot take windows of side ``widest``, or None."""
    if attention and widest > NATIVE_MAX_WINDOW:
        return f"windows are at most {NATIVE_MAX_WINDOW} wide, this model's are {widest}"
    return None


@dataclass(frozen=True)
class Engine:
    """An engine name (see ENGINES) and its options.

    packed_gemm: on the CPU, run the per-step LSTM products through oneDNN with the weights
    packed once per loop (packed_gemm.py), where this build of torch can; False runs torch.mm
    (benchmarks/speed.py compares the two).
    """

    name: str = "auto"
    packed_gemm: bool = True

    def __post_init__(self):
        if self.name not in ENGINES:
            raise ValueError(f"engine must be one of {', '.join(ENGINES)}, got {self.name!r}")


def as_engine(engine: str | Engine | None) -> Engine:
    """An Engine from a name, an Engine, or None (auto)."""
    if engine is None:
        return Engine()
    return engine if isinstance(engine, Engine) else Engine(engine)


def native_loaded() -> bool:
    """Whether this process has loaded the native library (drawcli.model.native_build.load())."""
    try:
        return hasattr(torch.ops.drawcli, "loop_forward")
    except (AttributeError, RuntimeError):
        return False


def native_refusal(m, x: torch.Tensor, record: bool, mm_dtype: torch.dtype | None) -> str | None:
    """Why the native engine cannot run this forward of model m on input x, or None if it can."""
    if not native_loaded():
        return "the native library is not loaded (drawcli.model.native_build.load() builds and loads it)"
    if x.device.type != "cpu":
        return f"it runs on the CPU only, not {x.device.type}"
    too_wide = window_refusal(m.attention, max(m.read_n, m.write_n))
    if too_wide:
        return f"its {too_wide}"
    if record:
        return "it does not record canvases and windows (pictures run the Python engine)"
    if x.dtype not in (torch.float32, torch.float64):
        return f"it runs float32 and float64 models, not {x.dtype}"
    if mm_dtype not in (None, torch.bfloat16) or (mm_dtype is not None and x.dtype != torch.float32):
        return f"its low-precision products are bfloat16 under a float32 model, not {mm_dtype} under {x.dtype}"
    return None


def forward_engine(engine: Engine, m, x: torch.Tensor, record: bool, mm_dtype: torch.dtype | None) -> str:
    """The engine that runs this forward: native, python or reference (see the module doc)."""
    name = engine.name
    if name == "reference":
        return name
    if name == "native":
        why = native_refusal(m, x, record, mm_dtype)
        if why is not None:
            raise ValueError(f"the native engine cannot run this forward: {why}")
        return name
    if x.device.type == "mps":
        if name == "python":
            raise ValueError(f"engine 'python': {MPS_REASON}; use 'auto' or 'reference'")
        return "reference"
    if name == "python":
        return name
    return "native" if native_refusal(m, x, record, mm_dtype) is None else "python"


def sampling_engine(engine: Engine, device: torch.device) -> str:
    """The engine that runs DRAW.generate: python or reference (sampling has no native loop)."""
    name = engine.name
    if name == "native":
        raise ValueError("the native engine has no sampling loop: use 'auto', 'python' or 'reference'")
    if device.type == "mps":
        if name == "python":
            raise ValueError(f"engine 'python': {MPS_REASON}; use 'auto' or 'reference'")
        return "reference"
    return "reference" if name == "reference" else "python"
