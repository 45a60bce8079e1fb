"""Model folders, the way small PyTorch models are shared: ``config.json`` + ``model.safetensors`` + ``README.md``.

    DIR/config.json        what the model is and how it was trained (below), plain JSON
    DIR/model.safetensors  the weights, float32, by state_dict name; metadata: format, format_version
    DIR/README.md          the model card: data set, epochs, test ELBO and IWAE with the commands that
                           measured them (or "not measured"), how to load it, the license

config.json holds ``format`` ("drawcli-model"), ``format_version``, ``package_version``; ``image``
({channels, height, width}); ``model`` (the settings' model section: glimpses, hidden, latent,
attention, read_n, write_n); optionally ``data``, ``train`` and ``run`` (the rest of the settings
it was trained with, without the training machine's folders; missing ones take the defaults) and
``training`` ({epochs, steps, cycles: [{run, epochs, steps, init_from, command}]}: its whole history,
every cycle of a model trained in several runs, each from the last one's weights).

Reading is strict: an unknown key is refused with the nearest valid one, as in a settings file, and
every error is one line naming the file. This module reads and writes the JSON and the card and
writes a folder atomically; the weights are checked and the model built in
drawcli/runs/pretrained.py. No torch here.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, Callable

from drawcli.core.errors import DrawError
from drawcli.core.version import __version__
from drawcli.runs import safetensors
from drawcli.settings import ModelSettings, Settings, _nearest, apply_overrides, check_against_image, spell

CONFIG = "config.json"
WEIGHTS = "model.safetensors"
CARD = "README.md"
FILES = (CONFIG, WEIGHTS, CARD)
FORMAT = "drawcli-model"
FORMAT_VERSION = 1
WEIGHTS_METADATA = {"format": "pt", "drawcli": FORMAT, "format_version": str(FORMAT_VERSION)}  # "pt": what the Hub expects
TOP_KEYS = ("format", "format_version", "package_version", "image", "model", "data", "train", "run", "training")
SECTIONS = ("model", "data", "train", "run")
IMAGE_KEYS = ("channels", "height", "width")
TRAINING_KEYS = ("epochs", "steps", "cycles")
CYCLE_KEYS = ("run", "epochs", "steps", "init_from", "command")
MACHINE_FOLDERS = (("data", "data_dir"), ("run", "runs_dir"))  # mean nothing where the model is used
LICENSE = "MIT"


@dataclass(frozen=True)
class FolderConfig:
    """A checked config.json."""

    path: Path
    settings: Settings
    image: tuple[int, int, int]  # (channels, height, width)
    training: dict | None  # {epochs, steps, cycles} or None

    @property
    def saved_settings(self) -> dict:
        """The settings as plain data, without the machine's folders (as evaluate's JSON records them)."""
        return portable_settings(self.settings.to_dict())

    def model_config(self) -> dict:
        """DRAW's constructor arguments."""
        from drawcli.settings import model_arguments

        c, h, w = self.image
        return dict(height=h, width=w, channels=c, **model_arguments(self.settings.model))

    @property
    def epochs(self) -> int | None:
        return None if self.training is None else self.training["epochs"]

    @property
    def steps(self) -> int | None:
        return None if self.training is None else self.training["steps"]


def is_model_folder(path: Path) -> bool:
    """A folder with a config.json (a run directory has config.yaml instead)."""
    return path.is_dir() and (path / CONFIG).is_file()


def check_folder(path: Path) -> None:
    """The files a model folder needs are there (no torch, no reading): one line if not."""
    for name in (CONFIG, WEIGHTS):
        if not (path / name).is_file():
            raise DrawError(f"{path} is not a model folder: it has no {name}")


def portable_settings(settings: dict) -> dict:
    """A settings dict without the training machine's folders (data.data_dir, run.runs_dir)."""
    out = {section: dict(values) for section, values in settings.items() if isinstance(values, dict)}
    for section, key in MACHINE_FOLDERS:
        out.get(section, {}).pop(key, None)
    return out


# ----------------------------------------------------------------------------- reading config.json


def _count(where: str, value: Any, low: int = 0) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise DrawError(f"{where}: expected a whole number >= {low}, got {spell(value)}")
    return value


