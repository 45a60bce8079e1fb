"""Settings shared by every subcommand: frozen dataclasses backed by YAML.

Precedence, lowest first: built-in defaults < ``--config FILE.yaml`` <
explicit flags < repeated ``--set section.key=value``. Every value goes through
one validator, so a bad value is rejected the same way wherever it came from,
with the key's name and, for unknown keys, the nearest valid one.

This module must not import torch: ``draw --help`` stays fast.
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import math
import re
import typing
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Callable, Mapping

import yaml

from drawcli.core.device import ENGINES, PRECISIONS
from drawcli.core.errors import DrawError
from drawcli.data.catalogue import DATASETS, FOLDER_PREFIX, is_folder

_RUN_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


def validate_run_name(name: str) -> str:
    """A run name is one folder name: no separators, no '..' (the rule of run.name and --name)."""
    if not name or "/" in name or "\\" in name or ".." in name or not _RUN_NAME.match(name):
        raise DrawError(
            f"invalid run name {name!r}: start with a letter or digit, then use letters, digits, '.', '_' "
            "and '-' (no path separators or '..')"
        )
    return name


def setting(default: Any = None, *, help: str, factory: Callable[[], Any] | None = None, choices: tuple | None = None,
            bounds: tuple | None = None, check: Callable[[str, Any], None] | None = None) -> Any:
    """A settings field with its rules beside it (dataclass field metadata), read by the one validator:

    help: what it means; choices: the allowed values; bounds: (low, high, low included, high
    included), either end None for none; check(where, value): a rule of its own that raises
    DrawError. Rules between keys are in _check_together."""
    meta = {"help": help, "choices": choices, "bounds": bounds, "check": check}
    return field(default_factory=factory, metadata=meta) if factory else field(default=default, metadata=meta)


AT_LEAST_1 = (1, None, True, None)
AT_LEAST_0 = (0, None, True, None)


def _check_channels(where: str, value: Any) -> None:
    if value not in (1, 3):
        raise DrawError(f"{where}: expected 1 (grey) or 3 (colour), got {spell(value)}")


def _check_name(where: str, value: Any) -> None:
    # Checked here, before any data is read or downloaded, not only when the run is made.
    try:
        validate_run_name(value)
    except DrawError as e:
        raise DrawError(f"{where}: {e}") from None


@dataclass(frozen=True)
class ModelSettings:
    glimpses: int = setting(64, help="T, the drawing steps of one image (paper Table 3: 64 for MNIST); old name: steps",
                            bounds=AT_LEAST_1)
    hidden: int = setting(256, help="LSTM units, encoder and decoder", bounds=AT_LEAST_1)
    latent: int = setting(100, help="size of each z_t (paper Table 3's Z); old name: embed (the original's --embed)",
                          bounds=AT_LEAST_1)
    attention: bool = setting(True, help="read and write through Gaussian attention windows (Section 3); false: whole images (eq 17-18)")
    # read_n and write_n are at most the image's side: a rule between keys (image_side, check_against_image)
    read_n: int = setting(2, help="the read glimpse is read_n x read_n", bounds=AT_LEAST_1)
    write_n: int = setting(5, help="the write patch is write_n x write_n", bounds=AT_LEAST_1)


@dataclass(frozen=True)
class DataSettings:
    dataset: str = setting("mnist", help="a registry data set (draw download --list) or folder:PATH",
                           check=lambda where, value: _check_dataset(where, value))
    data_dir: str | None = setting(None, help="None: $DRAW_DATA_DIR, else the per-user cache")
    binarize: str = setting("dynamic", help="dynamic (anew at every step) | threshold | none", choices=("dynamic", "threshold", "none"))
    validation: bool = setting(False, help="hold out the last 10k training images; evaluate on them")
    # folder:PATH data sets only (drawcli/data/folders.py):
    image_size: int | None = setting(None, help="resize every image to S x S; None: all must have the first image's size",
                                     bounds=AT_LEAST_1)
    channels: int | None = setting(None, help="1 (grey) or 3 (colour); None: a folder's default, 3, or a registry set's own",
                                   check=_check_channels)
    test_fraction: float | None = setting(None, help="held-out test share; None: 10%, at most 10,000 images", bounds=(0, 1, False, False))
    skip_unreadable: bool = setting(False, help="leave out pictures that cannot be read (counted and named) instead of stopping")


@dataclass(frozen=True)
class TrainSettings:
    epochs: int = setting(100, help="passes over the training split", bounds=AT_LEAST_1)
    batch_size: int = setting(128, help="images per optimizer step (the global batch with --nproc)", bounds=AT_LEAST_1)
    lr: float = setting(1e-3, help="peak learning rate (after warm-up)", bounds=(0, None, False, None))
    lr_schedule: str = setting("constant", help="constant | cosine | step | wsd: a function of the training position alone",
                               choices=("constant", "cosine", "step", "wsd"))
    warmup_steps: int = setting(0, help="linear warm-up from lr/warmup_steps to lr over the first steps", bounds=AT_LEAST_0)
    min_lr: float = setting(0.0, help="cosine: the rate at the last step of train.epochs; wsd: the rate at the end of the decay",
                            bounds=(0.0, None, True, None))
    decay_start: int | None = setting(None, help="wsd: the epoch after which the final decay begins; None: constant (set it on a resume)",
                                      bounds=AT_LEAST_0)
    decay_epochs: int = setting(10, help="wsd: the decay's length in epochs (half a cosine from lr to min_lr)", bounds=AT_LEAST_1)
    lr_step_epochs: int = setting(30, help="step: multiply the rate by lr_decay every this many epochs", bounds=AT_LEAST_1)
    lr_decay: float = setting(0.1, help="step: the factor", bounds=(0, 1, False, True))
    beta1: float = setting(0.5, help="Adam's beta1", bounds=(0, 1, True, False))
    beta2: float = setting(0.999, help="Adam's beta2", bounds=(0, 1, True, False))
    grad_clip: float = setting(5.0, help="global L2 norm; 0 disables", bounds=(0.0, None, True, None))
    seed: int = setting(0, help="the data order, the binarisation and the noise", bounds=AT_LEAST_0)
    max_steps: int | None = setting(None, help="stop early (then evaluate and checkpoint)", bounds=AT_LEAST_1)
    eval_batch_size: int = setting(1000, help="images per evaluation pass", bounds=AT_LEAST_1)
    eval_samples: int | None = setting(None, help="after training: importance-weighted bound with K samples", bounds=AT_LEAST_1)
    log_every: int = setting(100, help="plain log lines / metrics.jsonl rows every N steps", bounds=AT_LEAST_1)
    eval_every: int = setting(1, help="evaluate on the test (or validation) split every N epochs, and always after the last one",
                              bounds=AT_LEAST_1)
    precision: str = setting("auto", help="float32 | bfloat16 | auto (bfloat16 where the hardware multiplies it natively)",
                             choices=PRECISIONS)
    init_from: str | None = setting(None, help="a new run starts from these weights (run, checkpoint file, model folder, hf:OWNER/NAME "
                                    "or @NAME); optimizer and schedule start fresh")


@dataclass(frozen=True)
class RunSettings:
    name: str | None = setting(None, help="None: run1, run2, ...", check=_check_name)
    runs_dir: str = setting("runs", help="where runs are kept (flag --runs-dir, or DRAW_RUNS_DIR)")
    device: str = setting("auto", help="auto | cpu | cuda | cuda:N | mps")
    threads: int | None = setting(None, help="CPU threads per process; None: drawcli's policy (see drawcli/core/device.py)",
                                  bounds=AT_LEAST_1)
    tensorboard: str = setting("auto", help="auto (log when the package is importable) | true | false; YAML booleans accepted",
                               choices=("auto", "true", "false"))
    engine: str = setting("auto", help="auto | native | python | reference: which implementation runs the model (drawcli/model/engine.py)",
                          choices=ENGINES)


@dataclass(frozen=True)
class Settings:
    model: ModelSettings = field(default_factory=ModelSettings)
    data: DataSettings = field(default_factory=DataSettings)
    train: TrainSettings = field(default_factory=TrainSettings)
    run: RunSettings = field(default_factory=RunSettings)

    def to_dict(self) -> dict[str, dict[str, Any]]:
        return dataclasses.asdict(self)

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)


_SECTION_CLASSES = {
    "model": ModelSettings,
    "data": DataSettings,
    "train": TrainSettings,
    "run": RunSettings,
}


def rule(section: str, key: str) -> Mapping[str, Any]:
    """The rules a field declares (setting's metadata): help, choices, bounds, check."""
    return {f.name: f.metadata for f in fields(_SECTION_CLASSES[section])}[key]


# The allowed values, by (section, key): read from the fields, for messages elsewhere.
CHOICES = {(section, f.name): f.metadata["choices"] for section, cls in _SECTION_CLASSES.items() for f in fields(cls)
           if f.metadata.get("choices")}


def _nearest(name: str, valid: list[str]) -> str:
    # 0.6: 'stepz' -> 'steps' and 'lrr' -> 'lr', but no 'colour' -> 'lr'.
    close = difflib.get_close_matches(name, valid, n=1, cutoff=0.6)
    if close:
        return f" (did you mean '{close[0]}'?)"
    return f" (valid keys: {', '.join(valid)})"


@functools.cache
def _types(cls) -> dict[str, tuple[type, bool]]:
    """Each field's (base type, whether None is allowed), from its real annotation."""
    out = {}
    for name, hint in typing.get_type_hints(cls).items():
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        out[name] = (args[0] if args else hint, type(None) in typing.get_args(hint))
    return out


# Old names still accepted wherever settings are read (YAML, --set, config.yaml and checkpoints of
# older runs): model.steps was easy to confuse with optimizer steps (--max-steps), and embed is the
# latent size. Messages name the key as it was written.
ALIASES = {("model", "steps"): "glimpses", ("model", "embed"): "latent"}


# Other names people give the settings (other programs', papers', the flags of the original code):
# an unknown key that is one of them suggests the setting, in any section, before close spellings.
# A value may add a word after the key: shown after the suggestion.
SYNONYMS = {
    **dict.fromkeys(("learning_rate", "learningrate", "rate", "lr_rate"), "train.lr"),
    **dict.fromkeys(("batch", "batchsize", "bs", "minibatch", "mini_batch", "batch_len"), "train.batch_size"),
    **dict.fromkeys(("epoch", "n_epochs", "num_epochs", "max_epochs", "nepochs"), "train.epochs"),
    **dict.fromkeys(("iterations", "iters", "max_iters", "num_steps", "total_steps", "max_step", "train_steps"), "train.max_steps"),
    "steps": "model.glimpses glimpses are the drawing steps per image; optimizer steps are train.max_steps",
    **dict.fromkeys(("t", "T", "n_glimpses", "num_glimpses", "glimpse_count", "timesteps", "time_steps"), "model.glimpses"),
    **dict.fromkeys(("z", "z_size", "z_dim", "latent_size", "latent_dim", "code_size", "embedding", "embed_size"), "model.latent"),
    **dict.fromkeys(("hidden_size", "hidden_dim", "lstm", "lstm_size", "units", "rnn_size", "enc_size", "dec_size"), "model.hidden"),
    **dict.fromkeys(("read", "read_size", "read_window", "read_attn_size"), "model.read_n"),
    **dict.fromkeys(("write", "write_size", "write_window", "write_attn_size"), "model.write_n"),
    **dict.fromkeys(("attn", "use_attention", "read_attn", "write_attn"), "model.attention"),
    **dict.fromkeys(("warmup", "warmup_iters", "warm_up"), "train.warmup_steps"),
    **dict.fromkeys(("clip", "clip_grad", "gradient_clip", "max_grad_norm", "clip_norm", "grad_norm"), "train.grad_clip"),
    **dict.fromkeys(("schedule", "scheduler", "lr_scheduler", "lr_policy"), "train.lr_schedule"),
    **dict.fromkeys(("random_seed", "rng_seed"), "train.seed"),
    **dict.fromkeys(("iwae_samples", "importance_samples", "k"), "train.eval_samples"),
    **dict.fromkeys(("dtype", "amp", "mixed_precision"), "train.precision"),
    **dict.fromkeys(("pretrained", "init", "init_weights", "weights", "checkpoint", "finetune_from"), "train.init_from"),
    **dict.fromkeys(("data", "data_set", "dataset_name", "data_name"), "data.dataset"),
    **dict.fromkeys(("data_path", "data_root", "root", "dataroot", "data_folder"), "data.data_dir"),
    **dict.fromkeys(("size", "img_size", "resolution", "resize", "image_side"), "data.image_size"),
    **dict.fromkeys(("binarise", "binarization", "binarisation", "binary"), "data.binarize"),
    **dict.fromkeys(("val", "valid", "validation_split", "holdout"), "data.validation"),
    **dict.fromkeys(("gpu", "cuda", "accelerator"), "run.device"),
    **dict.fromkeys(("num_threads", "n_threads", "nthreads", "cpu_threads"), "run.threads"),
    **dict.fromkeys(("out_dir", "output_dir", "log_dir", "logdir", "save_dir", "checkpoint_dir", "run_dir"), "run.runs_dir"),
    **dict.fromkeys(("run_name", "experiment", "exp_name"), "run.name"),
    **dict.fromkeys(("backend", "implementation"), "run.engine"),
}


def _synonym(section: str, key: str) -> str | None:
    """' (did you mean ...?)' for a key that SYNONYMS knows, or None."""
    target = SYNONYMS.get(key) or SYNONYMS.get(key.lower())
    if target is None:
        return None
    dotted, _, why = target.partition(" ")
    where, name = dotted.split(".")
    shown = name if where == section else dotted
    return f" (did you mean '{shown}'?" + (f" {why})" if why else ")")


def model_arguments(model: ModelSettings) -> dict[str, Any]:
    """DRAW's constructor arguments for ``model``: the same names."""
    return dict(glimpses=model.glimpses, hidden=model.hidden, latent=model.latent, attention=model.attention,
                read_n=model.read_n, write_n=model.write_n)


def spell(value: Any) -> str:
    """A value as a settings file writes it (YAML), for messages: true, false, null, 0.001, 'text',
    [1, 2] (never Python's True, None)."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(spell(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k}: {spell(v)}" for k, v in value.items()) + "}"
    return repr(value)


def _coerce(section: str, key: str, value: Any, shown: str | None = None) -> Any:
    """Check one value's type and range; return it in its canonical type."""
    where = f"{section}.{shown or key}"
    if (section, key) == ("data", "dataset") and isinstance(value, dict) and list(value) == ["folder"]:
        # YAML reads `folder:` (nothing after the colon, e.g. from --set) as a mapping: the string was meant.
        value = FOLDER_PREFIX + ("" if value["folder"] is None else str(value["folder"]))
    base, optional = _types(_SECTION_CLASSES[section])[key]
    meta = rule(section, key)
    if (section, key) == ("run", "tensorboard") and not isinstance(value, str):
        if not isinstance(value, bool):
            raise DrawError(f"{where}: expected auto, true or false, got {spell(value)}")
        value = "true" if value else "false"  # YAML and --set read true/false as booleans
    if value is None:
        if optional:
            return None
        raise DrawError(f"{where}: a value is required, got null")
    if base is bool:
        if not isinstance(value, bool):
            raise DrawError(f"{where}: expected true or false, got {spell(value)}")
    elif base is int:
        if isinstance(value, bool) or not isinstance(value, int):
            if isinstance(value, float) and value.is_integer():
                value = int(value)
            else:
                raise DrawError(f"{where}: expected an integer, got {spell(value)}")
    elif base is float:
        # YAML 1.1 reads `1e-3` (no dot) as a string: accept it as the number it is.
        if isinstance(value, str):
            try:
                value = float(value)
            except ValueError:
                raise DrawError(f"{where}: expected a number, got {spell(value)}") from None
        elif isinstance(value, bool) or not isinstance(value, (int, float)):
            raise DrawError(f"{where}: expected a number, got {spell(value)}")
        value = float(value)
        if not math.isfinite(value):
            raise DrawError(f"{where}: expected a finite number, got {spell(value)}")
    elif base is str:
        if not isinstance(value, str):
            if isinstance(value, (int, float)) and not isinstance(value, bool) and key == "device":
                raise DrawError(f"{where}: expected a device name such as 'cpu' or 'cuda:0', got {spell(value)}")
            raise DrawError(f"{where}: expected a string, got {spell(value)}")
    choices = meta["choices"]
    if choices and value not in choices:
        close = difflib.get_close_matches(str(value), choices, n=1, cutoff=0.6)
        hint = f" (did you mean '{close[0]}'?)" if close else ""
        raise DrawError(f"{where}: expected one of {', '.join(choices)}, got {spell(value)}{hint}")
    if meta["bounds"] is not None:
        _check_bounds(where, value, *meta["bounds"])
    if meta["check"] is not None:
        meta["check"](where, value)
    return value


def _check_bounds(where: str, value, lo, hi, lo_in: bool, hi_in: bool) -> None:
    """value within (lo, hi), each end included or not (None: no end), or one line saying so."""
    below = lo is not None and (value < lo if lo_in else value <= lo)
    above = hi is not None and (value > hi if hi_in else value >= hi)
    if not (below or above):
        return
    if hi is None:
        raise DrawError(f"{where}: must be {'>=' if lo_in else '>'} {lo}, got {spell(value)}")
    raise DrawError(f"{where}: must be in {'[' if lo_in else '('}{lo}, {hi}{']' if hi_in else ')'}, got {spell(value)}")


def _check_dataset(where: str, value: str) -> None:
    """A registry name, or folder:PATH with a non-empty PATH (whether it exists is checked on loading)."""
    if is_folder(value):
        if not value[len(FOLDER_PREFIX):].strip():
            raise DrawError(f"{where}: {FOLDER_PREFIX} needs a path to a folder of images, e.g. folder:~/pictures")
        return
    if value not in DATASETS:
        close = difflib.get_close_matches(value, list(DATASETS), n=1, cutoff=0.6)
        hint = f" (did you mean '{close[0]}'?)" if close else ""
        raise DrawError(f"{where}: expected one of {', '.join(DATASETS)} or folder:PATH, got {value!r}{hint}")


def _check_key(section: str | None, key: str, origin: str) -> None:
    if section is None:
        if key not in _SECTION_CLASSES:
            raise DrawError(f"{origin}{key}: unknown section{_nearest(key, list(_SECTION_CLASSES))}")
        return
    valid = [f.name for f in fields(_SECTION_CLASSES[section])]
    if key not in valid:
        synonym = _synonym(section, key)
        if synonym:
            raise DrawError(f"{origin}{section}.{key}: unknown key{synonym}")
        # A key that belongs to another section is a common slip: say where it lives.
        for other, cls in _SECTION_CLASSES.items():
            if key in {f.name for f in fields(cls)} | {old for (sec, old) in ALIASES if sec == other}:
                raise DrawError(f"{origin}{section}.{key}: unknown key (did you mean '{other}.{key}'?)")
        old = [name for (sec, name) in ALIASES if sec == section]
        hint = _nearest(key, valid + old) if difflib.get_close_matches(key, valid + old, n=1, cutoff=0.6) else _nearest(key, valid)
        raise DrawError(f"{origin}{section}.{key}: unknown key{hint}")


def apply_overrides(base: Settings, overrides: Mapping[str, Mapping[str, Any]], origin: str = "", together: bool = True) -> Settings:
    """Return ``base`` with ``{section: {key: value}}`` applied, every value validated; with
    ``together``, the rules between keys too (not while the base is still unknown: a resume's
    flags are checked against the run's saved settings, later)."""
    if not isinstance(overrides, Mapping):
        raise DrawError(f"{origin}expected a mapping of sections (model, data, train, run), got {type(overrides).__name__}")
    sections = {}
    for section, values in overrides.items():
        _check_key(None, str(section), origin)
        if values is None:
            continue
        if not isinstance(values, Mapping):
            raise DrawError(f"{origin}{section}: expected a mapping of keys, got {spell(values)}")
        checked, written = {}, {}
        for key, value in values.items():
            name = ALIASES.get((str(section), str(key)), str(key))
            _check_key(section, name, origin)
            if name in written:
                raise DrawError(f"{origin}{section}.{key}: the same setting as {section}.{written[name]}; give one of them")
            written[name] = key
            try:
                checked[name] = _coerce(section, name, value, shown=str(key))
            except DrawError as e:  # name where the value came from: the file, --set, ...
                raise DrawError(f"{origin}{e}") from None
        sections[section] = dataclasses.replace(getattr(base, section), **checked)
    out = dataclasses.replace(base, **sections)
    if together:
        _check_together(out, lambda key: origin)
    return out


def _check_together(settings: Settings, origin: Callable[[str], str]) -> None:
    """Rules between keys, checked on the settings every layer made together: one layer may mend
    what an earlier one alone would break (``--epochs 170 --set train.decay_start=140`` on a resume
    whose saved decay started at 170). ``origin("section.key")`` names where a key was given."""
    ds = settings.data
    if not is_folder(ds.dataset):
        spec = DATASETS[ds.dataset]
        for key in ("image_size", "test_fraction", "skip_unreadable"):
            if getattr(ds, key) not in (None, False):
                raise DrawError(f"{origin('data.' + key)}data.{key}: only for folder:PATH data sets; {spec.name} has fixed "
                                f"{spec.width}x{spec.height} images and its own splits")
        if ds.channels is not None and ds.channels != spec.channels:
            raise DrawError(f"{origin('data.channels')}data.channels: {spec.name} has {spec.channels} channel(s), got {ds.channels}; "
                            f"leave it unset for a registry data set")
    ts = settings.train
    if ts.lr_schedule in ("cosine", "wsd") and ts.min_lr > ts.lr:
        raise DrawError(f"{origin('train.min_lr')}train.min_lr: must be <= train.lr ({ts.lr:g}) for the {ts.lr_schedule} schedule, got {ts.min_lr:g}")
    if ts.lr_schedule == "wsd" and ts.decay_start is not None and ts.decay_start + ts.decay_epochs > ts.epochs:
        raise DrawError(
            f"{origin('train.decay_start')}train.decay_start: the decay ({ts.decay_start} + {ts.decay_epochs} train.decay_epochs) would end after "
            f"train.epochs ({ts.epochs}); set train.epochs to at least {ts.decay_start + ts.decay_epochs}"
        )
    if ts.lr_schedule != "wsd" and ts.decay_start is not None:
        raise DrawError(f"{origin('train.decay_start')}train.decay_start: only for train.lr_schedule=wsd (it is {ts.lr_schedule})")
    side = image_side(ds)
    if side is not None:
        check_against_image(settings, *side, origin=origin)


def image_side(data: DataSettings) -> tuple[int, int] | None:
    """(height, width) of the images ``data`` names, where the settings alone tell it: a registry
    data set's, or a folder's data.image_size; None for a folder without it (known once read)."""
    if is_folder(data.dataset):
        return None if data.image_size is None else (data.image_size, data.image_size)
    spec = DATASETS[data.dataset]
    return spec.height, spec.width


def load_yaml(path: str | Path) -> dict:
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise DrawError(f"config file not found: {path}") from None
    except UnicodeDecodeError as e:
        byte = f"byte 0x{e.object[e.start]:02x} at offset {e.start}"
        raise DrawError(f"cannot read config file {path}: not UTF-8 text ({byte})") from None
    except OSError as e:
        raise DrawError(f"cannot read config file {path}: {e.strerror or e}") from None
    try:
        # PyYAML keeps the last of two equal keys without a word; a settings file that says
        # a thing twice is refused instead (first the bare syntax tree, where lines are known).
        _refuse_duplicates(yaml.compose(text, Loader=yaml.SafeLoader), path)
        # safe_load only: a python/* tag is refused, never constructed (nothing runs).
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark else ""
        tag = re.fullmatch(r"could not determine a constructor for the tag '([^']*)'", problem.strip())
        if tag:
            name = tag.group(1).replace("tag:yaml.org,2002:", "!!")
            problem = f"tag {name} refused (settings files hold plain values only; nothing in them is run)"
        raise DrawError(f"{path}: not valid YAML{where}: {problem}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise DrawError(f"{path}: expected a mapping of sections (model, data, train, run), got {type(data).__name__}")
    return data


def _refuse_duplicates(node, path: Path, where: str = "") -> None:
    """A DrawError naming the first key or section that appears twice in one mapping, with its lines."""
    if isinstance(node, yaml.MappingNode):
        first: dict[str, int] = {}
        for key_node, value_node in node.value:
            if isinstance(key_node, yaml.ScalarNode) and key_node.tag != "tag:yaml.org,2002:merge":
                key, line = key_node.value, key_node.start_mark.line + 1
                if key in first:
                    what = f"key '{where}{key}'" if where else f"section '{key}'"
                    raise DrawError(
                        f"{path}: duplicate {what} at line {line} (first at line {first[key]}); "
                        "give each setting once"
                    )
                first[key] = line
                _refuse_duplicates(value_node, path, f"{where}{key}.")
            else:
                _refuse_duplicates(value_node, path, where)
    elif isinstance(node, yaml.SequenceNode):
        for item in node.value:
            _refuse_duplicates(item, path, where)


def parse_set(items: list[str] | None) -> dict[str, dict[str, Any]]:
    """Parse repeated ``--set section.key=value`` into an override mapping."""
    out: dict[str, dict[str, Any]] = {}
    for item in items or []:
        if "=" not in item:
            raise DrawError(f"--set {item!r}: expected section.key=value")
        dotted, raw = item.split("=", 1)
        if dotted.count(".") != 1:
            raise DrawError(f"--set {item!r}: expected section.key=value, e.g. train.lr=3e-4")
        section, key = dotted.split(".")
        try:
            value = yaml.safe_load(raw) if raw.strip() else None
        except yaml.YAMLError:
            value = raw
        out.setdefault(section, {})[key] = value
    return out


def build_settings(
    config: str | Path | None = None,
    flags: Mapping[str, Mapping[str, Any]] | None = None,
    sets: list[str] | None = None,
    base: Settings | None = None,
    together: bool = True,
    given: dict[str, str] | None = None,
) -> Settings:
    """defaults (or ``base``) < YAML file < flags (None means 'not given') < --set.

    ``together=False`` checks every key and value but not the rules between keys (see
    :func:`apply_overrides`). ``given``, a dict, receives ``{"section.key": origin}`` for every key
    a layer set, with the origin of the last one: ``"FILE: "`` (the config), ``""`` (a flag) or
    ``"--set "``."""
    settings = base or Settings()
    layers = []
    if config is not None:
        layers.append((load_yaml(config), f"{config}: "))
    if flags:
        set_flags = {s: {k: v for k, v in kv.items() if v is not None} for s, kv in flags.items()}
        layers.append(({s: kv for s, kv in set_flags.items() if kv}, ""))
    layers.append((parse_set(sets), "--set "))
    given_in: dict[str, str] = {}  # "section.key" -> the origin of the last layer that gave it
    for overrides, origin in layers:
        settings = apply_overrides(settings, overrides, origin=origin, together=False)
        for section, values in overrides.items():
            for key in values or {}:
                given_in[f"{section}.{ALIASES.get((str(section), str(key)), str(key))}"] = origin
    if together:
        _check_together(settings, lambda key: given_in.get(key, ""))
    if given is not None:
        given.update(given_in)
    return settings


def changed_settings(old: Settings, new: Settings) -> dict[str, list]:
    """``{"section.key": [old, new]}`` for every setting that differs."""
    a, b = old.to_dict(), new.to_dict()
    return {
        f"{section}.{key}": [a[section][key], b[section][key]]
        for section in a
        for key in a[section]
        if a[section][key] != b[section][key]
    }


def from_dict(data: Mapping[str, Any]) -> Settings:
    """Rebuild settings saved by :meth:`Settings.to_dict` (checkpoints, config.yaml)."""
    return apply_overrides(Settings(), data, origin="saved settings: ")


def check_command_options(seed: int | None = None, device: str | None = None, precision: str | None = None,
                          engine: str | None = None) -> None:
    """The one check of --seed, --device, --precision and --engine for the commands that load a model
    (sample, animate, inspect-attention, evaluate): a one-line DrawError, before torch is imported."""
    if seed is not None and seed < 0:
        raise DrawError(f"--seed must be 0 or more, got {seed}")
    if device is not None:
        from drawcli.core.device import check_spec

        check_spec(device)
    choices = CHOICES[("train", "precision")]
    if precision is not None and precision not in choices:
        raise DrawError(f"--precision: expected one of {', '.join(choices)}, got {precision!r}")
    engines = CHOICES[("run", "engine")]
    if engine is not None and engine not in engines:
        raise DrawError(f"--engine: expected one of {', '.join(engines)}, got {engine!r}")


def check_against_image(settings: Settings, height: int, width: int, origin: Callable[[str], str] = lambda key: "") -> None:
    """Range rules that depend on the data: the read and write windows are at most the image's
    shorter side (checked as soon as it is known: from the settings for a registry data set or a
    folder's data.image_size, else once the pictures are read)."""
    side = min(height, width)
    for key in ("read_n", "write_n"):
        n = getattr(settings.model, key)
        if n > side:
            raise DrawError(f"{origin('model.' + key)}model.{key}: must be <= {side} (the image side), got {n}")


def load_data(data: DataSettings, data_dir: Path):
    """The data set ``data`` (settings.data) names, as drawcli.data.loading.Splits: ``load_splits``
    with every data.* key that matters passed on (the one place that says which)."""
    from drawcli.data.loading import load_splits

    return load_splits(data.dataset, data_dir, data.validation, image_size=data.image_size,
                       channels=data.channels, test_fraction=data.test_fraction, skip_unreadable=data.skip_unreadable)
