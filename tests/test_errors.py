"""Bad input and untrusted files (issue 8): one clear line, exit code 1, no traceback, nothing lost.

One parametrised test per row of the issue's "Bad input" list, then the "Untrusted files"
checks. Every case goes through the real CLI (typer's CliRunner, in process) and asserts
the exact user-facing fragment, exit code 1, exactly one line on stderr and no traceback.
Runs are tiny models (T=2, 16 hidden units) written straight to run directories, so no
test trains for more than a few steps.

Tests run as root, where chmod does not stop a write: "cannot be written" paths are put
under a regular file (``FILE/sub``), which nobody can create.
"""

from __future__ import annotations

import errno
import gzip
import io
import os
import pathlib
import pickle

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from drawcli.cli import app
from drawcli.runs import checkpoint as ckpt_io
from drawcli.runs import names
from drawcli.runs.checkpoint import build_model, make_checkpoint, rng_state
from drawcli.runs.store import write_config
from drawcli.settings import build_settings

from helpers import idx_bytes, synthetic_images

runner = CliRunner()

TINY_MODEL = {"steps": 2, "hidden": 16, "embed": 4, "read_n": 2, "write_n": 3}
TRAIN_FLAGS = ["--steps", "2", "--hidden", "16", "--embed", "4", "-b", "32", "--epochs", "1",
               "--device", "cpu", "--set", "train.eval_batch_size=50"]


# ----------------------------------------------------------------------------- helpers
def draw(*args, env=None):
    return runner.invoke(app, [str(a) for a in args], env=env)


def fails_with(result, fragment: str) -> str:
    """Exit code 1, one line on stderr (``error: ...``) holding ``fragment``, no traceback."""
    for text in (result.stdout, result.stderr, result.output):
        assert "Traceback" not in text, text
    # CliRunner swallows an uncaught exception without printing it: that is a crash too.
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    assert result.exit_code == 1, (result.exit_code, result.output)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: "), lines[0]
    assert fragment in lines[0], f"\nexpected: {fragment}\n     got: {lines[0]}"
    return lines[0]


def tiny_settings(name: str, **model):
    return build_settings(
        flags={
            "model": {**TINY_MODEL, **model},
            "train": {"batch_size": 32, "eval_batch_size": 50, "epochs": 2},
            "run": {"name": name, "device": "cpu"},
        }
    )


def tiny_checkpoint(name: str = "alpha", epoch: int = 1, trained: bool = False, **model) -> dict:
    """A complete, resumable checkpoint of a tiny model (``trained``: after one Adam step)."""
    settings = tiny_settings(name, **model)
    torch.manual_seed(0)
    m = build_model(settings, 28, 28)
    optimizer = torch.optim.Adam(m.parameters())
    if trained:  # Adam state (exp_avg, exp_avg_sq) for every parameter
        for p in m.parameters():
            p.grad = torch.ones_like(p)
        optimizer.step()
    rng = rng_state(torch.Generator().manual_seed(1), torch.Generator().manual_seed(2))
    metrics = {"lx": 400.0, "lz": 100.0, "loss": 500.0}
    return make_checkpoint(m, optimizer, settings, epoch, 3 * epoch, rng, metrics, 500.0)


def make_run(runs_dir: pathlib.Path, name: str, epochs=(1, 2)) -> pathlib.Path:
    run_dir = runs_dir / name
    ckpts = run_dir / "checkpoints"
    ckpts.mkdir(parents=True)
    write_config(run_dir, tiny_settings(name))
    for epoch in epochs:
        ckpt_io.atomic_save(tiny_checkpoint(name, epoch), ckpts / names.epoch_file(epoch))
    if epochs:
        ckpt_io.atomic_link(ckpts / names.epoch_file(epochs[-1]), ckpts / "last.pt")
        ckpt_io.atomic_link(ckpts / names.epoch_file(epochs[0]), ckpts / "best.pt")
    return run_dir


def torch_bytes(obj) -> bytes:
    buf = io.BytesIO()
    torch.save(obj, buf)
    return buf.getvalue()


@pytest.fixture
def runs(tmp_path, monkeypatch):
    """cwd with runs/alpha (checkpoints for epochs 1 and 2, last, best) and runs/beta."""
    monkeypatch.chdir(tmp_path)
    make_run(tmp_path / "runs", "alpha")
    make_run(tmp_path / "runs", "beta", epochs=(1,))
    return tmp_path / "runs"


@pytest.fixture
def a_file(tmp_path) -> pathlib.Path:
    """A regular file: FILE/sub can be created by nobody, not even root."""
    path = tmp_path / "plain-file"
    path.write_text("not a directory\n")
    return path


# ----------------------------------------------------------------------------- settings files
@pytest.mark.parametrize(
    "text, fragment",
    [
        ("model:\n  steps: [1, 2\n", "not valid YAML (line 3, column 1): expected ',' or ']', but got '<stream end>'"),
        ("model:\n\tsteps: 3\n", "not valid YAML (line 2, column 1): found character '\\t' that cannot start any token"),
        ("model: {steps: 3\n", "not valid YAML (line 2, column 1): expected ',' or '}', but got '<stream end>'"),
        ("model:\n  steps: 3\n   hidden: 4\n", "not valid YAML (line 3, column 10): mapping values are not allowed here"),
        (b"model:\n  steps: \xff\xfe\n", "cannot read config file {cfg}: not UTF-8 text (byte 0xff at offset 16)"),
    ],
    ids=["unclosed-list", "tab", "unclosed-brace", "bad-indent", "not-utf8"],
)
def test_malformed_yaml(tmp_path, text, fragment):
    cfg = tmp_path / "bad.yaml"
    cfg.write_bytes(text if isinstance(text, bytes) else text.encode())
    line = fails_with(draw("train", "--config", cfg), fragment.replace("{cfg}", str(cfg)))
    assert str(cfg) in line