def _keys(where: str, value: Any, valid: tuple[str, ...], required: tuple[str, ...] = ()) -> dict:
    if not isinstance(value, dict):
        raise DrawError(f"{where}: expected a mapping, got {spell(value)}")
    for key in value:
        if key not in valid:
            raise DrawError(f"{where + '.' if where else ''}{key}: unknown key{_nearest(str(key), list(valid))}")
    for key in required:
        if key not in value:
            raise DrawError(f"{where + '.' if where else ''}{key}: missing")
    return value


def check_training(training: Any) -> dict:
    """The ``training`` block: its totals are the sums over its cycles."""
    _keys("training", training, TRAINING_KEYS, TRAINING_KEYS)
    epochs, steps = _count("training.epochs", training["epochs"]), _count("training.steps", training["steps"])
    cycles = training["cycles"]
    if not isinstance(cycles, list) or not cycles:
        raise DrawError(f"training.cycles: expected a list of at least one cycle, got {spell(cycles)}")
    for i, cycle in enumerate(cycles):
        where = f"training.cycles[{i}]"
        _keys(where, cycle, CYCLE_KEYS, ("run", "epochs", "steps"))
        _count(f"{where}.epochs", cycle["epochs"])
        _count(f"{where}.steps", cycle["steps"])
        for key in ("run", "init_from", "command"):
            if key in cycle and cycle[key] is not None and not isinstance(cycle[key], str):
                raise DrawError(f"{where}.{key}: expected a string, got {spell(cycle[key])}")
    for key, total in (("epochs", epochs), ("steps", steps)):
        summed = sum(c[key] for c in cycles)
        if summed != total:
            raise DrawError(f"training.{key} is {total}, but its cycles add up to {summed}")
    return training


def parse_config(data: Any) -> tuple[Settings, tuple[int, int, int], dict | None]:
    """Check a config.json's contents; a DrawError without the path."""
    _keys("", data, TOP_KEYS, ("format", "format_version", "image", "model"))
    if data["format"] != FORMAT:
        raise DrawError(f"format: expected {FORMAT!r}, got {spell(data['format'])}")
    version = _count("format_version", data["format_version"], 1)
    if version > FORMAT_VERSION:
        raise DrawError(f"written by a newer drawcli ({data.get('package_version', '?')}, model folder format {version}); "
                        f"this one reads format {FORMAT_VERSION}: upgrade drawcli")
    image = _keys("image", data["image"], IMAGE_KEYS, IMAGE_KEYS)
    c, h, w = (_count(f"image.{key}", image[key], 1) for key in IMAGE_KEYS)
    sections = {section: data[section] for section in SECTIONS if section in data}
    for section, key in MACHINE_FOLDERS:
        if isinstance(sections.get(section), dict) and key in sections[section]:
            raise DrawError(f"{section}.{key}: a training machine's folder does not belong in a model folder")
    names = tuple(f.name for f in fields(ModelSettings))
    _keys("model", data["model"], names, names)  # every key, by its settings name; the values are checked below
    settings = apply_overrides(Settings(), sections)
    check_against_image(settings, h, w)
    training = check_training(data["training"]) if data.get("training") is not None else None
    return settings, (c, h, w), training


def read_config(folder: Path) -> FolderConfig:
    """A model folder's config.json, checked: one DrawError line naming the file when it is not right."""
    path = Path(folder) / CONFIG
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise DrawError(f"{Path(folder)} is not a model folder: it has no {CONFIG}") from None
    except UnicodeDecodeError:
        raise DrawError(f"{path}: not UTF-8 text") from None
    except OSError as e:
        raise DrawError(f"cannot read {path}: {e.strerror or e}") from None
    try:
        data = json.loads(text, object_pairs_hook=safetensors.refuse_duplicates("{key} is given twice"))
    except json.JSONDecodeError as e:
        raise DrawError(f"{path}: not valid JSON ({e.msg}, line {e.lineno} column {e.colno})") from None
    except DrawError as e:
        raise DrawError(f"{path}: {e}") from None
    try:
        settings, image, training = parse_config(data)
    except DrawError as e:
        raise DrawError(f"{path}: {e}") from None
    return FolderConfig(path, settings, image, training)


