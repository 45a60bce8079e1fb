"""drawcli/cli.py: shared options, help defaults from the settings, --precision on the model commands,
usage errors in one line (before torch loads), and the examples of --help."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import typer.main
from typer.testing import CliRunner

from drawcli.cli import app
from drawcli.commands import pictures as pictures_cmd
from drawcli.commands.options import SampleOptions
from drawcli.settings import ModelSettings, TrainSettings

from helpers import ok, one_error_line, run_cli
from test_viz import make_run


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("runs")
    make_run(root, "att")
    return root


def test_help_defaults_come_from_the_settings():
    params = {p.name: p for p in typer.main.get_command(app).commands["train"].params}
    assert f"default {ModelSettings.glimpses}; old name --steps)" in params["glimpses"].help
    assert params["glimpses_alias"].opts == ["--steps", "--step"] and params["glimpses_alias"].hidden  # it warns when used
    assert f"default {TrainSettings.batch_size})" in params["batch_size"].help
    assert f"default {TrainSettings.precision})" in params["precision"].help


@pytest.mark.parametrize("command", ["sample", "animate", "inspect-attention", "evaluate"])
def test_shared_options_are_the_same_everywhere(command):
    params = {p.name: p for p in typer.main.get_command(app).commands[command].params}
    for name in ("load", "seed", "device", "runs_dir", "precision"):
        assert name in params, name
    assert params["precision"].default == "float32" and params["device"].default == "auto"


@pytest.mark.parametrize("command", ["sample", "animate", "inspect-attention", "evaluate"])
def test_each_option_is_a_field_of_the_command_options_with_its_default(command):
    """The command line's options are the options object's fields, with the same defaults: declared once."""
    import dataclasses

    from drawcli.commands import options

    kind = {"sample": options.SampleOptions, "animate": options.AnimateOptions,
            "inspect-attention": options.InspectOptions, "evaluate": options.EvaluateOptions}[command]
    params = {p.name: p for p in typer.main.get_command(app).commands[command].params}
    fields = {f.name: f for f in dataclasses.fields(kind)}
    assert set(params) == set(fields)
    for name, field in fields.items():
        if name != "run":
            assert params[name].default == field.default, name


@pytest.mark.parametrize("command", ["sample", "animate", "inspect-attention", "evaluate"])
def test_a_bad_precision_is_one_line_before_torch(command, tmp_path):
    code = (
        "import sys\n"
        "from typer.testing import CliRunner\n"
        "from drawcli.cli import app\n"
        f"r = CliRunner().invoke(app, [{command!r}, 'nosuch', '--precision', 'half'])\n"
        "print(r.exit_code, repr(r.output), 'torch' in sys.modules)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=tmp_path).stdout
    assert out.startswith("1 'error: --precision: expected one of float32, bfloat16, auto, got 'half'") or \
        out.startswith("1 \"error: --precision: expected one of float32, bfloat16, auto, got 'half'")
    assert out.strip().endswith("False")


def test_sample_in_bfloat16_is_close_to_float32(runs, tmp_path):
    a = pictures_cmd.sample_command(SampleOptions("att", n=4, npy=True, device="cpu", runs_dir=runs, output=tmp_path / "f32.png"), console=_quiet())
    b = pictures_cmd.sample_command(SampleOptions("att", n=4, npy=True, device="cpu", runs_dir=runs, output=tmp_path / "bf16.png", precision="bfloat16"), console=_quiet())
    f32, bf16 = np.load(a[1]), np.load(b[1])
    assert f32.dtype == np.float32 and bf16.dtype == np.float32
    assert np.abs(f32 - bf16).max() < 0.1


@pytest.mark.parametrize("command", ["sample", "animate", "inspect-attention"])
def test_precision_reaches_the_model(command, runs, tmp_path, monkeypatch):
    import drawcli.core.device

    seen = []
    real = drawcli.core.device.autocast

    def spy(device, precision):
        seen.append(precision)
        return real(device, precision)

    monkeypatch.setattr(drawcli.core.device, "autocast", spy)
    extra = ["--generate", "-n", "2"] if command == "inspect-attention" else ["-n", "2"]
    out = tmp_path / ("x.png" if command == "sample" else "x.gif")
    r = CliRunner().invoke(app, [command, "att", "--runs-dir", str(runs), "--device", "cpu", "--precision", "bfloat16",
                                 "-o", str(out), *extra])
    assert r.exit_code == 0, r.output
    assert seen and set(seen) == {"bfloat16"}


def test_evaluate_states_its_precision(runs, tmp_path, synthetic_data_dir):
    outputs = {}
    for precision in ("float32", "bfloat16"):
        out = tmp_path / f"{precision}.json"
        r = CliRunner().invoke(app, ["evaluate", "att", "--runs-dir", str(runs), "--device", "cpu", "--samples", "2",
                                     "--limit", "8", "--data-dir", str(synthetic_data_dir), "--precision", precision,
                                     "-o", str(out)])
        assert r.exit_code == 0, r.output
        outputs[precision] = json.loads(out.read_text())
        assert f"8 mnist test images, {precision}" in " ".join(r.output.split())
    assert outputs["float32"]["precision"] == "float32" and outputs["bfloat16"]["precision"] == "bfloat16"
    assert abs(outputs["float32"]["elbo"] - outputs["bfloat16"]["elbo"]) < 0.05 * abs(outputs["float32"]["elbo"])


def _quiet():
    from rich.console import Console

    return Console(quiet=True)


def test_download_extra_reaches_the_downloader(monkeypatch, tmp_path):
    """`draw download svhn --extra` asks for the set's optional files (svhn's extra_32x32.mat)."""
    from drawcli.commands import download

    seen = {}
    monkeypatch.setattr(download, "download_command", lambda name, data_dir, **kw: seen.update(name=name, **kw))
    result = CliRunner().invoke(app, ["download", "svhn", "--extra", "--data-dir", str(tmp_path)])
    assert result.exit_code == 0, result.output
    assert seen["name"] == "svhn" and seen["extra"] is True
    CliRunner().invoke(app, ["download", "svhn", "--data-dir", str(tmp_path)])
    assert seen["extra"] is False


@pytest.mark.parametrize("flag, hint", [("--learning-rate", "--lr"), ("--batch", "--batch-size"), ("--z-dim", "--latent")])
def test_a_flag_by_another_name_suggests_the_real_one(flag, hint):
    r = CliRunner().invoke(app, ["train", flag, "3"])
    assert r.exit_code == 2 and f"error: draw train: unknown option {flag} (did you mean {hint}?)" in r.output, r.output


def test_a_run_not_found_says_where_runs_are_looked_up_and_draw_runs_dir_works(tmp_path, monkeypatch, runs):
    monkeypatch.chdir(tmp_path)
    r = CliRunner().invoke(app, ["sample", "att"])
    assert r.exit_code == 1
    assert f"run 'att' not found in {tmp_path / 'runs'} (no runs there yet); runs elsewhere: --runs-dir DIR or " \
           "DRAW_RUNS_DIR=DIR" in " ".join(r.output.split()), r.output
    r = CliRunner().invoke(app, ["sample", "att", "-n", "2", "--device", "cpu", "-o", "s.png"], env={"DRAW_RUNS_DIR": str(runs)})
    assert r.exit_code == 0 and (tmp_path / "s.png").is_file(), r.output
    r = CliRunner().invoke(app, ["runs", "--json"], env={"DRAW_RUNS_DIR": str(runs)})
    assert [row["name"] for row in json.loads(r.stdout)] == ["att"]


def test_picture_commands_print_no_engine_line(runs, tmp_path):
    """The engine matters for training and evaluation (said there); sample and animate just draw."""
    for argv in (["sample", "att", "-n", "2", "-o", tmp_path / "s.png"], ["animate", "att", "-n", "2", "-o", tmp_path / "a.gif"]):
        r = CliRunner().invoke(app, [str(a) for a in argv] + ["--device", "cpu", "--runs-dir", str(runs)])
        assert r.exit_code == 0 and "engine" not in r.output, r.output


# ----------------------------------------------------------------------------- usage errors
@pytest.mark.parametrize(
    "argv, fragment",
    [
        (["train", "--epocs", "3"], "draw train: unknown option --epocs (did you mean --epochs?)"),
        (["train", "--lr", "abc"], "draw train: invalid value for '--lr'"),
        (["sample"], "draw sample: missing argument 'run' (see draw sample --help)"),
        (["trian"], "unknown command 'trian' (did you mean 'train'?)"),
        (["evaluate", "x", "--sampels", "3"], "draw evaluate: unknown option --sampels (did you mean --samples?)"),
    ],
    ids=["unknown-option", "bad-number", "missing-argument", "unknown-command", "evaluate-option"],
)
def test_usage_errors_are_one_line_with_a_suggestion(argv, fragment):
    one_error_line(run_cli(*argv), fragment, code=2)


def test_the_installed_entry_point_says_the_same():
    r = subprocess.run([sys.executable, "-m", "drawcli", "train", "--epocs", "3"], capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and r.stderr == "error: draw train: unknown option --epocs (did you mean --epochs?)\n"


def test_lookup_errors_are_answered_before_torch_is_imported(tmp_path):
    run = tmp_path / "runs" / "tiny"
    (run / "checkpoints").mkdir(parents=True)
    (run / "config.yaml").write_text("model: {steps: 2}\n")
    (run / "checkpoints" / "last.pt").write_bytes(b"")  # only looked up, never loaded, in these cases
    cases = [
        (["sample", "nosuch"], "run 'nosuch' not found in"),
        (["animate", "tiny", "-o", "a.png"], "a.png: the animation must be a .gif or .mp4 file"),
        (["inspect-attention", "tiny", "-o", "a.avi"], "a.avi: the animation must be a .gif or .mp4 file"),
        (["evaluate", "nosuch"], "run 'nosuch' not found in"),
        (["evaluate", "tiny", "--split", "dev"], "--split: expected one of test, valid, train"),
        (["sample", "tiny", "--load", "7"], "has no checkpoint for epoch 7"),
        (["sample", "tiny", "--device", "tpu"], "run.device: expected auto, cpu, cuda, cuda:N or mps"),
        (["train", "--resume", "nosuch"], "run 'nosuch' not found in"),
        (["train", "--name", "tiny"], "run 'tiny' already exists"),
    ]
    for argv, fragment in cases:
        code = (
            "import sys\n"
            "from drawcli.cli import app\n"
            f"try:\n    app({argv!r}, prog_name='draw')\n"
            "except SystemExit as e:\n    code = e.code\n"
            "print('TORCH' if 'torch' in sys.modules else 'NO_TORCH', code)\n"
        )
        r = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=60)
        assert fragment in r.stderr and r.stderr.count("\n") == 1, (argv, r.stderr)
        assert r.stdout.split() == ["NO_TORCH", "1"], (argv, r.stdout)


# ----------------------------------------------------------------------------- the examples of --help
def help_examples(command: str) -> list[str]:
    """The `draw ...` lines of a command's --help epilog, without their comments."""
    epilog = typer.main.get_command(app).commands[command].epilog
    return [line.strip().split("  (")[0].strip() for line in epilog.splitlines() if line.strip().startswith("draw ")]


