"""Which engine a command runs, and the one line that says so (``run.engine``, flag ``--engine``).

auto | native | python | reference (drawcli/model/engine.py describes them). A command resolves
the setting once, before its work starts: ``auto`` becomes the native engine where it can run
that work (the CPU, training or evaluation, windows it takes, a library that builds here),
else the Python engine (the reference loops on MPS); an engine named explicitly runs, or the
command ends with one line saying why it cannot. The resolved name is passed to every model call.
"""

from __future__ import annotations

from dataclasses import dataclass

from drawcli.core.errors import DrawError

# The work each command does with the model, and whether the native engine has a loop for it.
NATIVE_WORK = {"train": True, "evaluate": True, "sample": False, "animate": False, "inspect-attention": False}


@dataclass(frozen=True)
class Choice:
    engine: str  # native | python | reference
    why: str

    @property
    def line(self) -> str:
        names = {"native": "native (C++ loop)", "python": "python (fused PyTorch loop)", "reference": "reference (draw.py's plain loops)"}
        return f"engine: {names[self.engine]}; {self.why}"


def choose_engine(setting: str, device, attention: bool, work: str, say=None, flag: str = "--engine", window: int = 0) -> Choice:
    """Resolve ``setting`` for ``work`` (a key of NATIVE_WORK) on ``device`` (a torch.device), for a
    model with or without ``attention`` whose widest read or write window is ``window``.

    Loads (and the first time builds) the native library when it could run; ``say`` gets the
    line announcing a build. An explicit engine that cannot run is a DrawError naming ``flag``."""
    from drawcli.model import native_build as native
    from drawcli.model.engine import ENGINES, MPS_REASON, window_refusal

    if setting not in ENGINES:
        raise DrawError(f"{flag}: expected one of {', '.join(ENGINES)}, got {setting!r}")
    if setting == "reference":
        return Choice("reference", f"{flag} reference")
    if device.type == "mps":
        if setting != "auto":
            raise DrawError(f"{flag} {setting}: {MPS_REASON}; use --engine auto or reference")
        return Choice("reference", f"auto: {MPS_REASON}")
    if setting == "python":
        return Choice("python", f"{flag} python")
    why_not = None
    if not NATIVE_WORK[work]:
        why_not = f"draw {work} has no native loop"
    elif device.type != "cpu":
        why_not = f"the native engine runs on the CPU, this is {device.type}"
    elif window_refusal(attention, window):
        why_not = f"the native engine's {window_refusal(attention, window)}"
    elif setting == "auto" and native.switched_off():
        why_not = "DRAWCLI_NATIVE=0"
    elif not native.load(say=say):
        why_not = f"the native engine is unavailable: {native.unavailable_reason()}"
    if why_not is None:
        return Choice("native", f"{flag} native" if setting == "native" else "auto: CPU, library loaded")
    if setting == "native":
        raise DrawError(f"{flag} native: {why_not}; use --engine auto or python")
    return Choice("python", f"auto: {why_not}")