# ----------------------------------------------------------------------------- writing
def make_config(model_config: dict, settings: dict | None = None, training: dict | None = None) -> dict:
    """config.json's contents for a model (DRAW's constructor arguments), the settings it was trained
    with (a Settings.to_dict(); None: only the model's own) and its training history (or None)."""
    from drawcli.model.draw import canonical_config

    model_config = canonical_config(model_config)
    model = {key: model_config[key] for key in ("glimpses", "hidden", "latent", "attention", "read_n", "write_n")}
    out: dict[str, Any] = {"format": FORMAT, "format_version": FORMAT_VERSION, "package_version": __version__,
                           "image": {"channels": model_config.get("channels", 1), "height": model_config["height"],
                                     "width": model_config["width"]},
                           "model": model}
    if settings is not None:
        saved = portable_settings(settings)
        trained = apply_overrides(Settings(), {"model": saved.get("model", {})}).model
        if trained != apply_overrides(Settings(), {"model": model}).model:
            raise DrawError(f"the settings' model section ({saved.get('model')}) is not the model's ({model})")
        out.update({section: saved[section] for section in ("data", "train", "run") if section in saved})
    if training is not None:
        out["training"] = check_training(training)
    parse_config(json.loads(json.dumps(out)))  # what is written reads back
    return out


def one_cycle(run: str, epoch: int, step: int, init_from: str | None = None) -> dict:
    """The training history of a model trained in one run."""
    cycle = {"run": run, "epochs": int(epoch), "steps": int(step)}
    if init_from:
        cycle["init_from"] = init_from
    return {"epochs": int(epoch), "steps": int(step), "cycles": [cycle]}


def describe_training(training: dict | None, epoch: int, step: int) -> str:
    """How long it trained, for messages: 'epoch 12, step 5628', or for several cycles '400 epochs in
    4 cycles: 160 + 90 + 85 + 65, 375200 steps'."""
    if training is None or len(training["cycles"]) < 2:
        return f"epoch {epoch}, step {step}"
    cycles = training["cycles"]
    return (f"{training['epochs']} epochs in {len(cycles)} cycles: {' + '.join(str(c['epochs']) for c in cycles)}, "
            f"{training['steps']} steps")


def write_folder(out: Path, write: Callable[[Path], None], force: bool = False) -> None:
    """Make the model folder ``out`` atomically: ``write(tmp)`` fills a temporary folder beside it,
    every file is fsynced, and the folder is renamed into place. With ``force`` an existing model
    folder (one holding nothing but config.json, model.safetensors and README.md) is replaced; any
    other existing folder is refused, so that --force never deletes files of yours."""
    out = Path(out)
    parent = out.parent
    if out.exists() or out.is_symlink():
        if not out.is_dir() or out.is_symlink():
            raise DrawError(f"{out} exists and is not a folder")
        others = sorted(p.name for p in out.iterdir() if p.name not in FILES)
        if others:
            raise DrawError(f"{out} holds other files than a model folder's ({', '.join(others[:3])}); not replaced")
        if any(out.iterdir()) and not force:
            raise DrawError(f"{out} exists; use --force to replace it")
    if not parent.is_dir():
        raise DrawError(f"{parent}: no such folder")
    tmp = parent / f".{out.name}.tmp{os.getpid()}"
    old = parent / f".{out.name}.old{os.getpid()}"
    try:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
        write(tmp)
        for path in tmp.iterdir():
            with open(path, "rb") as f:
                os.fsync(f.fileno())
        moved = False
        if out.exists():
            os.rename(out, old)
            moved = True
        try:
            os.rename(tmp, out)
        except OSError:
            if moved:
                os.rename(old, out)
            raise
        _fsync_dir(parent)
        shutil.rmtree(old, ignore_errors=True)
    except BaseException as e:
        shutil.rmtree(tmp, ignore_errors=True)
        if isinstance(e, OSError):
            raise DrawError(f"cannot write the model folder {out}: {e.strerror or e} (the previous one, if any, is unchanged)") from None
        raise


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