def test_help_examples_run_as_written(workdir):
    """Every example of sample, animate, inspect-attention and evaluate that names the built-in
    model runs as written (MNIST here: 16 synthetic test images); no example names a run a
    newcomer does not have, like run1."""
    import shlex

    from helpers import idx_bytes, synthetic_images

    data = workdir / "data" / "mnist"
    data.mkdir(parents=True)
    (data / "train-images-idx3-ubyte").write_bytes(idx_bytes(synthetic_images(96, seed=1)))
    (data / "t10k-images-idx3-ubyte").write_bytes(idx_bytes(synthetic_images(16, seed=2)))
    ran = 0
    for command in ("train", "download", "sample", "animate", "inspect-attention", "evaluate", "plot", "runs", "models"):
        for example in help_examples(command):
            assert "run1" not in example, example
            if command in ("sample", "animate", "inspect-attention", "evaluate") and "@mnist" in example and ".mp4" not in example:
                ok(run_cli(*shlex.split(example)[1:], env={"DRAW_DATA_DIR": str(workdir / "data")}))
                ran += 1
    assert ran >= 11
    assert {p.name for p in workdir.iterdir()} >= {"digits.png", "out.gif", "boxes.gif", "recon.gif", "attention.json", "prior.gif",
                                                   "results", "mnist-samples-n64-seed0.png"}
