"""The checkpoint format: writing, reading, validating, and rebuilding the model from it.

Plain types and tensors only, written atomically, loaded weights-only. What
:func:`make_checkpoint` writes today is a dict:

  format: "drawcli-checkpoint", format_version: 2, package_version: str (drawcli's version),
  model_config: DRAW constructor arguments (height, width, glimpses, hidden, latent, attention,
      read_n, write_n, and channels; files written before colour support lack channels: 1; format 1
      said steps and embed for glimpses and latent, read as today's names),
  model: state_dict (CPU tensors), optimizer: Adam state_dict,
  epoch: int, epoch_images: int, step: int (global optimizer steps),
  settings: Settings.to_dict(), rng: {"data": uint8 tensor, "noise": uint8 tensor}
      (the binarisation and posterior-noise generator states),
  metrics: {"lx", "lz", "loss"}: floats (the last evaluation), best_loss: float | None.

epoch_images 0: ``epoch`` epochs are complete. epoch_images > 0: epoch ``epoch`` is in progress
(an interrupt or --max-steps) and that many of its images have been trained on. Readers accept
files written before epoch_images existed (placed by their step count) and files without
optimizer or rng (enough to sample and evaluate, not to resume).

This module imports torch only inside the functions that need it: run lookups stay fast.
"""

from __future__ import annotations

import os
import pickle
import re
import shutil
import warnings
import zipfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

    from drawcli.model import DRAW

from drawcli.core.errors import DrawError
from drawcli.core.files import replace_atomically
from drawcli.core.version import __version__
from drawcli.settings import Settings, apply_overrides, check_against_image, from_dict, model_arguments, spell

FORMAT = "drawcli-checkpoint"
FORMAT_VERSION = 2  # 2: model_config says glimpses and latent (1: steps and embed; still read)
# Weights files (drawcli/runs/builtin.py's export_weights, `draw export NAME.pt`): weights, settings, epoch and
# step, without optimizer or random state. They load, draw and evaluate as checkpoints do, and start
# runs (train.init_from), but cannot be resumed.
WEIGHTS_FORMAT = "drawcli-weights"


def atomic_save(obj: Any, path: Path) -> None:
    """torch.save through a temp file, fsync and os.replace (see files.replace_atomically)."""
    import torch

    replace_atomically(path, lambda tmp: torch.save(obj, tmp), what="checkpoint ")


def atomic_link(src: Path, dst: Path) -> None:
    """Make dst hold src's checkpoint without another copy on disk where possible (hard link)."""

    def link(tmp: Path) -> None:
        try:
            os.link(src, tmp)
        except OSError:
            shutil.copyfile(src, tmp)

    replace_atomically(dst, link, what="checkpoint ")


_ZIP_MAGIC = b"PK\x03\x04"  # torch.save has written zip archives since PyTorch 1.6
MODEL_KEYS = ("glimpses", "hidden", "latent", "attention", "read_n", "write_n")  # model_config beyond height, width


def _first_sentence(e: BaseException) -> str:
    if isinstance(e, OSError) and e.strerror:
        return e.strerror
    text = str(e).strip()
    if not text:
        return type(e).__name__
    return text.splitlines()[0].split(". ")[0][:160]


def _refusal(e: pickle.UnpicklingError) -> str:
    """What torch's weights-only unpickler refused, without its advice to turn the check off."""
    text = str(e)
    found = re.search(r"GLOBAL ([\w.]+)", text)
    if found:
        return f"the checkpoint holds Python objects, not only tensors and plain data ({found.group(1)})"
    found = re.search(r"Unsupported operand \d+", text)
    return f"its pickle is not plain data ({found.group(0) if found else 'unsupported content'})"


