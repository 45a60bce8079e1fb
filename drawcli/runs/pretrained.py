"""``PretrainedDRAW``, public as ``drawcli.DRAW``: the model with ``from_pretrained``,
``save_pretrained`` and ``push_to_hub``, and the loading and writing of model folders
(drawcli/runs/folder.py) with their weights.

drawcli/model/draw.py is the paper and does no I/O, so the methods that read and write live here, in
a subclass that adds nothing else: every model drawcli builds (``drawcli.load``, ``create_model``,
training) is this class, and it is a ``drawcli.model.DRAW`` all the same. Local folders need
nothing more than drawcli; a Hugging Face Hub repository (``owner/name`` or ``hf:owner/name``) needs
the ``hub`` extra (``pip install "drawcli[hub]"``, huggingface_hub), imported only when used.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from drawcli.core.errors import DrawError
from drawcli.model.draw import DRAW
from drawcli.runs import folder as folders
from drawcli.runs import hub, safetensors

if TYPE_CHECKING:
    import torch

class PretrainedDRAW(DRAW):
    """DRAW (drawcli/model/draw.py) that saves to and loads from a model folder or the Hugging Face Hub."""

    @classmethod
    def from_pretrained(cls, source: str | Path, *, revision: str | None = None, device: str = "cpu") -> PretrainedDRAW:
        """The model in a model folder (config.json + model.safetensors), or in a Hub repository
        (``"owner/name"`` or ``"hf:owner/name"``; needs the ``hub`` extra), in eval mode on ``device``."""
        model, _ = load_folder(resolve_source(source, revision), device, cls)
        return model

    def save_pretrained(self, folder: str | Path, *, settings: dict | None = None, training: dict | None = None,
                        force: bool = False) -> Path:
        """Write this model as a model folder (atomically; ``force`` replaces an existing model folder).
        ``settings`` (a Settings.to_dict(): the data set, the training settings) and ``training``
        (its history: {epochs, steps, cycles}) go into config.json and the card when given."""
        save_folder(Path(folder), self.config(), self.state_dict(), settings=settings, training=training, force=force)
        return Path(folder)

    def push_to_hub(self, repo_id: str, *, settings: dict | None = None, training: dict | None = None,
                    private: bool | None = None, token: str | None = None, commit_message: str = "Upload DRAW model"):
        """Upload this model's folder to a Hub repository (created when missing); needs the ``hub``
        extra and a token (``hf auth login``). Returns what huggingface_hub's upload returns."""
        return hub.push_folder(repo_id, lambda tmp: self.save_pretrained(tmp, settings=settings, training=training),
                           private=private, token=token, commit_message=commit_message)


def make_model(**config: Any) -> PretrainedDRAW:
    """A fresh model from DRAW's constructor arguments (the one place drawcli builds one; older names read)."""
    from drawcli.model.draw import canonical_config

    return PretrainedDRAW(**canonical_config(config))


# ----------------------------------------------------------------------------- weights against a model
def weights_mismatch(config: dict, weights: dict) -> str | None:
    """How ``weights`` (name -> tensor) differ from what DRAW(**config) holds, or None when they fit."""
    import torch

    from drawcli.model.draw import canonical_config

    config = canonical_config(config)
    try:
        try:
            with torch.device("meta"):  # shapes only: nothing is allocated
                expected = DRAW(**config)
        except Exception:  # noqa: BLE001 - an __init__ that needs real tensors: build it for real
            expected = DRAW(**config)
    except Exception as e:  # noqa: BLE001 - any failure means the config is unusable
        text = str(e).strip().splitlines()[0][:160] if str(e).strip() else type(e).__name__
        return f"it does not describe a DRAW model: {text}"
    want = expected.state_dict()
    missing = [k for k in want if k not in weights]
    extra = [k for k in weights if k not in want]
    if missing or extra:
        return f"missing {missing[0]}" if missing else f"unexpected {extra[0]}"
    for key, tensor in want.items():
        if weights[key].shape != tensor.shape:
            got, need = ("(" + ", ".join(map(str, t.shape)) + ")" for t in (weights[key], tensor))
            return f"{key} is {got}, expected {need}"
        if not weights[key].is_floating_point():
            return f"{key} is {str(weights[key].dtype).removeprefix('torch.')}, not floating point"
    return None