@pytest.mark.parametrize(
    "text, fragment",
    [
        ("- model\n- train\n", "expected a mapping of sections (model, data, train, run), got list"),
        ("steps=3\n", "expected a mapping of sections (model, data, train, run), got str"),
        ("42\n", "expected a mapping of sections (model, data, train, run), got int"),
        ("model: 3\n", "model: expected a mapping of keys, got 3"),
        ("model:\n  - steps\n", "model: expected a mapping of keys, got ['steps']"),
    ],
    ids=["list", "string", "number", "section-scalar", "section-list"],
)
def test_yaml_that_is_not_a_mapping(tmp_path, text, fragment):
    cfg = tmp_path / "c.yaml"
    cfg.write_text(text)
    line = fails_with(draw("train", "--config", cfg), fragment)
    assert str(cfg) in line


@pytest.mark.parametrize(
    "how, fragment",
    [
        (("yaml", "model:\n  stepz: 3\n"), "model.stepz: unknown key (did you mean 'steps'?)"),
        (("yaml", "modle:\n  steps: 3\n"), "modle: unknown section (did you mean 'model'?)"),
        (("yaml", "train:\n  steps: 3\n"), "train.steps: unknown key (did you mean 'model.glimpses'? glimpses are the drawing steps per image; optimizer steps are train.max_steps)"),
        # the list goes on with every train key
        (("yaml", "train:\n  colour: red\n"), "train.colour: unknown key (valid keys: epochs, batch_size, lr, lr_schedule, "),
        (("set", "model.read_m=3"), "--set model.read_m: unknown key (did you mean 'read_n'?)"),
        (("set", "optim.lr=3"), "--set optim: unknown section (valid keys: model, data, train, run)"),
        (("set", "lr=3"), "--set 'lr=3': expected section.key=value, e.g. train.lr=3e-4"),
    ],
    ids=["key", "section", "other-section", "no-close-match", "set-key", "set-section", "set-no-dot"],
)
def test_unknown_key(tmp_path, how, fragment):
    kind, value = how
    if kind == "yaml":
        cfg = tmp_path / "c.yaml"
        cfg.write_text(value)
        fails_with(draw("train", "--config", cfg), f"{cfg}: {fragment}")
    else:
        fails_with(draw("train", "--set", value), fragment)


@pytest.mark.parametrize(
    "args, fragment",
    [
        (["--set", "model.steps=three"], "--set model.steps: expected an integer, got 'three'"),
        (["--set", "model.steps=2.5"], "--set model.steps: expected an integer, got 2.5"),
        (["--set", "model.attention=maybe"], "--set model.attention: expected true or false, got 'maybe'"),
        (["--set", "train.lr=fast"], "--set train.lr: expected a number, got 'fast'"),
        (["--set", "train.lr=[1, 2]"], "--set train.lr: expected a number, got [1, 2]"),
        (["--set", "train.lr=true"], "--set train.lr: expected a number, got true"),
        (["--set", "data.dataset=7"], "--set data.dataset: expected a string, got 7"),
        (["--set", "run.device=0"], "--set run.device: expected a device name such as 'cpu' or 'cuda:0', got 0"),
        (["--set", "model.hidden="], "--set model.hidden: a value is required, got null"),
        (["--glimpses", "three"], "draw train: invalid value for '--glimpses' / '-T'"),
    ],
    ids=["int-word", "int-float", "bool", "float-word", "float-list", "float-bool", "str-int", "device-int", "null", "flag"],
)
def test_wrong_type(args, fragment, tmp_path):
    result = draw("train", *args)
    if args[0] == "--glimpses":
        # click's own usage error: exit code 2 (as click has it), one line, never a traceback.
        lines = result.stderr.strip().splitlines()
        assert result.exit_code == 2 and len(lines) == 1 and lines[0].startswith("error: ") and fragment in lines[0]
        assert result.exception is None or isinstance(result.exception, SystemExit)
        return
    fails_with(result, fragment)
    # The same rule holds for a value from a settings file.
    section_key, raw = args[1].split("=", 1)
    section, key = section_key.split(".")
    cfg = tmp_path / "c.yaml"
    cfg.write_text(f"{section}:\n  {key}: {raw}\n")
    fails_with(draw("train", "--config", cfg), f"{cfg}: " + fragment.removeprefix("--set "))


