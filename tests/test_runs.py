"""drawcli/runs/store.py: run lookup and one load_run for runs and built-in models (@NAME)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch
from typer.testing import CliRunner

from drawcli.cli import app
from drawcli.core.errors import DrawError
from drawcli.runs import store as runs
from drawcli.runs.store import new_run_dir, resolve_run, validate_name

from helpers import ok, one_error_line, run_cli
from test_builtin import tiny_builtin, tiny_ckpt  # noqa: F401 - fixtures


def test_load_run_of_a_builtin_has_no_run_directory(tiny_builtin, tmp_path):  # noqa: F811
    loaded = runs.load_run("@tiny", None, "cpu", tmp_path / "no-runs-here")
    assert loaded.run_dir is None and loaded.checkpoint is None and loaded.label == "@tiny"
    # epoch and step: its whole training history (test_builtin.HISTORY), not only the file's last run
    assert not loaded.model.training and loaded.settings.model.glimpses == 3 and (loaded.epoch, loaded.step) == (3, 5)
    assert loaded.trained == "3 epochs in 2 cycles: 1 + 2, 5 steps"
    assert loaded.settings.data.data_dir is None  # the training machine's folder is not used
    assert loaded.output("samples", ".png", "n64", "seed0").as_posix() == "tiny-samples-n64-seed0.png"


def test_builtin_refuses_load_with_one_line(tiny_builtin, tmp_path):  # noqa: F811
    with pytest.raises(DrawError, match=r"^--load picks a run's checkpoint; the built-in model @tiny has one set"):
        runs.locate("@tiny", "best", "cpu", tmp_path)
    result = CliRunner().invoke(app, ["sample", "@tiny", "--load", "3"])
    assert result.exit_code == 1 and result.output.count("\n") == 1 and "error: --load picks" in result.output


def test_sample_and_animate_a_builtin_write_into_the_current_directory(tiny_builtin, tmp_path, monkeypatch):  # noqa: F811
    monkeypatch.chdir(tmp_path)
    r = CliRunner().invoke(app, ["sample", "@tiny", "-n", "4", "--device", "cpu"])
    assert r.exit_code == 0, r.output
    assert (tmp_path / "tiny-samples-n4-seed0.png").is_file()
    r = CliRunner().invoke(app, ["animate", "@tiny", "-n", "2", "--device", "cpu"])
    assert r.exit_code == 0, r.output
    assert (tmp_path / "tiny-animation-n2-seed0.gif").is_file()


def test_evaluate_a_builtin_writes_json_in_the_current_directory(tiny_builtin, tmp_path, monkeypatch,  # noqa: F811
                                                                  synthetic_data_dir):
    monkeypatch.chdir(tmp_path)
    r = CliRunner().invoke(app, ["evaluate", "@tiny", "--samples", "2", "--limit", "8", "--device", "cpu",
                                 "--data-dir", str(synthetic_data_dir)])
    assert r.exit_code == 0, r.output
    doc = json.loads((tmp_path / "tiny-eval-test-k2-limit8.json").read_text())
    assert doc["run"] == "@tiny" and doc["checkpoint"] is None and doc["images"] == 8


def test_model_folders_and_hub_names_are_resolved_without_torch(tmp_path, monkeypatch):
    """The one resolver (locate): a path to a folder with config.json or model.safetensors is a model
    folder, a bare name is a run when the runs folder has one, else a folder here; hf:OWNER/NAME."""
    from test_viz import make_run

    monkeypatch.chdir(tmp_path)
    make_run(tmp_path / "runs", "both")
    for name in ("both", "m", "half"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "config.json").write_text("{}")
        if name != "half":
            (tmp_path / name / "model.safetensors").write_bytes(b"")
    assert runs.locate("both", None, "cpu", "runs").run_dir.as_posix() == "runs/both"  # a run wins over ./both
    assert runs.locate("./both", None, "cpu", "runs").folder.as_posix() == "both"
    located = runs.locate("m", None, "cpu", "runs")
    assert located.folder.as_posix() == "m" and located.label == "m" and located.output("samples", ".png", "n4").as_posix() == "m-samples-n4.png"
    with pytest.raises(DrawError, match=r"^half is not a model folder: it has no model.safetensors$"):
        runs.locate("half/", None, "cpu", "runs")  # what it lacks, before anything is read
    with pytest.raises(DrawError, match="--load picks a run's checkpoint; m is a model folder with one set of weights"):
        runs.locate("m", "best", "cpu", "runs")
    with pytest.raises(DrawError, match="a Hub model is written hf:OWNER/NAME"):
        runs.locate("hf:nothing", None, "cpu", "runs")
    code = "import sys\nfrom drawcli.runs import store\nstore.locate('m', None, 'cpu', 'runs')\nprint('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=tmp_path).stdout
    assert out.strip() == "False"


def test_load_run_of_a_run_and_of_a_directory_agree(tmp_path):
    from test_viz import make_run

    make_run(tmp_path, "r1")
    by_name = runs.load_run("r1", None, "cpu", tmp_path)
    by_path = runs.load_run(str(tmp_path / "r1"), "last", "cpu", "elsewhere")
    assert by_name.run_dir == tmp_path / "r1" and by_name.checkpoint.name == "best.pt"
    assert by_path.checkpoint.name == "last.pt" and by_name.label == "r1"
    assert by_name.output("samples", ".png", "n4").name == "samples-best-n4.png"
    a = dict(by_name.model.state_dict())
    assert all(torch.equal(a[k], v) for k, v in by_path.model.state_dict().items())


def test_models_lists_without_torch_and_says_when_empty():
    code = (
        "import sys\n"
        "from typer.testing import CliRunner\n"
        "from drawcli.runs import builtin\n"
        "from drawcli.cli import app\n"
        "r = CliRunner().invoke(app, ['models'])\n"
        "print(r.exit_code, '@mnist' in r.output, 'torch' in sys.modules)\n"
        "builtin.BUILTINS.clear()\n"
        "r = CliRunner().invoke(app, ['models'])\n"
        "print(r.exit_code, repr(r.output), 'torch' in sys.modules)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.splitlines()
    assert out[0] == "0 True False"
    assert out[1].startswith("0 'no built-in models in this version") and out[1].strip().endswith("False")


def test_models_json_lists_the_registry(tiny_builtin):  # noqa: F811
    r = CliRunner().invoke(app, ["models", "--json"])
    models = json.loads(r.output)
    tiny = [m for m in models if m["ref"] == "@tiny"]
    assert [m["ref"] for m in models] == ["@mnist", "@tiny"] and tiny[0]["model"]["glimpses"] == 3
    r = CliRunner().invoke(app, ["models"])
    assert "@tiny" in r.output and "a test model" in r.output and "draw animate @tiny -o tiny.gif" in r.output
    assert max(len(line.rstrip()) for line in r.output.splitlines()) < 200


def test_draw_models_reads_cleanly_and_lists_the_model_settings_by_their_names():
    from drawcli.commands.models import list_models

    assert [set(m["model"]) for m in list_models()][0] == {"glimpses", "hidden", "latent", "attention", "read_n", "write_n",
                                                             "height", "width", "channels"}
    lines = ok(run_cli("models")).stdout.splitlines()
    assert all(line == line.rstrip() for line in lines) and "  settings  T=64 glimpses, LSTM 256, z 100, read 2x2, write 5x5" in lines


def test_no_import_loop_between_settings_runs_and_checkpoint():
    for first in ("drawcli.settings", "drawcli.runs.store", "drawcli.runs.checkpoint"):
        code = f"import sys, {first}; import drawcli.runs.store, drawcli.runs.checkpoint, drawcli.settings; print('torch' in sys.modules)"
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
        assert out.strip() == "False"


def test_run_names(tmp_path):
    assert new_run_dir(tmp_path, None).name == "run1"
    assert new_run_dir(tmp_path, None).name == "run2"
    assert new_run_dir(tmp_path, "mine").name == "mine"
    with pytest.raises(DrawError, match="already exists"):
        new_run_dir(tmp_path, "mine")
    for bad in ("a/b", "..", "../x", "", ".hidden"):
        with pytest.raises(DrawError, match="invalid run name"):
            validate_name(bad)
    with pytest.raises(DrawError, match=r"no runs there yet"):
        resolve_run("nope", tmp_path / "empty")


def test_a_name_starting_with_a_dash_is_explained(workdir):
    one_error_line(run_cli("train", "--name", "-dash"), "invalid run name '-dash': start with a letter or digit")


def test_a_checkpoint_file_is_taken_wherever_a_run_is(tiny_run, env):
    ckpt = "runs/tiny/checkpoints/epoch_001.pt"
    ok(run_cli("sample", ckpt, "-n", "2", env=env))
    assert (tiny_run / "samples-epoch_001-n2-seed0.png").is_file()
    ok(run_cli("evaluate", ckpt, "--samples", "1", "--limit", "4", env=env))
    assert (tiny_run / "eval-test-k1-limit4-epoch_001.json").is_file()
    one_error_line(run_cli("sample", ckpt, "--load", "best", env=env), f"--load picks a run's checkpoint; {ckpt} is a checkpoint file already")
    one_error_line(run_cli("sample", "runs/tiny/checkpoints/epoch_009.pt", env=env), "checkpoint not found: runs/tiny/checkpoints/epoch_009.pt")
    # outside a run: the outputs go to the current folder, named after the file
    (tiny_run.parent.parent / "loose.pt").write_bytes((tiny_run / "checkpoints" / "epoch_001.pt").read_bytes())
    ok(run_cli("sample", "loose.pt", "-n", "2", env=env))
    assert (tiny_run.parent.parent / "loose-samples-n2-seed0.png").is_file()
    one_error_line(run_cli("train", "--resume", "loose.pt", env=env), "loose.pt is a checkpoint file outside a run directory")
    if __import__("importlib").util.find_spec("matplotlib"):
        ok(run_cli("plot", ckpt, "-o", "c.png"))
