"""Device selection: auto = CUDA, else MPS, else CPU; explicit devices are checked."""

from __future__ import annotations

import re

from drawcli.errors import DrawError

_PATTERN = re.compile(r"^(auto|cpu|mps|cuda(:\d+)?)$")


def check_spec(spec: str) -> str:
    """The device spec, normalised; a DrawError for a malformed one (without importing torch)."""
    spec = spec.strip().lower()
    if not _PATTERN.match(spec):
        raise DrawError(f"run.device: expected auto, cpu, cuda, cuda:N or mps, got {spec!r}")
    return spec


def resolve_device(spec: str):
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


def describe(device) -> str:
    import torch

    if device.type == "cuda":
        return f"{device} ({torch.cuda.get_device_name(device)})"
    return str(device)