def load(path: Path, map_location: str = "cpu", weights: bool = False) -> dict:
    """Load and sanity-check a drawcli checkpoint; any problem is a one-line DrawError.
    ``weights``: a weights file (WEIGHTS_FORMAT, no optimizer state) is accepted too, for uses that
    need only the model; without it, one is refused with a line saying what it can do.

    Only zip-format PyTorch files are opened, and only with ``weights_only=True``: a file
    that would run code when unpickled is refused before anything in it runs. Then the
    contents are checked against each other (weights against model_config, model_config
    against the saved settings, optimizer state against the weights), so no later step
    meets a shape it did not expect.
    """
    import torch

    path = Path(path)
    if not path.is_file():
        raise DrawError(f"checkpoint not found: {path}")
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            head = f.read(4)
    except OSError as e:
        raise DrawError(f"cannot read checkpoint {path}: {e.strerror or e}") from None
    if size == 0:
        raise DrawError(f"{path}: checkpoint is empty (0 bytes)")
    if head != _ZIP_MAGIC:
        if head[:1] == b"\x80":  # pickle protocol 2+: a bare pickle or a pre-1.6 torch file
            raise DrawError(
                f"{path}: refused to load: a bare pickle, not a drawcli checkpoint "
                "(pickles can run code; drawcli reads only the zip checkpoints it writes)"
            )
        raise DrawError(f"{path}: not a drawcli checkpoint (not a PyTorch zip file; it starts with {head.hex()})")
    # The zip's own CRCs catch truncation and flipped bits, which torch.load does not check.
    try:
        with zipfile.ZipFile(path) as archive:
            bad = archive.testzip()
    except (zipfile.BadZipFile, OSError, EOFError, ValueError, NotImplementedError) as e:
        raise DrawError(f"{path}: not a readable checkpoint (truncated or corrupt?): {_first_sentence(e)}") from None
    if bad is not None:
        raise DrawError(f"{path}: not a readable checkpoint (corrupt: {bad} fails its CRC check)")
    try:
        with warnings.catch_warnings():  # torch's warnings would be extra lines around the one error
            warnings.simplefilter("ignore")
            ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as e:
        # weights_only refuses anything but plain types and tensors: a crafted pickle lands here.
        raise DrawError(f"{path}: refused to load: {_refusal(e)}; drawcli never runs code from a file") from None
    except (RuntimeError, EOFError, OSError, ValueError, zipfile.BadZipFile, KeyError, IndexError, TypeError) as e:
        raise DrawError(f"{path}: not a readable checkpoint (truncated or corrupt?): {_first_sentence(e)}") from None
    if not isinstance(ckpt, dict):
        raise DrawError(f"{path}: not a drawcli checkpoint (a {type(ckpt).__name__}, not a dict)")
    if ckpt.get("format") == WEIGHTS_FORMAT and not weights:
        raise DrawError(
            f"{path}: a weights file (no optimizer or random state): it draws, evaluates and starts a new run "
            "(--init-from), but cannot be resumed"
        )
    if ckpt.get("format") not in (FORMAT, WEIGHTS_FORMAT):
        keys = ", ".join(sorted(map(str, ckpt)))
        keys = keys if len(keys) <= 120 else keys[:117] + "..."
        raise DrawError(f"{path}: not a drawcli checkpoint (no format {FORMAT!r} in it; its keys: {keys or 'none'})")
    version = ckpt.get("format_version")
    if isinstance(version, int) and version > FORMAT_VERSION:
        raise DrawError(
            f"{path}: written by a newer drawcli ({ckpt.get('package_version', '?')}, checkpoint format {version}); "
            f"this one reads format {FORMAT_VERSION}: upgrade drawcli"
        )
    for key in ("model_config", "model", "settings", "epoch", "step"):
        if key not in ckpt:
            raise DrawError(f"{path}: checkpoint lacks {key!r}")
    try:
        _check_contents(ckpt)
    except DrawError as e:
        raise DrawError(f"{path}: {e}") from None
    return ckpt


def _shape(t) -> str:
    return "(" + ", ".join(map(str, t.shape)) + ")"


def _check_contents(ckpt: dict) -> None:
    """The parts of a checkpoint agree with each other; a DrawError (without the path) if not."""
    import torch

    for key in ("epoch", "step", "epoch_images"):
        if key not in ckpt:
            continue  # epoch_images: absent in checkpoints written before it existed
        value = ckpt[key]
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise DrawError(f"{key} must be a whole number >= 0, got {spell(value)}")

    cfg = ckpt["model_config"]
    if isinstance(cfg, dict):  # checkpoints written before the rename say steps and embed: read as today's names
        from drawcli.model.draw import canonical_config

        try:
            cfg = ckpt["model_config"] = canonical_config(cfg)
        except ValueError as e:
            raise DrawError(f"model_config: {e}") from None
    # channels is optional: checkpoints written before colour support are one-channel.
    if not isinstance(cfg, dict) or set(cfg) - {"channels"} != {"height", "width", *MODEL_KEYS}:
        got = sorted(map(str, cfg)) if isinstance(cfg, dict) else type(cfg).__name__
        raise DrawError(f"model_config must hold height, width, {', '.join(MODEL_KEYS)} (and channels); got {got}")
    for key in ("height", "width", "channels"):
        if key not in cfg:
            continue
        if isinstance(cfg[key], bool) or not isinstance(cfg[key], int) or cfg[key] < 1:
            raise DrawError(f"model_config: {key} must be a whole number >= 1, got {spell(cfg[key])}")
    # The same rules as for settings: types and ranges of glimpses, hidden, latent, ..., and windows no
    # wider than the image.
    model = apply_overrides(Settings(), {"model": {k: cfg[k] for k in MODEL_KEYS}}, origin="model_config: ", together=False)
    check_against_image(model, cfg["height"], cfg["width"], origin=lambda key: "model_config: ")

    if not isinstance(ckpt["settings"], dict):
        raise DrawError(f"settings must be a mapping, got {type(ckpt['settings']).__name__}")
    saved = model_arguments(from_dict(ckpt["settings"]).model)
    for key in MODEL_KEYS:
        if saved[key] != cfg[key]:
            raise DrawError(
                f"model_config ({key}={spell(cfg[key])}) disagrees with its saved settings "
                f"(model.{key}={spell(saved[key])}): the file was altered or is corrupt"
            )

    weights = ckpt["model"]
    if not isinstance(weights, dict) or not all(isinstance(v, torch.Tensor) for v in weights.values()):
        raise DrawError("model must be a mapping of names to tensors")
    from drawcli.runs.pretrained import weights_mismatch

    problem = weights_mismatch(cfg, weights)
    if problem and problem.startswith("it does not describe"):
        raise DrawError(f"model_config does not describe a DRAW model: {problem.split(': ', 1)[1]}")
    if problem:
        describe = ", ".join(f"{k}={cfg[k]}" for k in MODEL_KEYS)
        raise DrawError(f"model weights do not match its model_config ({describe}): {problem}")

    optimizer = ckpt.get("optimizer")
    if optimizer is not None:
        _check_optimizer(optimizer, _parameters(cfg))
    rng = ckpt.get("rng")
    if rng is not None and (
        not isinstance(rng, dict)
        or not all(isinstance(v, torch.Tensor) and v.dtype == torch.uint8 and v.dim() == 1 for v in rng.values())
    ):
        raise DrawError("rng must be a mapping of names to generator states (1-D uint8 tensors)")
    metrics = ckpt.get("metrics")
    if metrics is not None and (
        not isinstance(metrics, dict)
        or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in metrics.values())
    ):
        raise DrawError("metrics must be a mapping of names to numbers")
    best = ckpt.get("best_loss")
    if best is not None and (isinstance(best, bool) or not isinstance(best, (int, float))):
        raise DrawError(f"best_loss must be a number, got {spell(best)}")