@pytest.mark.parametrize(
    "args, fragment",
    [
        (["--steps", "0"], "model.glimpses: must be >= 1, got 0"),
        (["--hidden", "0"], "model.hidden: must be >= 1, got 0"),
        (["--embed", "0"], "model.latent: must be >= 1, got 0"),
        (["--read-n", "0"], "model.read_n: must be >= 1, got 0"),
        (["--read-n", "29"], "model.read_n: must be <= 28 (the image side), got 29"),
        (["--write-n", "0"], "model.write_n: must be >= 1, got 0"),
        (["--write-n", "100"], "model.write_n: must be <= 28 (the image side), got 100"),
        (["--epochs", "0"], "train.epochs: must be >= 1, got 0"),
        (["--batch-size", "0"], "train.batch_size: must be >= 1, got 0"),
        (["--lr", "0"], "train.lr: must be > 0, got 0.0"),
        (["--lr", "-1e-3"], "train.lr: must be > 0, got -0.001"),
        (["--set", "train.lr=.nan"], "--set train.lr: expected a finite number, got nan"),
        (["--set", "train.lr=inf"], "--set train.lr: expected a finite number, got inf"),
        (["--max-steps", "0"], "train.max_steps: must be >= 1, got 0"),
        (["--eval-samples", "0"], "train.eval_samples: must be >= 1, got 0"),
        (["--seed", "-1"], "train.seed: must be >= 0, got -1"),
        (["--set", "train.beta1=1"], "--set train.beta1: must be in [0, 1), got 1.0"),
        (["--set", "train.beta2=-0.1"], "--set train.beta2: must be in [0, 1), got -0.1"),
        (["--set", "train.grad_clip=-1"], "--set train.grad_clip: must be >= 0.0, got -1.0"),
        (["--set", "train.eval_batch_size=0"], "--set train.eval_batch_size: must be >= 1, got 0"),
        (["--set", "train.log_every=0"], "--set train.log_every: must be >= 1, got 0"),
        (["--dataset", "cifar"], "data.dataset: expected one of mnist, fashion-mnist, binarized-mnist, svhn, cifar10, two-digit-mnist or folder:PATH, got 'cifar'"),
        (["--set", "data.binarize=half"], "--set data.binarize: expected one of dynamic, threshold, none, got 'half'"),
        (["--device", "tpu"], "run.device: expected auto, cpu, cuda, cuda:N or mps, got 'tpu'"),
    ],
    ids=lambda v: "_".join(v) if isinstance(v, list) else None,
)
def test_range_rule(args, fragment):
    fails_with(draw("train", *args), fragment)


@pytest.mark.parametrize(
    "argv, fragment",
    [
        (["train", "--config", "{missing}"], "config file not found: {missing}"),
        (["download", "mnist", "--config", "{missing}"], "config file not found: {missing}"),
        (["train", "--config", "{folder}"], "cannot read config file {folder}: Is a directory"),
    ],
    ids=["train", "download", "a-folder"],
)
def test_config_path_that_does_not_exist(tmp_path, argv, fragment):
    names = {"missing": tmp_path / "nope.yaml", "folder": tmp_path}
    fails_with(draw(*[a.format(**names) for a in argv]), fragment.format(**names))


# ----------------------------------------------------------------------------- runs
@pytest.mark.parametrize(
    "argv",
    [
        ["evaluate", "ghost"],
        ["sample", "ghost"],
        ["animate", "ghost"],
        ["inspect-attention", "ghost"],
        ["train", "--resume", "ghost"],
    ],
    ids=lambda a: a[0],
)
def test_run_name_that_does_not_exist_lists_the_existing_ones(runs, env, argv):
    # The folder it looked in, absolute: a relative "runs" says nothing once the cwd is forgotten.
    where = pathlib.Path("runs").absolute()
    fails_with(draw(*argv, env=env), f"run 'ghost' not found in {where} (existing runs: alpha, beta)")


