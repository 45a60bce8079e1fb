"""Trained models that ship inside the package: ``draw animate @mnist`` draws with no data and no training.

Each model is a model folder in ``drawcli/runs/weights/NAME/`` (drawcli/runs/folder.py: config.json,
model.safetensors, README.md), verified against the sha256s recorded here before it is opened and
read with no pickle at all. The registry is pure data: listing the models (``draw models``) imports
no torch.
"""

from __future__ import annotations

import difflib
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

    from drawcli.model import DRAW
    from drawcli.runs.folder import FolderConfig
    from drawcli.settings import Settings

import hashlib
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

from drawcli.core.errors import DrawError
from drawcli.runs.checkpoint import WEIGHTS_FORMAT
from drawcli.runs.folder import CONFIG, WEIGHTS

PREFIX = "@"


@dataclass(frozen=True)
class BuiltinModel:
    name: str  # written @NAME on the command line
    folder: str  # under drawcli/runs/weights/
    sha256: str  # of its model.safetensors
    config_sha256: str  # of its config.json
    description: str
    dataset: str
    model: dict  # DRAW constructor arguments
    trained: str  # how: recipe, epochs, machine
    results: dict = field(default_factory=dict)  # measured numbers, nats per image, with how they were measured
    training: dict | None = None  # its whole history, as config.json's "training" (drawcli/runs/folder.py)
    measured: tuple = ()  # the model card's results: {what, nats, stderr, images, samples, command}


_MNIST_RECIPE = "draw train --config sample_configs/mnist_reproduce.yaml"
_MNIST_EVAL = "draw evaluate runs/mnist-cycle4/checkpoints/epoch_065.pt"

# One entry per folder in drawcli/runs/weights/, written with write_builtin() from a run's checkpoint (see
# docs/pictures.md); every number in an entry was measured on those weights.
BUILTINS: dict[str, BuiltinModel] = {
    "mnist": BuiltinModel(
        name="mnist",
        folder="mnist",
        sha256="c38272f7826fb7f8f4f369ba572858b87c6d1ad09777410fbc21ad941687d30d",
        config_sha256="c4e0ba18dfe9da001b2177af644f07baa8d69eb9088c797684b9898e06ce9a00",
        description="DRAW with attention on MNIST, the paper's Table 3 model (the reproduction run's last epoch)",
        dataset="mnist",
        model=dict(height=28, width=28, glimpses=64, hidden=256, latent=100, attention=True, read_n=2, write_n=5, channels=1),
        trained="400 epochs in four cycles (160 + 90 + 85 + 65), 11.4 h on a 2-core Intel Xeon: "
                "sample_configs/mnist_reproduce.yaml, each cycle from the last one's weights (docs/results.md)",
        results={
            "test ELBO (all 10k, K=1)": 80.94,
            "test IWAE bound (all 10k, K=100)": 79.20,
            "test ELBO (first 500, K=1)": 78.90,
            "last-epoch test loss during training": 80.78,
        },
        training={"epochs": 400, "steps": 375200, "cycles": [
            {"run": "mnist-long", "epochs": 160, "steps": 150080,
             "command": f"{_MNIST_RECIPE} --epochs 160 --set train.decay_start=130 --set train.decay_epochs=30"},
            {"run": "mnist-cycle2", "epochs": 90, "steps": 84420, "init_from": "mnist-long's epoch 160 (@mnist of commit e1f5067)",
             "command": f"{_MNIST_RECIPE} --init-from mnist-cycle1.pt --epochs 90 --set train.decay_start=15 --set train.decay_epochs=75"},
            {"run": "mnist-cycle3", "epochs": 85, "steps": 79730, "init_from": "mnist-cycle2's epoch 90 (@mnist of commit 282a712)",
             "command": f"{_MNIST_RECIPE} --init-from mnist-cycle2.pt --epochs 85 --set train.lr=5e-4 --set train.decay_start=10 "
                        "--set train.decay_epochs=75"},
            {"run": "mnist-cycle4", "epochs": 65, "steps": 60970, "init_from": "mnist-cycle3's epoch 85 (@mnist of commit 62aac9f)",
             "command": f"{_MNIST_RECIPE} --init-from mnist-cycle3.pt --epochs 65 --set train.lr=2.5e-4 --set train.decay_start=5 "
                        "--set train.decay_epochs=60"},
        ]},
        measured=(
            {"what": "ELBO", "nats": 80.9360, "stderr": 0.2151, "images": 10000, "samples": 1, "command": f"{_MNIST_EVAL} --samples 1"},
            {"what": "IWAE bound", "nats": 79.2025, "stderr": 0.1978, "images": 10000, "samples": 100,
             "command": f"{_MNIST_EVAL} --samples 100"},
            {"what": "IWAE bound (first 1000)", "nats": 77.6129, "stderr": 0.6387, "images": 1000, "samples": 1000,
             "command": f"{_MNIST_EVAL} --samples 1000 --limit 1000"},
            {"what": "ELBO (first 500)", "nats": 78.9033, "stderr": 0.9948, "images": 500, "samples": 1,
             "command": f"{_MNIST_EVAL} --samples 1 --limit 500"},
        ),
    ),
}