def _parameters(cfg: dict) -> list:
    """The parameters of DRAW(**cfg), in order (shapes only where the meta device allows)."""
    import torch

    from drawcli.model import DRAW

    try:
        with torch.device("meta"):
            return list(DRAW(**cfg).parameters())
    except Exception:  # noqa: BLE001 - an __init__ that needs real tensors: build it for real
        return list(DRAW(**cfg).parameters())


def _check_optimizer(optimizer, params) -> None:
    """An Adam state_dict whose per-parameter state fits the model's parameters, in order."""
    import torch

    groups = optimizer.get("param_groups") if isinstance(optimizer, dict) else None
    state = optimizer.get("state") if isinstance(optimizer, dict) else None
    if not isinstance(groups, list) or not isinstance(state, dict) or not all(
        isinstance(g, dict) and isinstance(g.get("params"), list) for g in groups
    ):
        raise DrawError("optimizer must be an optimizer state_dict (state, param_groups)")
    ids = [i for g in groups for i in g["params"]]
    if len(ids) != len(params):
        raise DrawError(f"optimizer state is for {len(ids)} parameter tensors, the model has {len(params)}")
    if len(groups) != 1:
        return  # several groups need not follow model.parameters() order: torch checks the rest
    for i, param in zip(ids, params):
        for name, value in (state.get(i) or {}).items():
            if isinstance(value, torch.Tensor) and value.dim() > 0 and value.shape != param.shape:
                raise DrawError(
                    f"optimizer state does not match the model: {name} of parameter {i} is "
                    f"{_shape(value)}, expected {_shape(param)}"
                )


# ----------------------------------------------------------------------------- writing and rebuilding
def build_model(settings: Settings, height: int, width: int, channels: int = 1) -> DRAW:
    """A fresh DRAW for ``settings`` (settings.model_arguments maps the settings' names to DRAW's); the
    image shape comes from the data. (drawcli.DRAW: the model with from_pretrained and save_pretrained.)"""
    from drawcli.runs.pretrained import make_model

    return make_model(height=height, width=width, channels=channels, **model_arguments(settings.model))


def model_from_checkpoint(ckpt: dict, device: torch.device | str) -> DRAW:
    """Rebuild the model a checkpoint describes and load its weights."""
    from drawcli.runs.pretrained import make_model

    try:
        model = make_model(**ckpt["model_config"])
        model.load_state_dict(ckpt["model"])
    except (TypeError, RuntimeError, KeyError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise DrawError(f"checkpoint does not match the DRAW model it describes: {first[:200]}") from None
    return model.to(device)


def rng_state(data_gen: torch.Generator, noise_gen: torch.Generator) -> dict:
    """The generator states a checkpoint carries: binarisation ("data") and posterior noise ("noise")."""
    return {"data": data_gen.get_state(), "noise": noise_gen.get_state()}


def make_checkpoint(
    model, optimizer, settings: Settings, epoch: int, step: int, rng: dict, metrics: dict, best_loss: float | None,
    epoch_images: int = 0,
) -> dict[str, Any]:
    """The checkpoint dict described at the top of this module.

    ``epoch_images`` 0: ``epoch`` epochs are complete; > 0: epoch ``epoch`` is in progress and
    that many of its images (in its seeded order) have been trained on.
    """
    return {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "package_version": __version__,
        "model_config": model.config(),
        "model": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        "optimizer": optimizer.state_dict(),
        "epoch": epoch,
        "epoch_images": epoch_images,
        "step": step,
        "settings": settings.to_dict(),
        "rng": {k: v.cpu() for k, v in rng.items()},
        "metrics": {k: float(v) for k, v in metrics.items()},
        "best_loss": None if best_loss is None else float(best_loss),
    }