def test_run_name_that_does_not_exist_without_any_runs(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    where = pathlib.Path("runs").absolute()
    fails_with(draw("evaluate", "ghost"), f"run 'ghost' not found in {where} (no runs there yet)")
    fails_with(draw("train", "--resume", "ghost", "--runs-dir", "elsewhere"),
               f"run 'ghost' not found in {pathlib.Path('elsewhere').absolute()} (no runs there yet)")


@pytest.mark.parametrize(
    "argv, fragment",
    [
        (["train", "--name", "a/b"], "run.name: invalid run name 'a/b': start with a letter or digit, then use letters, "
                                     "digits, '.', '_' and '-' (no path separators or '..')"),
        (["train", "--name", "-dash"], "invalid run name '-dash': start with a letter or digit"),
        (["train", "--name", "../evil"], "invalid run name '../evil'"),
        (["train", "--name", ".."], "invalid run name '..'"),
        (["train", "--name", "a..b"], "invalid run name 'a..b'"),
        (["train", "--name", "a\\b"], "invalid run name 'a\\\\b'"),
        (["train", "--set", "run.name=../evil"], "--set run.name: invalid run name '../evil'"),
        (["evaluate", "a..b"], "invalid run name 'a..b'"),
        (["evaluate", "../elsewhere"], "run directory not found: ../elsewhere"),
        (["evaluate", ".."], ".. is not a run directory (no config.yaml in it)"),
        (["sample", "runs/../runs"], "runs/../runs is not a run directory (no config.yaml in it)"),
        (["train", "--resume", "../alpha"], "run directory not found: ../alpha"),
    ],
    ids=["slash", "dash-first", "dotdot-slash", "dotdot", "dotdot-inside", "backslash", "set", "evaluate-dotdot", "evaluate-path",
         "evaluate-parent", "sample-folder", "resume-path"],
)
def test_run_name_with_slash_or_dotdot(runs, env, argv, fragment):
    before = sorted(runs.parent.rglob("*"))  # runs/ and the data beside it
    fails_with(draw(*argv, env=env), fragment)
    assert sorted(runs.parent.rglob("*")) == before  # nothing created
    assert not (runs.parent.parent / "evil").exists()  # nor outside


@pytest.mark.parametrize("command", ["evaluate", "sample", "animate", "inspect-attention"])
@pytest.mark.parametrize(
    "load, fragment",
    [
        ("7", "run 'alpha' has no checkpoint for epoch 7 (epochs with checkpoints: 1, 2)"),
        ("x", "--load: expected an epoch number, 'last' or 'best', got 'x'"),
    ],
    ids=["epoch", "word"],
)
def test_load_of_an_epoch_without_checkpoint_lists_those_that_exist(runs, env, command, load, fragment):
    fails_with(draw(command, "alpha", "--load", load, "--device", "cpu", env=env), fragment)


# ----------------------------------------------------------------------------- checkpoints
def _craft(kind: str, good: dict) -> bytes:
    if kind == "empty":
        return b""
    if kind == "truncated":
        data = torch_bytes(good)
        return data[: len(data) // 2]
    if kind == "truncated-end":
        return torch_bytes(good)[:-20]
    if kind == "bit-flip":  # one flipped bit in the weights: torch.load alone would not notice
        data = bytearray(torch_bytes(good))
        data[len(data) // 2] ^= 0x10
        return bytes(data)
    if kind == "random":
        return np.random.default_rng(0).bytes(4096)
    if kind == "random-zip":
        return b"PK\x03\x04" + np.random.default_rng(1).bytes(4096)
    if kind == "text":
        return b"just some text\n"
    if kind == "not-draw":
        return torch_bytes({"weights": torch.zeros(3), "epoch": 1})
    if kind == "tensor":
        return torch_bytes(torch.zeros(3))
    if kind.startswith("lacks-"):
        return torch_bytes({k: v for k, v in good.items() if k != kind.removeprefix("lacks-")})
    if kind == "newer-format":
        return torch_bytes({**good, "format_version": 3, "package_version": "9.0"})
    if kind == "bad-epoch":
        return torch_bytes({**good, "epoch": "2"})
    if kind == "optimizer-other-hidden":
        return torch_bytes({**good, "optimizer": tiny_checkpoint(hidden=8, trained=True)["optimizer"]})
    if kind == "bad-rng":
        return torch_bytes({**good, "rng": {"data": torch.zeros(3), "noise": good["rng"]["noise"]}})
    if kind == "other-hidden":
        # The weights of a hidden=8 model under a config (and settings) that say hidden=16.
        return torch_bytes({**good, "model": tiny_checkpoint(hidden=8)["model"]})
    if kind == "config-vs-settings":
        # model_config and weights agree (hidden=8) but the saved settings say hidden=16.
        other = tiny_checkpoint(hidden=8)
        return torch_bytes({**good, "model": other["model"], "model_config": other["model_config"]})
    if kind == "missing-weight":
        return torch_bytes({**good, "model": {k: v for i, (k, v) in enumerate(good["model"].items()) if i}})
    if kind == "bad-settings":
        return torch_bytes({**good, "settings": {"model": {"stepz": 3}}})
    if kind == "window-wider-than-image":
        return torch_bytes({**good, "model_config": {**good["model_config"], "read_n": 29}})
    if kind == "bad-model-config":
        return torch_bytes({**good, "model_config": {**good["model_config"], "hidden": -4}})
    raise AssertionError(kind)


CHECKPOINT_CASES = [
    ("empty", "checkpoint is empty (0 bytes)"),
    ("truncated", "not a readable checkpoint (truncated or corrupt?): File is not a zip file"),
    ("truncated-end", "not a readable checkpoint (truncated or corrupt?): File is not a zip file"),
    ("bit-flip", "not a readable checkpoint (corrupt: archive/data/"),
    ("random", "not a drawcli checkpoint (not a PyTorch zip file; it starts with 5f82c2d9)"),
    ("random-zip", "not a readable checkpoint (truncated or corrupt?): File is not a zip file"),
    ("text", "not a drawcli checkpoint (not a PyTorch zip file; it starts with 6a757374)"),
    ("not-draw", "not a drawcli checkpoint (no format 'drawcli-checkpoint' in it; its keys: epoch, weights)"),
    ("tensor", "not a drawcli checkpoint (a Tensor, not a dict)"),
    ("newer-format", "written by a newer drawcli (9.0, checkpoint format 3); this one reads format 2: upgrade drawcli"),
    ("lacks-model", "checkpoint lacks 'model'"),
    ("other-hidden", ("model weights do not match its model_config (glimpses=2, hidden=16, latent=4, attention=True, "
                      "read_n=2, write_n=3): {first_differing} is {shape8}, expected {shape16}")),
    ("config-vs-settings", ("model_config (hidden=8) disagrees with its saved settings (model.hidden=16): "
                            "the file was altered or is corrupt")),
    ("missing-weight", ("model weights do not match its model_config (glimpses=2, hidden=16, latent=4, attention=True, "
                        "read_n=2, write_n=3): missing {first_weight}")),
    ("bad-settings", "saved settings: model.stepz: unknown key (did you mean 'steps'?)"),
    ("bad-model-config", "model_config: model.hidden: must be >= 1, got -4"),
    ("window-wider-than-image", "model_config: model.read_n: must be <= 28 (the image side), got 29"),
    ("bad-epoch", "epoch must be a whole number >= 0, got '2'"),
    ("optimizer-other-hidden", ("optimizer state does not match the model: exp_avg of parameter {first_param} is "
                                "{param8}, expected {param16}")),
    ("bad-rng", "rng must be a mapping of names to generator states (1-D uint8 tensors)"),
]
RESUME_ONLY_CASES = [
    # Evaluating needs neither; resuming needs both.
    ("lacks-optimizer", "checkpoint lacks 'optimizer'"),
    ("lacks-rng", "checkpoint lacks 'rng'"),
]


def _shape_names() -> dict:
    """Names and shapes the messages quote, taken from the model itself (hidden 16 against 8)."""

    def fmt(t):
        return "(" + ", ".join(map(str, t.shape)) + ")"

    w16, w8 = tiny_checkpoint()["model"], tiny_checkpoint(hidden=8)["model"]
    differing = next(k for k in w16 if w16[k].shape != w8[k].shape)
    p16, p8 = [list(build_model(tiny_settings("x", hidden=h), 28, 28).parameters()) for h in (16, 8)]
    first_param = next(i for i, (a, b) in enumerate(zip(p16, p8)) if a.shape != b.shape)
    return {"first_differing": differing, "shape8": fmt(w8[differing]), "shape16": fmt(w16[differing]),
            "first_weight": next(iter(w16)), "first_param": first_param,
            "param8": fmt(p8[first_param]), "param16": fmt(p16[first_param])}


@pytest.mark.filterwarnings("error")  # a warning torch prints on the way would be a second stderr line
@pytest.mark.parametrize(
    "command, kind, fragment",
    [pytest.param(command, kind, fragment, id=f"{kind}-{command}")
     for kind, fragment in CHECKPOINT_CASES for command in ("evaluate", "resume")]
    + [pytest.param("resume", kind, fragment, id=f"{kind}-resume")
       for kind, fragment in RESUME_ONLY_CASES],
)
def test_bad_checkpoint(runs, env, command, kind, fragment):
    if "{" in fragment:
        fragment = fragment.format(**_shape_names())
    last = runs / "alpha" / "checkpoints" / "last.pt"
    data = _craft(kind, ckpt_io.load(last))
    last.unlink()  # a link to epoch_002.pt: replace it, leave the epoch file alone
    last.write_bytes(data)
    (runs / "alpha" / "checkpoints" / "best.pt").unlink()  # evaluate falls back to last.pt
    before = sorted(p.name for p in (runs / "alpha").rglob("*"))
    # The file is named (--load last, or its path): without that, both would go on from the run's
    # newest readable checkpoint, epoch_002.pt (issue 26 item 3, tests/test_checkpoint.py).
    if command == "evaluate":
        result = draw("evaluate", "alpha", "--load", "last", "--device", "cpu", "--samples", "1", "--limit", "2", env=env)
    else:
        result = draw("train", "--resume", "runs/alpha/checkpoints/last.pt", "--epochs", "3", env=env)
    fails_with(result, "error: runs/alpha/checkpoints/last.pt: " + fragment)
    assert last.read_bytes() == data  # nothing rewritten
    assert sorted(p.name for p in (runs / "alpha").rglob("*")) == before  # nothing written


# ----------------------------------------------------------------------------- data files
def _good_idx() -> bytes:
    return idx_bytes(synthetic_images(96, seed=1))


DATA_CASES = {
    "wrong-magic": (lambda: b"\x00\x00\x08\x01" + _good_idx()[4:], "train-images-idx3-ubyte: not an IDX ubyte file with 3 dimension(s) (magic 00000801, expected 00000803)"),
    "text-file": (lambda: b"<html>not found</html>\n", "train-images-idx3-ubyte: not an IDX ubyte file with 3 dimension(s) (magic 3c68746d, expected 00000803)"),
    "empty": (lambda: b"", "train-images-idx3-ubyte: not an IDX ubyte file with 3 dimension(s) (magic missing, expected 00000803)"),
    "truncated-header": (lambda: _good_idx()[:10], "train-images-idx3-ubyte: truncated IDX header"),
    "truncated-data": (lambda: _good_idx()[:-100], "train-images-idx3-ubyte: truncated IDX data: 75180 bytes, header (96, 28, 28) needs 75280"),
    "too-long": (lambda: _good_idx() + b"\x00" * 7, "train-images-idx3-ubyte: too long IDX data: 75287 bytes, header (96, 28, 28) needs 75280"),
    "wrong-size": (lambda: idx_bytes(np.zeros((5, 20, 20), np.uint8)), "train-images-idx3-ubyte: images are (20, 20), expected (28, 28)"),
    "huge-header": (lambda: b"\x00\x00\x08\x03" + (2**31).to_bytes(4, "big") * 3 + b"\x00" * 64, "train-images-idx3-ubyte: truncated IDX data: 80 bytes, header (2147483648, 2147483648, 2147483648) needs 9903520314283042199192993808"),
}


@pytest.mark.parametrize("kind", list(DATA_CASES))
def test_bad_idx_file(synthetic_data_dir, tmp_path, monkeypatch, kind):
    monkeypatch.chdir(tmp_path)
    make, fragment = DATA_CASES[kind]
    path = synthetic_data_dir / "mnist" / "train-images-idx3-ubyte"
    path.write_bytes(make())
    line = fails_with(draw("train", *TRAIN_FLAGS, env={"DRAW_DATA_DIR": str(synthetic_data_dir)}), fragment)
    assert str(path) in line
    assert not (tmp_path / "runs").exists()  # no half-made run directory


def _zero_crc(gz: bytes) -> bytes:
    return gz[:-8] + bytes(4) + gz[-4:]  # the trailer is CRC32, then the size


GZIP_CASES = {
    "garbage": lambda good: b"\x1f\x8b\x08\x00" + b"\x00" * 6 + np.random.default_rng(2).bytes(500),
    "truncated": lambda good: gzip.compress(good)[:300],
    "bad-crc": lambda good: _zero_crc(gzip.compress(good)),
    "header-only": lambda good: b"\x1f\x8b",
}


@pytest.mark.parametrize("kind", list(GZIP_CASES))
def test_corrupt_gzip(synthetic_data_dir, tmp_path, monkeypatch, kind):
    monkeypatch.chdir(tmp_path)
    folder = synthetic_data_dir / "mnist"
    raw = folder / "train-images-idx3-ubyte"
    good = raw.read_bytes()
    raw.unlink()
    gz = folder / "train-images-idx3-ubyte.gz"
    gz.write_bytes(GZIP_CASES[kind](good))
    fails_with(draw("train", *TRAIN_FLAGS, env={"DRAW_DATA_DIR": str(synthetic_data_dir)}), f"{gz}: corrupt gzip data (")
    assert not (tmp_path / "runs").exists()


def test_bad_amat_file(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    folder = tmp_path / "data" / "binarized-mnist"
    folder.mkdir(parents=True)
    (folder / "binarized_mnist_train.amat").write_text("0 1 0\n1 1 1\n")
    fails_with(
        draw("train", *TRAIN_FLAGS, "--dataset", "binarized-mnist", env={"DRAW_DATA_DIR": str(tmp_path / "data")}),
        "binarized_mnist_train.amat: expected 784 pixels on each of 2 lines, got 6 in all",
    )


# ----------------------------------------------------------------------------- unwritable paths


@pytest.mark.parametrize(
    "argv, fragment",
    [
        (["download", "mnist", "--data-dir", "{file}/sub"], "cannot create data directory {file}/sub/mnist: Not a directory"),
        (["train", *TRAIN_FLAGS, "--data-dir", "{file}/sub"], "cannot create data directory {file}/sub/mnist: Not a directory"),
        (["train", *TRAIN_FLAGS, "--set", "run.runs_dir={file}/runs"], "cannot create run directory {file}/runs/run1: Not a directory"),
        pytest.param(["sample", "alpha", "--device", "cpu", "-n", "2", "-o", "{file}/sub/out.png"],
                     "cannot write {file}/sub/out.png: {file} is not a folder", id="sample-output"),
        pytest.param(["animate", "alpha", "--device", "cpu", "-n", "2", "-o", "{file}/sub/out.gif"],
                     "cannot write {file}/sub/out.gif: {file} is not a folder", id="animate-output"),
        pytest.param(["inspect-attention", "alpha", "--device", "cpu", "-n", "1", "--json", "{file}/sub/a.json"],
                     "cannot write {file}/sub/a.json: {file} is not a folder", id="inspect-json"),
    ],
    ids=["download-data-dir", "train-data-dir", "runs-dir", "sample-output", "animate-output", "inspect-json"],
)
def test_path_that_cannot_be_written(runs, env, a_file, argv, fragment):
    argv = [a.format(file=a_file) for a in argv]
    fails_with(draw(*argv, env=env), fragment.format(file=a_file))
    assert a_file.read_text() == "not a directory\n"


# ----------------------------------------------------------------------------- output formats
@pytest.mark.parametrize(
    "argv, fragment",
    [
        (["sample", "alpha", "-o", "out.bmp"], "out.bmp: samples are written as PNG; use a .png file name"),
        (["sample", "alpha", "-o", "out"], "out: samples are written as PNG; use a .png file name"),
        (["animate", "alpha", "-o", "out.xyz"], "out.xyz: the animation must be a .gif or .mp4 file"),
        (["animate", "alpha", "-o", "out.png"], "out.png: the animation must be a .gif or .mp4 file"),
        (["inspect-attention", "alpha", "-o", "out.avi"], "out.avi: the animation must be a .gif or .mp4 file"),
    ],
    ids=["sample-bmp", "sample-no-suffix", "animate-xyz", "animate-png", "inspect-avi"],
)
def test_output_format_that_is_not_supported(runs, env, argv, fragment):
    fails_with(draw(*argv, "--device", "cpu", "-n", "1", env=env), fragment)
    assert not list(runs.parent.glob("out*"))


# ----------------------------------------------------------------------------- a full disk
def test_no_free_disk_while_writing_a_checkpoint(tmp_path, monkeypatch, env):
    """ENOSPC in the middle of a checkpoint write: one line, the previous checkpoint intact, no temp file."""
    monkeypatch.chdir(tmp_path)
    assert draw("train", *TRAIN_FLAGS, "--name", "full", env=env).exit_code == 0
    ckpts = tmp_path / "runs" / "full" / "checkpoints"
    before = {p.name: p.read_bytes() for p in ckpts.iterdir()}
    assert set(before) == {"epoch_001.pt", "last.pt", "best.pt"}

    real_save = torch.save

    def save_until_the_disk_is_full(obj, f, *args, **kwargs):
        real_save(obj, f, *args, **kwargs)  # some bytes reach the temp file first
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(torch, "save", save_until_the_disk_is_full)
    result = draw("train", "--resume", "full", "--epochs", "2", env=env)
    fails_with(result, "error: cannot write checkpoint runs/full/checkpoints/epoch_002.pt: No space left on device "
                       "(the previous file, if any, is unchanged)")
    after = {p.name: p.read_bytes() for p in ckpts.iterdir()}
    assert after == before  # byte-identical, and no temp file (nor a half epoch_002.pt) left
    assert ckpt_io.load(ckpts / "last.pt")["step"] == 3

    # Replacing last.pt itself (what an interrupt does) fails the same way and keeps the old one.
    from drawcli.runs.store import RunRecorder

    with pytest.raises(Exception, match="No space left on device"):
        RunRecorder(ckpts.parent).on_interrupt(ckpt_io.load(ckpts / "last.pt"))
    assert {p.name: p.read_bytes() for p in ckpts.iterdir()} == before

    # Space again: the run resumes from the checkpoint that survived.
    monkeypatch.setattr(torch, "save", real_save)
    result = draw("train", "--resume", "full", "--epochs", "2", env=env)
    assert result.exit_code == 0, result.output
    assert ckpt_io.load(ckpts / "last.pt")["step"] == 6


# ----------------------------------------------------------------------------- untrusted files
class _RunsShell:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


class _TouchesFile:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (pathlib.Path.touch, (pathlib.Path(self.marker),))


def _evil(kind: str, marker: pathlib.Path, good: dict) -> bytes:
    if kind == "torch-os-system":  # a real checkpoint with one extra object in it
        return torch_bytes({**good, "metrics": _RunsShell(marker)})
    if kind == "torch-path-touch":
        return torch_bytes(_TouchesFile(marker))
    if kind == "pickle-protocol-2":
        return pickle.dumps({**good, "extra": _RunsShell(marker)}, protocol=2)
    if kind == "pickle-default":
        return pickle.dumps(_TouchesFile(marker))
    raise AssertionError(kind)


@pytest.mark.filterwarnings("error")
@pytest.mark.parametrize("command", ["evaluate", "resume"])
@pytest.mark.parametrize(
    "kind, fragment",
    [
        ("torch-os-system", "refused to load: the checkpoint holds Python objects, not only tensors and plain data (posix.system)"),
        ("torch-path-touch", "refused to load: the checkpoint holds Python objects, not only tensors and plain data (getattr)"),
        ("pickle-protocol-2", "refused to load: a bare pickle, not a drawcli checkpoint"),
        ("pickle-default", "refused to load: a bare pickle, not a drawcli checkpoint"),
    ],
)
def test_checkpoint_that_would_run_code_is_refused_and_never_runs(runs, env, tmp_path, command, kind, fragment):
    marker = tmp_path / "MARKER"
    # The payload really runs when unpickled without weights_only: the test can fail.
    pickle.loads(pickle.dumps(_RunsShell(marker)))
    assert marker.exists()
    marker.unlink()

    last = runs / "alpha" / "checkpoints" / "last.pt"
    data = _evil(kind, marker, ckpt_io.load(last))
    for name in ("last.pt", "best.pt"):
        (last.parent / name).unlink()
    last.write_bytes(data)
    # Named, so that the run's readable epoch_002.pt is not used in its place (issue 26 item 3).
    if command == "evaluate":
        result = draw("evaluate", "alpha", "--load", "last", "--device", "cpu", "--samples", "1", env=env)
    else:
        result = draw("train", "--resume", "runs/alpha/checkpoints/last.pt", "--epochs", "3", env=env)
    line = fails_with(result, "error: runs/alpha/checkpoints/last.pt: " + fragment)
    assert "weights_only" not in line  # no advice to turn the protection off
    assert not marker.exists()


@pytest.mark.parametrize(
    "tag",
    [
        '!!python/object/apply:os.system ["touch {marker}"]',
        "!!python/object/new:pathlib.PosixPath ['{marker}']",
        "!!python/name:os.system",
    ],
    ids=["apply", "new", "name"],
)
@pytest.mark.parametrize("where", ["document", "value"])
def test_yaml_python_tag_is_refused(tmp_path, tag, where):
    marker = tmp_path / "MARKER"
    cfg = tmp_path / "evil.yaml"
    tag = tag.format(marker=marker)
    cfg.write_text(tag + "\n" if where == "document" else f"run:\n  name: {tag}\n")
    line = fails_with(draw("train", "--config", cfg), f"{cfg}: not valid YAML (line ")
    name = tag.split()[0].split("[")[0]
    assert line.endswith(f": tag {name} refused (settings files hold plain values only; nothing in them is run)")
    assert not marker.exists()


# ----------------------------------------------------------------------------- colour and folder data sets (issue 16)
def _folder_case(root: pathlib.Path, kind: str) -> pathlib.Path:
    """A folder of pictures with one problem; returns the path the message must name."""
    from PIL import Image

    root.mkdir(parents=True)
    if kind == "empty":
        (root / "notes.txt").write_text("no pictures here\n")
        return root
    Image.new("RGB", (8, 8), (10, 20, 30)).save(root / "a.png")
    if kind == "corrupt":
        (root / "cats").mkdir()
        (root / "cats" / "b.jpg").write_bytes(b"this is not a JPEG\n")
        return root / "cats" / "b.jpg"
    if kind == "mixed-sizes":
        Image.new("RGB", (12, 10), (10, 20, 30)).save(root / "b.png")
        return root / "b.png"
    raise AssertionError(kind)


@pytest.mark.parametrize(
    "kind, fragment",
    [
        ("empty", "{path}: no PNG, JPEG, BMP or GIF images in this folder or its subfolders (skipped 1 file not PNG, JPEG, BMP or GIF (notes.txt))"),
        ("corrupt", "{path}: cannot read this image (not an image Pillow can identify)"),
        ("mixed-sizes", "{path}: 12x10 pixels, but the first image, {root}/a.png, is 8x8 (width x height); set data.image_size (--image-size S) to resize every image to one square size"),
        ("missing", "{path}: no such folder (data.dataset folder:{path})"),
    ],
)
def test_bad_image_folder(tmp_path, monkeypatch, kind, fragment):
    monkeypatch.chdir(tmp_path)
    root = tmp_path / "pictures"
    path = root if kind == "missing" else _folder_case(root, kind)
    fails_with(draw("train", *TRAIN_FLAGS, "--dataset", f"folder:{root}", "--data-dir", tmp_path / "data"),
               fragment.format(path=path, root=root))
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize(
    "args, fragment",
    [
        (["--dataset", "folder:"], "data.dataset: folder: needs a path to a folder of images, e.g. folder:~/pictures"),
        (["--set", "data.dataset=folder:"], "--set data.dataset: folder: needs a path to a folder of images"),
        (["--set", "data.channels=2"], "--set data.channels: expected 1 (grey) or 3 (colour), got 2"),
        (["--set", "data.image_size=0"], "--set data.image_size: must be >= 1, got 0"),
        (["--set", "data.image_size=32"], "--set data.image_size: only for folder:PATH data sets; mnist has fixed 28x28 images and its own splits"),
        (["--set", "data.test_fraction=1.5"], "--set data.test_fraction: must be in (0, 1), got 1.5"),
        (["--dataset", "cifar10", "--set", "data.channels=1"], "--set data.channels: cifar10 has 3 channel(s), got 1; leave it unset for a registry data set"),
    ],
    ids=["folder-empty-path", "set-folder-empty-path", "channels", "image-size-zero", "image-size-registry",
         "test-fraction", "channels-registry"],
)
def test_bad_data_setting(args, fragment):
    fails_with(draw("train", *args), fragment)


@pytest.mark.parametrize("command", ["sample", "animate --reconstruct", "inspect-attention"])
@pytest.mark.parametrize(
    "kind, fragment",
    [
        ("missing", "{root}: no such folder (data.dataset folder:{root})"),
        ("other-size", "folder:{root} images are 8x8 with 3 channels but the model draws 10x12 with 3 channels"),
    ],
)
def test_pictures_of_a_colour_run_without_its_pictures(tmp_path, command, kind, fragment):
    """The picture commands read a folder run's test images from its folder: gone or resized, one line."""
    from PIL import Image

    from helpers import make_colour_run

    root = tmp_path / "pictures"
    if kind == "other-size":
        root.mkdir()
        for i in range(4):
            Image.new("RGB", (8, 8), (10 * i, 20, 30)).save(root / f"{i}.png")
    make_colour_run(tmp_path / "runs", "rgb", root, tmp_path / "data")
    args = [*command.split(), "rgb", "-n", "1", "--runs-dir", tmp_path / "runs", "--device", "cpu"]
    result = draw(*args)
    if command == "sample":  # prior samples need no data: it works whatever happened to the folder
        assert result.exit_code == 0, result.output
        return
    fails_with(result, fragment.format(root=root))


def test_two_digit_mnist_without_mnist(tmp_path):
    root = tmp_path / "data"
    fails_with(draw("download", "two-digit-mnist", "--data-dir", root),
               f"data set 'two-digit-mnist' is built from 'mnist', which is not installed in {root}; "
               f"run `draw download mnist --data-dir {root}` first")


def _archive_with(member) -> bytes:
    from colour_files import cifar_archive

    return cifar_archive(per_batch=1, n_test=1, more=[member])[0]


def _cifar_case(kind: str, marker: pathlib.Path) -> bytes:
    import tarfile

    from colour_files import cifar_archive, file_member, py2_pickle

    if kind == "dotdot":
        return _archive_with(file_member("cifar-10-batches-py/../../evil", b"x"))
    if kind == "absolute":
        return _archive_with(file_member("/tmp/drawcli-evil", b"x"))
    if kind == "symlink":
        info = tarfile.TarInfo("cifar-10-batches-py/data_batch_1")
        info.type, info.linkname = tarfile.SYMTYPE, "/etc/passwd"
        return _archive_with((info, None))
    if kind == "os-system-pickle":
        return cifar_archive(per_batch=1, n_test=1,
                             replace={"cifar-10-batches-py/test_batch": py2_pickle(_RunsShell(marker))})[0]
    raise AssertionError(kind)


@pytest.mark.parametrize(
    "kind, fragment",
    [
        ("dotdot", "{archive}: refused to extract member 'cifar-10-batches-py/../../evil': '..' in its path; nothing was extracted"),
        ("absolute", "{archive}: refused to extract member '/tmp/drawcli-evil': an absolute path; nothing was extracted"),
        ("symlink", "{archive}: refused to extract member 'cifar-10-batches-py/data_batch_1': a link (to '/etc/passwd')"),
        ("os-system-pickle", "{archive}: cifar-10-batches-py/test_batch: refused to unpickle posix.system: CIFAR batches hold only numpy arrays and plain data (nothing in the file was run)"),
    ],
)
def test_untrusted_cifar_archive(tmp_path, monkeypatch, kind, fragment):
    monkeypatch.chdir(tmp_path)
    marker = tmp_path / "MARKER"
    archive = tmp_path / "data" / "cifar10" / "cifar-10-python.tar.gz"
    archive.parent.mkdir(parents=True)
    archive.write_bytes(_cifar_case(kind, marker))
    fails_with(draw("train", *TRAIN_FLAGS, "--dataset", "cifar10", "--data-dir", tmp_path / "data"),
               fragment.format(archive=archive))
    assert not marker.exists() and not (tmp_path / "evil").exists() and not pathlib.Path("/tmp/drawcli-evil").exists()
    assert sorted(p.name for p in archive.parent.iterdir()) == ["cifar-10-python.tar.gz"]  # no scratch, no cache
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize(
    "content, fragment",
    [
        (b"<html>404 Not Found</html>\n", "train_32x32.mat: not a readable MATLAB .mat file"),
        (b"", "train_32x32.mat: not a readable MATLAB .mat file"),
    ],
    ids=["html", "empty"],
)
def test_bad_svhn_file(tmp_path, monkeypatch, content, fragment):
    monkeypatch.chdir(tmp_path)
    folder = tmp_path / "data" / "svhn"
    folder.mkdir(parents=True)
    (folder / "train_32x32.mat").write_bytes(content)
    fails_with(draw("train", *TRAIN_FLAGS, "--dataset", "svhn", "--data-dir", tmp_path / "data"), fragment)
    assert not (tmp_path / "runs").exists()
