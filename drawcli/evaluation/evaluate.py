"""`draw evaluate`: load a run or built-in model, compute its bounds (drawcli.evaluation.bounds) on a split,
print them beside the paper's Table 2, and write them as JSON.
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
from pathlib import Path

from rich.console import Console

from drawcli.core.files import write_text_atomically
from drawcli.data.catalogue import EVAL_SPLITS
from drawcli.runs.names import EVAL_PREFIX

SPLITS = EVAL_SPLITS
EVAL_FORMAT = "drawcli-eval"
EVAL_FORMAT_VERSION = 1

# --------------------------------------------------------------------------- the command


def write_json_atomic(path: Path, obj) -> None:
    """JSON through a temp file, fsync and os.replace: never a half-written file."""
    write_text_atomically(path, json.dumps(obj, indent=2, allow_nan=False) + "\n")


def load_split(data, data_dir: Path, split: str, console: Console):
    """(images of ``split``, the data set's spec) for DataSettings ``data`` (registry sets and folder:PATH)."""
    from drawcli.data.loading import MissingDataset
    from drawcli.settings import load_data

    def load():
        if split == "test":
            splits = load_data(dataclasses.replace(data, validation=False), data_dir)
            return splits.eval, splits.spec
        if split == "valid":
            splits = load_data(dataclasses.replace(data, validation=True), data_dir)
            return splits.eval, splits.spec
        # train: the images the run trained on (without its held-out part if it had one).
        splits = load_data(data, data_dir)
        return splits.train, splits.spec

    try:
        return load()
    except MissingDataset:
        from drawcli.data.download import ensure_dataset

        ensure_dataset(data.dataset, data_dir, console=console)
        return load()


def eval_binarize(spec, settings) -> str:
    """The run's binarisation, except: a pre-binarised set is used as is, and a run trained on
    one (recorded as 'none') evaluates grey-level sets with the paper's dynamic rule."""
    from drawcli.data.catalogue import get_spec, is_folder

    if spec.prebinarized:
        return "none"
    trained_on = settings.data.dataset
    if settings.data.binarize == "none" and not is_folder(trained_on) and get_spec(trained_on).prebinarized:
        return "dynamic"
    return settings.data.binarize


def same_dataset(a: str, b: str) -> bool:
    """The same data set, however it is spelled: folder:./pictures and folder:/home/me/pictures
    from /home/me are one folder."""
    from drawcli.data.catalogue import is_folder
    from drawcli.data.folders import folder_path

    if a == b:
        return True
    if not (is_folder(a) and is_folder(b)):
        return False
    return folder_path(a).resolve() == folder_path(b).resolve()


def data_for(data, dataset: str | None, model):
    """The DataSettings to evaluate on: the run's own, or ``dataset`` (--dataset) with what the model
    needs: a folder of pictures is read at the model's size and channels (the run's data.image_size,
    else the model's side when square), a registry set with its own."""
    from drawcli.data.catalogue import is_folder

    name = dataset or data.dataset
    if same_dataset(name, data.dataset):  # the run's data set, perhaps spelled otherwise: all its settings
        return dataclasses.replace(data, dataset=name)
    if is_folder(name):
        side = data.image_size if data.image_size is not None else (model.height if model.height == model.width else None)
        return dataclasses.replace(data, dataset=name, image_size=side, channels=model.channels, test_fraction=None)
    return dataclasses.replace(data, dataset=name, image_size=None, channels=None, test_fraction=None, skip_unreadable=False)


def eval_path(located, split: str, samples: int, limit: int | None, dataset: str | None, seed: int) -> Path:
    """Where draw evaluate writes by default: RUN_DIR/eval-....json, or NAME-eval-....json in the current
    folder for a built-in model, a model folder, a Hub model or a checkpoint file outside a run."""
    from drawcli.data.catalogue import is_folder

    if dataset is not None and is_folder(dataset):  # a folder's name, not its path, goes in a file name
        dataset = "folder-" + re.sub(r"[^A-Za-z0-9._-]+", "_", Path(dataset.split(":", 1)[1]).expanduser().resolve().name)
    if located.stem is not None:  # no run directory (a built-in model, a model folder, a file): the current one
        return Path(f"{located.stem}-" + eval_file_name(split, samples, limit, None, dataset, seed))
    return located.run_dir / eval_file_name(split, samples, limit, located.checkpoint, dataset, seed)


def eval_file_name(split: str, samples: int, limit: int | None, checkpoint: Path | None, dataset: str | None = None,
                   seed: int = 0) -> str:
    """eval-[DATASET-]SPLIT-kK[-limitN][-seedS]-CHECKPOINT.json, e.g. eval-test-k100-best.json: results
    with other settings never replace each other (the same settings again do, with fresh numbers).
    ``checkpoint`` None (a built-in model): no checkpoint part."""
    parts = [EVAL_PREFIX, dataset or "", split, f"k{samples}", f"limit{limit}" if limit is not None else "",
             f"seed{seed}" if seed else "", Path(checkpoint).stem if checkpoint is not None else ""]
    return "-".join(p for p in parts if p) + ".json"


def per_value(numbers: dict, values: int) -> dict:
    """The ELBO and IWAE numbers per sub-pixel (C x H x W values per image), in nats and in bits."""
    return {"values_per_image": values,
            **{f"{key}_per_value_nats": numbers[key] / values for key in ("elbo", "iwae")},
            **{f"{key}_per_value_bits": numbers[key] / values / math.log(2) for key in ("elbo", "iwae")}}




# --------------------------------------------------------------------------- interrupted evaluations

PARTIAL_FORMAT = "drawcli-eval-partial"
PARTIAL_SUFFIX = ".partial"


def partial_path(path: Path) -> Path:
    """Where an evaluation writing ``path`` keeps its finished images while it runs."""
    return path.with_name(path.name + PARTIAL_SUFFIX)


def partial_key(source: str, checkpoint: Path | None, **what) -> dict:
    """What must be the same for a kept partial evaluation to be continued: the model file (path,
    size and modification time; a built-in by name), and ``what`` (split, K, seed, limit, engine,
    precision, device kind, ...: everything that changes the numbers or the noise)."""
    key = {"source": source, **what}
    if checkpoint is not None:
        st = Path(checkpoint).stat()
        key["checkpoint"] = [str(Path(checkpoint).resolve()), st.st_size, st.st_mtime_ns]
    return key


def read_partial(path: Path, key: dict):
    """(the kept Partial or None, the seconds it took, a line to show or None).

    The Partial is returned when ``path`` holds one of the same work as ``key``; otherwise the line
    says why it is not used (other settings, unreadable). No file: (None, 0.0, None).
    """
    import torch

    from drawcli.evaluation.bounds import Partial

    if not path.exists():
        return None, 0.0, None
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
        if data.get("format") != PARTIAL_FORMAT:
            raise ValueError("not a partial evaluation")
        if data["key"] != key:
            changed = sorted(k for k in set(key) | set(data["key"]) if key.get(k) != data["key"].get(k))
            return None, 0.0, f"not continuing {path}: it was made with another {', '.join(changed)}; starting over"
        partial = Partial.from_dict(data["partial"])
        return partial, float(data["seconds"]), f"continuing from {path}: {partial.done} of {partial.images} images were done"
    except Exception as e:  # unreadable: say so and start over; the file is replaced as the work goes
        return None, 0.0, f"not continuing {path}: unreadable ({type(e).__name__}); starting over"


def write_partial(path: Path, key: dict, partial, seconds: float) -> None:
    """Keep ``partial`` (plain types and tensors, atomically) for the same command to continue."""
    import torch

    from drawcli.core.files import replace_atomically

    data = {"format": PARTIAL_FORMAT, "key": key, "partial": partial.to_dict(), "seconds": seconds}
    replace_atomically(path, lambda tmp: torch.save(data, tmp), what="partial evaluation ")