def describe_model(config: dict) -> str:
    """DRAW's constructor arguments as config.json names them: 'image 1x28x28, glimpses=64, hidden=256, ...'."""
    from drawcli.model.draw import canonical_config
    from drawcli.settings import spell

    config = canonical_config(config)
    keys = ("glimpses", "hidden", "latent", "attention", "read_n", "write_n")
    image = f"image {config.get('channels', 1)}x{config.get('height')}x{config.get('width')}"
    return ", ".join([image] + [f"{k}={spell(config[k])}" for k in keys if k in config])


# ----------------------------------------------------------------------------- model folders
def load_folder(folder: Path, device: torch.device | str = "cpu", cls: type = PretrainedDRAW) -> tuple[PretrainedDRAW, folders.FolderConfig]:
    """(the model in eval mode on ``device``, its checked config) from a model folder. Nothing is unpickled."""
    folder = Path(folder)
    folders.check_folder(folder)
    config = folders.read_config(folder)
    path = folder / folders.WEIGHTS
    tensors, metadata = safetensors.read(path)
    version = metadata.get("format_version", "1")
    if metadata.get("drawcli") == folders.FORMAT and (not version.isdigit() or int(version) > folders.FORMAT_VERSION):
        raise DrawError(f"{path}: written by a newer drawcli (weights format {version}); this one reads format "
                        f"{folders.FORMAT_VERSION}: upgrade drawcli")
    model_config = config.model_config()
    problem = weights_mismatch(model_config, tensors)
    if problem:
        raise DrawError(f"{path}: the weights do not match {config.path} ({describe_model(model_config)}): {problem}")
    model = cls(**model_config)
    model.load_state_dict(tensors)
    return model.to(device).eval(), config


def save_folder(folder: Path, model_config: dict, state_dict: dict, *, settings: dict | None = None,
                training: dict | None = None, results: list[dict] | None = None, name: str | None = None,
                note: str = "", loads: list[str] | None = None, force: bool = False) -> str:
    """Write a model folder atomically (drawcli/runs/folder.py): config.json, the weights in float32 as
    model.safetensors, and the card. Returns the sha256 of model.safetensors."""
    import torch

    config = folders.make_config(model_config, settings, training)
    tensors = {k: (v.detach().to("cpu", torch.float32) if v.is_floating_point() else v.detach().cpu()).contiguous()
               for k, v in state_dict.items()}
    problem = weights_mismatch(model_config, tensors)
    if problem:
        raise DrawError(f"the weights do not match the model ({describe_model(model_config)}): {problem}")
    weights = safetensors.encode(tensors, folders.WEIGHTS_METADATA)
    name = name or Path(folder).resolve().name
    loads = loads or [f'drawer = drawcli.load("path/to/{name}")    # this folder', f'# drawer = drawcli.load("hf:OWNER/{name}")    # once it is on the Hub']
    card = folders.card_text(name, config, results or [], loads, note)

    def write(tmp: Path) -> None:
        (tmp / folders.CONFIG).write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
        (tmp / folders.WEIGHTS).write_bytes(weights)
        (tmp / folders.CARD).write_text(card, encoding="utf-8")

    folders.write_folder(Path(folder), write, force=force)
    return hashlib.sha256(weights).hexdigest()


def resolve_source(source: str | Path, revision: str | None = None) -> Path:
    """A local model folder as it is; ``hf:owner/name`` or ``owner/name`` (not a local path) downloaded."""
    text = str(source)
    if not text.startswith(hub.HUB_PREFIX):
        path = Path(text).expanduser()
        if path.exists():
            folders.check_folder(path)
            return path
        if not hub.REPO_ID.match(text):
            raise DrawError(f"{text}: no such model folder (nor a Hub repository id OWNER/NAME)")
        if not hub.hub_available():
            raise DrawError(f"{text}: no such folder here; to download it from the Hugging Face Hub, {hub.INSTALL_HUB}")
    repo, at = hub.hub_repo(text)
    return hub.download(repo, revision or at)
