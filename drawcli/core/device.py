"""Device selection: auto = CUDA, else MPS, else CPU; explicit devices are checked."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:  # torch is imported when a function runs: `draw --help` stays fast
    import torch

import re

from drawcli.core.errors import DrawError

_PATTERN = re.compile(r"^(auto|cpu|mps|cuda(:\d+)?)$")


def check_spec(spec: str) -> str:
    """The device spec, normalised; a DrawError for a malformed one (without importing torch)."""
    spec = spec.strip().lower()
    if not _PATTERN.match(spec):
        raise DrawError(f"run.device: expected auto, cpu, cuda, cuda:N or mps, got {spec!r}")
    return spec


def resolve_device(spec: str) -> torch.device:
    """Turn a settings value into an available torch.device, or raise a clear DrawError."""
    spec = check_spec(spec)  # before the import: a typo is answered at once
    import torch

    mps = getattr(torch.backends, "mps", None)
    mps_ok = bool(mps and mps.is_available())
    if spec == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        return torch.device("mps") if mps_ok else torch.device("cpu")
    if spec.startswith("cuda"):
        if not torch.cuda.is_available():
            raise DrawError(f"device {spec!r} requested but CUDA is not available (torch {torch.__version__})")
        index = int(spec.split(":")[1]) if ":" in spec else 0
        if index >= torch.cuda.device_count():
            raise DrawError(f"device {spec!r} requested but only {torch.cuda.device_count()} CUDA device(s) exist")
        return torch.device(spec)
    if spec == "mps" and not mps_ok:
        raise DrawError("device 'mps' requested but MPS is not available on this machine")
    return torch.device(spec)


def describe(device: torch.device) -> str:
    import torch

    if device.type == "cuda":
        return f"{device} ({torch.cuda.get_device_name(device)})"
    return str(device)


# ----------------------------------------------------------------------------- precision
PRECISIONS = ("float32", "bfloat16", "auto")
# The engines that run the model (drawcli/model/engine.py describes them and resolves one): the
# one list of their names, for the settings, the commands and the model.
ENGINES = ("auto", "native", "python", "reference")


def native_bf16(device: torch.device) -> str | None:
    """Why this device multiplies bfloat16 natively ("AMX", "AVX512-BF16", "CUDA sm_80+"), or None."""
    import torch

    if device.type == "cuda":
        major, minor = torch.cuda.get_device_capability(device)
        return f"CUDA compute capability {major}.{minor}" if major >= 8 else None
    if device.type == "cpu":
        probes = (("AMX", "_is_amx_tile_supported"), ("AVX512-BF16", "_is_avx512_bf16_supported"))
        for name, probe in probes:
            fn = getattr(torch.cpu, probe, None)
            try:
                if fn is not None and fn():
                    return name
            except Exception:  # noqa: BLE001 - a probe this build lacks means no
                continue
    return None


def bfloat16_problem(device: torch.device) -> str | None:
    """Why autocast to bfloat16 does not run on this GPU, or None when it does (the CPU always can).

    A tiny product is tried: some devices raise (MPS before macOS 14), others have autocast
    switch itself off with a warning (CUDA GPUs without bfloat16), which would train in float32
    while reporting bfloat16.
    """
    import warnings

    import torch

    if device.type == "cpu":
        return None
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            with torch.autocast(device.type, dtype=torch.bfloat16):
                a = torch.ones(2, 2, device=device)
                out_dtype = (a @ a).dtype
    except (RuntimeError, TypeError, ValueError) as e:
        return str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    if out_dtype != torch.bfloat16:
        said = next((str(w.message).strip().splitlines()[0] for w in caught), "")
        return f"autocast gave {str(out_dtype).removeprefix('torch.')} products" + (f" ({said})" if said else "")
    return None


def resolve_precision(name: str, device: torch.device) -> tuple[str, str]:
    """train.precision -> ("float32" or "bfloat16", a short reason for people).

    ``auto`` takes bfloat16 only where the hardware multiplies it natively (never on MPS, whose
    bfloat16 support depends on the macOS version); an explicit ``bfloat16`` on a GPU is tried
    first and refused with the reason when it cannot run there.
    """
    if name not in PRECISIONS:
        raise DrawError(f"precision: expected one of {', '.join(PRECISIONS)}, got {name!r}")
    if name == "bfloat16":
        problem = bfloat16_problem(device)
        if problem:
            raise DrawError(f"precision bfloat16 cannot run on {describe(device)}: {problem}; use --precision float32")
        return name, "as set"
    if name != "auto":
        return name, "as set"
    why = native_bf16(device)
    if why:
        return "bfloat16", f"auto: {describe(device)} multiplies bfloat16 natively ({why})"
    return "float32", f"auto: no native bfloat16 products on {describe(device)}"


def autocast(device: torch.device, precision: str) -> torch.autocast:
    """The context that runs a forward pass in ``precision`` ("float32": autocast off)."""
    import torch

    dtype = torch.bfloat16 if precision == "bfloat16" else None
    return torch.autocast(device.type, dtype=dtype or torch.bfloat16, enabled=dtype is not None)


# ----------------------------------------------------------------------------- CPU threads
def idle_cores(window: float = 0.25) -> float | None:
    """How many CPUs sat idle over ``window`` seconds (Linux /proc/stat), else None."""
    import time

    def sample():
        with open("/proc/stat", encoding="ascii") as f:
            fields = f.readline().split()[1:]
        values = [int(v) for v in fields]
        idle = values[3] + (values[4] if len(values) > 4 else 0)  # idle + iowait
        return idle, sum(values[:8])

    try:
        idle0, total0 = sample()
        time.sleep(window)
        idle1, total1 = sample()
    except (OSError, ValueError, IndexError):
        return None
    import os

    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    if total1 <= total0:
        return None
    return cpus * (idle1 - idle0) / (total1 - total0)


def thread_policy(setting: int | None, device: torch.device, processes: int = 1) -> tuple[int | None, str]:
    """CPU threads for this process: (count or None to leave torch's choice, reason).

    An explicit setting wins. Otherwise on the CPU: the cores that were idle at start, shared
    among the processes of a job, at least 1 and at most torch's default (the physical cores).
    OpenMP threads that find their core busy wait for it at every parallel op, which made a
    2-thread training 3x slower than a 1-thread one beside another busy process.
    """
    import torch

    if setting is not None:
        return setting, "as set"
    if device.type != "cpu":
        return None, "not a CPU device"
    default = torch.get_num_threads()
    idle = idle_cores()
    if idle is None:
        return max(1, default // processes), "no load information"
    free = max(1, int(idle + 0.5))
    return max(1, min(default, free) // processes), f"{idle:.1f} of {default} cores idle at start"


def usable_cores() -> int:
    """The CPU cores this process may run on (its affinity mask where the OS has one)."""
    import os

    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def thread_warning(threads: int, processes: int = 1) -> str | None:
    """One warning line when run.threads (x the processes of a job) asks for more threads than there are
    cores: OpenMP threads without a core of their own wait for each other at every parallel op."""
    cores = usable_cores()
    if threads * processes <= cores:
        return None
    asked = f"--threads {threads}" + (f" x {processes} processes" if processes > 1 else "")
    return (f"warning: {asked} is more than the {cores} CPU core{'s' if cores > 1 else ''} this process may use; "
            "the threads beyond them wait for each other (slower, not faster)")