# ----------------------------------------------------------------------------- the model card
def _nats(value: float, stderr: float | None) -> str:
    return f"{value:.2f} ± {stderr:.2f}" if isinstance(stderr, (int, float)) else f"{value:.2f}"


def card_text(name: str, config: dict, results: list[dict], loads: list[str], note: str = "") -> str:
    """README.md of a model folder. ``results``: {what, nats, stderr, images, samples, command} per
    measured number (the test ELBO and IWAE first); a bound with none is said to be not measured.
    ``loads``: how to load it (Python lines); ``note``: a paragraph about where it comes from."""
    model, image = config["model"], config["image"]
    dataset = config.get("data", {}).get("dataset")
    attention = (f"read {model['read_n']}×{model['read_n']}, write {model['write_n']}×{model['write_n']}"
                 if model["attention"] else "no attention")
    front = ["---", "library_name: drawcli", f"license: {LICENSE.lower()}", "tags:", "- draw", "- vae", "- generative"]
    if dataset and not dataset.startswith("folder:"):
        front += ["datasets:", f"- {dataset}"]
    front.append("---")
    lines = [*front, "", f"# {name}", "",
             f"DRAW (Gregor et al., ICML 2015, arXiv 1502.04623), trained with drawcli "
             f"{config.get('package_version', '')}: {model['glimpses']} glimpses, LSTM {model['hidden']}, latent {model['latent']}, "
             f"{attention}, for {image['channels']}×{image['height']}×{image['width']} images.", ""]
    if note:
        lines += [note, ""]
    lines += ["## Training", "", f"- data set: {'`' + dataset + '`' if dataset else 'not recorded'}"
              + (f", binarisation `{config['data'].get('binarize')}`" if dataset and config["data"].get("binarize") else "")]
    training = config.get("training")
    if training is None:
        lines.append("- epochs: not recorded")
    else:
        cycles = training["cycles"]
        if len(cycles) == 1:
            lines.append(f"- epochs: {training['epochs']} ({training['steps']} optimizer steps), run `{cycles[0]['run']}`"
                         + (f", started from the weights of `{cycles[0]['init_from']}`" if cycles[0].get("init_from") else ""))
        else:
            lines.append(f"- epochs: {training['epochs']} in {len(cycles)} cycles, each starting from the last one's weights "
                         f"with a fresh optimizer and learning-rate schedule ({training['steps']} optimizer steps in all):")
            for i, c in enumerate(cycles, 1):
                lines.append(f"  {i}. `{c['run']}`: {c['epochs']} epochs, {c['steps']} steps"
                             + (f"; `{c['command']}`" if c.get("command") else ""))
    train = config.get("train")
    if train:
        last = "the last cycle's settings: " if training is not None and len(training["cycles"]) > 1 else ""
        lines.append(f"- {last}batch {train.get('batch_size')}, Adam (lr {train.get('lr')}, beta1 {train.get('beta1')}), "
                     f"schedule `{train.get('lr_schedule')}`; every setting is in `config.json`")
    lines += ["", "## Results", "", "Test set, nats per image (lower is better):", "",
              "| bound | nats | images | K | measured with |", "|---|---|---|---|---|"]
    for what in ("ELBO", "IWAE"):
        if not any(r["what"].startswith(what) for r in results):
            lines.append(f"| {what} | not measured | | | |")
    for r in results:
        lines.append(f"| {r['what']} | {_nats(r['nats'], r.get('stderr'))} | {r.get('images', '')} | {r.get('samples', '')} | "
                     f"`{r['command']}` |")
    lines += ["", "## Use", "", "With drawcli installed (`pip install -e .` in its clone; `pip install -e '.[hub]'` to load "
              "from the Hugging Face Hub):", "", "```python", "import drawcli", *loads,
              "images = drawer.sample(16, seed=0)    # (16, C, H, W) in [0, 1]", "```", "",
              "The command line takes the folder wherever it takes a run: `draw sample FOLDER`, `draw animate FOLDER`, "
              "`draw evaluate FOLDER`, `draw train --init-from FOLDER`. The weights are `model.safetensors` "
              "(no pickle); `config.json` holds the settings.", "",
              "## License", "", f"{LICENSE}, as drawcli."]
    return "\n".join(lines) + "\n"
