"""Trained models that ship inside the package: ``draw animate @mnist`` draws with no data and no training.

Each file in ``drawcli/runs/weights/`` holds weights only (plain types and tensors, loaded with
``weights_only=True``) and is verified against the sha256 recorded here before it is opened.
The registry is pure data: listing the models (``draw models``) imports no torch.
"""

from __future__ import annotations

import difflib

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

    from drawcli.model import DRAW
    from drawcli.settings import Settings

import hashlib
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

from drawcli.core.errors import DrawError
from drawcli.runs.checkpoint import WEIGHTS_FORMAT

PREFIX = "@"


@dataclass(frozen=True)
class BuiltinModel:
    name: str  # written @NAME on the command line
    file: str  # under drawcli/runs/weights/
    sha256: str  # of the file
    description: str
    dataset: str
    model: dict  # DRAW constructor arguments
    trained: str  # how: recipe, epochs, machine
    results: dict = field(default_factory=dict)  # measured numbers, nats per image, with how they were measured


# One entry per file in drawcli/runs/weights/, written with export_weights() from a run (see the README,
# "Results"); every number in an entry was measured on that file.
BUILTINS: dict[str, BuiltinModel] = {
    "mnist": BuiltinModel(
        name="mnist",
        file="mnist.pt",
        sha256="45cbdee1e1c39743f3f4379f179560a629ece0bf2b14cce4e416b4cd4ba5781e",
        description="DRAW with attention on MNIST, the paper's Table 3 model (the reproduction run's last epoch)",
        dataset="mnist",
        model=dict(height=28, width=28, steps=64, hidden=256, embed=100, attention=True, read_n=2, write_n=5, channels=1),
        trained="400 epochs, 11.4 h on a 2-core Intel Xeon: sample_configs/mnist_reproduce.yaml, then three more "
                "cycles, each from the last weights (--init-from; docs/results.md)",
        results={
            "test ELBO (all 10k, K=1)": 80.94,
            "test IWAE bound (all 10k, K=100)": 79.20,
            "test ELBO (first 500, K=1)": 78.90,
            "last-epoch test loss during training": 80.78,
        },
    ),
}

# The figure the regression test holds the bundled file to: `draw evaluate @mnist --samples 1 --limit 500`
# (the fixed binarisation of seed 0, posterior noise of seed 1) measured 78.90 on this file.
REGRESSION = {"mnist": {"limit": 500, "samples": 1, "elbo": 78.90}}


def is_builtin_ref(ref: str) -> bool:
    return ref.startswith(PREFIX)


def get_builtin(ref: str) -> BuiltinModel:
    """The registry entry for ``@NAME`` (or ``NAME``); a one-line error lists the known names."""
    name = ref[len(PREFIX):] if ref.startswith(PREFIX) else ref
    if name not in BUILTINS:
        known = ", ".join(PREFIX + n for n in BUILTINS) or "none in this version"
        near = difflib.get_close_matches(name, list(BUILTINS), n=1, cutoff=0.6)
        hint = f"did you mean {PREFIX}{near[0]}? " if near else ""
        raise DrawError(f"unknown built-in model {PREFIX}{name} ({hint}built-in models: {known}; see `draw models`)")
    return BUILTINS[name]


def weights_path(entry: BuiltinModel) -> Path:
    return Path(str(resources.files("drawcli.runs") / "weights" / entry.file))


def sha256_of(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def verified_path(entry: BuiltinModel, path: Path | None = None) -> Path:
    """The weights file, after checking it is there and has the recorded sha256."""
    path = path or weights_path(entry)
    try:
        digest = sha256_of(path)
    except FileNotFoundError:
        raise DrawError(f"built-in model {PREFIX}{entry.name}: {path} is missing from this installation; reinstall drawcli") from None
    except OSError as e:
        raise DrawError(f"built-in model {PREFIX}{entry.name}: cannot read {path}: {e.strerror or e}") from None
    if digest != entry.sha256:
        raise DrawError(
            f"built-in model {PREFIX}{entry.name}: {path} is corrupt (sha256 {digest[:16]}..., expected "
            f"{entry.sha256[:16]}...); reinstall drawcli"
        )
    return path


def load_weights(entry: BuiltinModel, path: Path | None = None) -> dict:
    """The verified file's contents: {format, model_config, model (state_dict), settings, ...}."""
    import torch

    path = verified_path(entry, path)
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - the sha256 matched, so this is an incompatible torch
        first = str(e).strip().splitlines()[0][:160] if str(e).strip() else type(e).__name__
        raise DrawError(f"built-in model {PREFIX}{entry.name}: cannot load {path}: {first}") from None
    if not isinstance(data, dict) or data.get("format") != WEIGHTS_FORMAT:
        raise DrawError(f"built-in model {PREFIX}{entry.name}: {path} is not a drawcli weights file")
    return data


def build(entry: BuiltinModel, device: torch.device | str, path: Path | None = None) -> tuple[DRAW, Settings, dict]:
    """(model in eval mode on ``device``, settings, file data) for a built-in model."""
    from drawcli.model import DRAW
    from drawcli.settings import from_dict

    data = load_weights(entry, path)
    model = DRAW(**data["model_config"])
    model.load_state_dict(data["model"])
    return model.to(device).eval(), from_dict(data["settings"]), data


def export_weights(ckpt: dict, path: Path, extra: dict | None = None) -> str:
    """Write a checkpoint's weights (float32, no optimizer or RNG state) as a built-in model file;
    returns its sha256. The training machine's folders (data.data_dir, run.runs_dir) are left out
    of the settings: they mean nothing where the package is installed."""
    import copy

    import torch

    from drawcli.core.files import replace_atomically

    settings = copy.deepcopy(ckpt["settings"])
    settings.get("data", {}).pop("data_dir", None)
    settings.get("run", {}).pop("runs_dir", None)
    data = {
        "format": WEIGHTS_FORMAT,
        "format_version": 1,
        "model_config": dict(ckpt["model_config"]),
        "model": {k: v.detach().to("cpu", torch.float32).contiguous() for k, v in ckpt["model"].items()},
        "settings": settings,
        "epoch": int(ckpt["epoch"]),
        "step": int(ckpt["step"]),
        **(extra or {}),
    }
    replace_atomically(Path(path), lambda tmp: torch.save(data, tmp), what="weights ")
    return sha256_of(Path(path))