# The figure the regression test holds the bundled model to: `draw evaluate @mnist --samples 1 --limit 500`
# (the fixed binarisation of seed 0, posterior noise of seed 1) measured 78.90 on these weights.
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


def folder_path(entry: BuiltinModel) -> Path:
    """The model folder of a built-in model, inside the installed package."""
    return Path(str(resources.files("drawcli.runs") / "weights" / entry.folder))


def sha256_of(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def verified_folder(entry: BuiltinModel, folder: Path | None = None) -> Path:
    """The model folder, after checking that its config.json and model.safetensors are there and
    have the recorded sha256s."""
    folder = folder or folder_path(entry)
    for name, want in ((CONFIG, entry.config_sha256), (WEIGHTS, entry.sha256)):
        path = folder / name
        try:
            digest = sha256_of(path)
        except FileNotFoundError:
            raise DrawError(f"built-in model {PREFIX}{entry.name}: {path} is missing from this installation; reinstall drawcli") from None
        except OSError as e:
            raise DrawError(f"built-in model {PREFIX}{entry.name}: cannot read {path}: {e.strerror or e}") from None
        if digest != want:
            raise DrawError(
                f"built-in model {PREFIX}{entry.name}: {path} is corrupt (sha256 {digest[:16]}..., expected "
                f"{want[:16]}...); reinstall drawcli"
            )
    return folder


def build(entry: BuiltinModel, device: torch.device | str, folder: Path | None = None) -> tuple[DRAW, Settings, FolderConfig]:
    """(model in eval mode on ``device``, settings, its config.json) for a built-in model; no pickle is read."""
    from drawcli.runs.pretrained import load_folder

    try:
        model, config = load_folder(verified_folder(entry, folder), device)
    except DrawError as e:  # the sha256s matched: a drawcli that cannot read its own files
        if str(e).startswith(f"built-in model {PREFIX}"):
            raise
        raise DrawError(f"built-in model {PREFIX}{entry.name}: {e}") from None
    return model, config.settings, config


def write_builtin(entry: BuiltinModel, ckpt: dict, folder: Path, force: bool = False) -> tuple[str, str]:
    """Write a built-in model's folder from a checkpoint (or weights file) dict: its settings, the
    entry's training history and measured numbers in config.json and the card. Returns the sha256s
    of (model.safetensors, config.json) to record in the entry."""
    from drawcli.runs.pretrained import save_folder

    name = PREFIX + entry.name
    digest = save_folder(
        Path(folder), ckpt["model_config"], ckpt["model"], settings=ckpt["settings"], training=entry.training,
        results=list(entry.measured), name=name, force=force,
        note=f"{entry.description}. Built into drawcli as `{name}`: {entry.trained}. The numbers were measured on the "
             "checkpoint these weights were exported from (the same weights: `draw evaluate "
             f"{name}` gives the same numbers).",
        loads=[f'drawer = drawcli.load("{name}")    # built in; or the path of this folder'],
    )
    return digest, sha256_of(Path(folder) / CONFIG)


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
