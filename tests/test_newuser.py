"""Issue 12: what a new user met, item by item (lost data, races, tracebacks, slow errors).

Each test names the item it covers. Runs are tiny (T=2, 16 LSTM units, z of 4) on the
synthetic data set of conftest.py; the tests that need real processes (a lock held by
another process, Ctrl-C to a torchrun job, errors answered before torch loads) start them.
"""

from __future__ import annotations

import copy
import gc
import json
import os
import pathlib
import re
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import yaml
from typer.testing import CliRunner

from drawcli.cli import app
from drawcli.core.errors import DrawError
from drawcli.pictures import writers
from drawcli.runs import checkpoint as ckpt_io
from drawcli.runs import lock, names

ROOT = pathlib.Path(__file__).resolve().parent.parent
TINY = ["--steps", "2", "--hidden", "16", "--embed", "4", "-b", "32", "--device", "cpu", "--set", "train.eval_batch_size=50"]
runner = CliRunner()


def cli(*args, env=None):
    return runner.invoke(app, [str(a) for a in args], env=env)


def one_error_line(result, fragment: str, code: int = 1) -> str:
    for text in (result.stdout, result.stderr):
        assert "Traceback" not in text, text
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    assert result.exit_code == code, (result.exit_code, result.output)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert fragment in lines[0], f"\nexpected: {fragment}\n     got: {lines[0]}"
    return lines[0]


def rows(run_dir: pathlib.Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def draw_process(*args, cwd, env, **kw):
    return subprocess.Popen([sys.executable, "-m", "drawcli", *map(str, args)], cwd=cwd, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kw)


@pytest.fixture
def proc_env(synthetic_data_dir):
    # OMP_NUM_THREADS set: torchrun would otherwise print a notice that it sets it.
    return {**os.environ, "DRAW_DATA_DIR": str(synthetic_data_dir), "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}


@pytest.fixture
def tiny(tmp_path, monkeypatch, env):
    """runs/tiny: one epoch of 3 steps (96 images, batch 32), trained through the CLI."""
    monkeypatch.chdir(tmp_path)
    result = cli("train", *TINY, "-b", "32", "--epochs", "1", "--name", "tiny", env=env)
    assert result.exit_code == 0, result.output
    return tmp_path / "runs" / "tiny"


# ----------------------------------------------------------------------------- 1: epochs across resumes
def test_item1_resume_with_another_batch_size_keeps_epochs_monotonic_and_epoch_files(tmp_path, monkeypatch, env):
    monkeypatch.chdir(tmp_path)
    assert cli("train", *TINY, "-b", "32", "--epochs", "2", "--name", "b", env=env).exit_code == 0
    run = tmp_path / "runs" / "b"
    ckpts = run / "checkpoints"
    before = {p.name: p.read_bytes() for p in ckpts.glob("epoch_*.pt")}
    assert set(before) == {"epoch_001.pt", "epoch_002.pt"}  # 3 steps each: step 6

    # Batch 64 makes 2 steps per epoch. Stop inside epoch 3 (the issue's --max-steps case), then finish.
    r = cli("train", "--resume", "b", "-b", "64", "--epochs", "4", "--max-steps", "7", env=env)
    assert r.exit_code == 0, r.output
    assert names.list_epochs(ckpts) == [1, 2]  # step 7 is inside epoch 3: last.pt only
    last = ckpt_io.load(ckpts / "last.pt")
    assert (last["step"], last["epoch"], last["epoch_images"]) == (7, 3, 64)
    r = cli("train", "--resume", "b", env=env)
    assert r.exit_code == 0, r.output
    assert names.list_epochs(ckpts) == [1, 2, 3, 4]
    e3, e4 = ckpt_io.load(ckpts / "epoch_003.pt"), ckpt_io.load(ckpts / "epoch_004.pt")
    assert (e3["step"], e3["epoch_images"], e4["step"]) == (8, 0, 10)  # 64 + 32 images, then 2 more steps
    assert {p.name: p.read_bytes() for p in ckpts.glob("epoch_00[12].pt")} == before  # never rewritten
    epochs = [row["epoch"] for row in rows(run) if row["kind"] in ("train", "eval")]
    assert epochs == sorted(epochs) and epochs[-1] == 4  # monotonic across resumes

    # An epoch file that exists is not replaced by another training state: resume from an older
    # last.pt (epoch 3) and reach the end of epoch 4 again.
    (ckpts / "last.pt").unlink()
    shutil.copyfile(ckpts / "epoch_003.pt", ckpts / "last.pt")
    kept = (ckpts / "epoch_004.pt").read_bytes()
    r = cli("train", "--resume", "b", "--lr", "3e-3", env=env)
    one_error_line(r, "runs/b/checkpoints/epoch_004.pt already exists; it was not replaced")
    assert (ckpts / "epoch_004.pt").read_bytes() == kept
    assert ckpt_io.load(ckpts / "last.pt")["step"] == 10  # the new state is kept, as last.pt


def test_item1_checkpoints_without_epoch_images_still_resume_as_before():
    import torch

    from drawcli.settings import build_settings
    from drawcli.training.loop import resume_position, train

    from helpers import synthetic_images

    assert resume_position({"step": 7, "epoch": 3}, n=96, batch=32) == (2, 32)  # old: placed by step
    assert resume_position({"step": 7, "epoch": 3, "epoch_images": 64}, n=96, batch=64) == (2, 64)
    assert resume_position({"step": 8, "epoch": 3, "epoch_images": 0}, n=96, batch=64) == (3, 0)

    class Keep:
        def on_checkpoint(self, ckpt, is_best):
            self.ckpt = ckpt

    sets = ["model.steps=2", "model.hidden=16", "model.embed=4", "train.batch_size=32", "train.eval_batch_size=40"]
    images = synthetic_images()
    first, a, b = Keep(), Keep(), Keep()
    train(build_settings(None, None, [*sets, "train.max_steps=4"]), images, images[:40], torch.device("cpu"), callbacks=[first])
    # Deep copies: a resumed optimizer works on the checkpoint's tensors in place.
    old = copy.deepcopy({k: v for k, v in first.ckpt.items() if k != "epoch_images"})
    full = build_settings(None, None, [*sets, "train.epochs=2"])
    train(full, images, images[:40], torch.device("cpu"), callbacks=[a], resume=copy.deepcopy(first.ckpt))
    train(full, images, images[:40], torch.device("cpu"), callbacks=[b], resume=old)
    assert a.ckpt["step"] == b.ckpt["step"] == 6
    assert all(torch.equal(a.ckpt["model"][k], b.ckpt["model"][k]) for k in a.ckpt["model"])


# ----------------------------------------------------------------------------- 2: one writer per run
def test_item2_a_second_process_cannot_train_a_run_that_is_being_trained(tiny, proc_env):
    cwd = tiny.parent.parent
    first = draw_process("train", "--resume", "tiny", "--epochs", "5000", "--set", "train.log_every=1", cwd=cwd, env=proc_env)
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:  # the lock file names its holder once it holds it
            if first.poll() is not None:
                pytest.fail(f"the first training ended early: {first.communicate()}")
            try:
                if json.loads((tiny / ".lock").read_text()).get("pid") == first.pid:
                    break
            except (OSError, ValueError):
                pass
            time.sleep(0.05)
        holder = lock.lock_holder(tiny)
        assert holder is not None and holder["pid"] == first.pid and holder["command"].startswith("draw train --resume")
        second = subprocess.run([sys.executable, "-m", "drawcli", "train", "--resume", "tiny", "--epochs", "500"],
                                cwd=cwd, env=proc_env, capture_output=True, text=True, timeout=120)
        assert second.returncode == 1, second
        lines = second.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith(f"error: run 'tiny' is being trained by pid {first.pid} on "), lines
        second_rows = [r for r in rows(tiny) if r["kind"] == "resume" and r["changes"].get("train.epochs") == [1, 500]]
        assert not second_rows  # the second one wrote nothing
        one_error_line(cli("train", *TINY, "--name", "tiny"),
                       f"run 'tiny' already exists in runs and is being trained by pid {first.pid} on ")
    finally:
        first.kill()  # SIGKILL: no cleanup of any kind
        first.communicate()
    assert (tiny / ".lock").is_file() and lock.lock_holder(tiny) is None  # the OS let go of it
    third = subprocess.run([sys.executable, "-m", "drawcli", "train", "--resume", "tiny", "--epochs", "1"],
                           cwd=cwd, env=proc_env, capture_output=True, text=True, timeout=120)
    assert third.returncode == 0, third.stderr
    steps = [r["step"] for r in rows(tiny) if r["kind"] == "train"]
    assert steps == sorted(steps)  # one writer at a time: no interleaved rows


def test_item2_the_lock_is_reentrant_in_one_process_and_exclusive_across_descriptors(tmp_path):
    with lock.run_lock(tmp_path):
        with lock.run_lock(tmp_path):  # the CLI holds it, then training takes it again
            assert lock.lock_holder(tmp_path) is None  # this process is not "another" holder
        info = json.loads((tmp_path / ".lock").read_text())
        assert info["pid"] == os.getpid() and {"host", "started", "command"} <= set(info)
    assert lock.lock_holder(tmp_path) is None


# ----------------------------------------------------------------------------- 3: resume history
def test_item3_resume_keeps_config_yaml_records_changes_and_refuses_seed(tiny, env):
    config = (tiny / "config.yaml").read_text()
    r = cli("train", "--resume", "tiny", "--epochs", "2", "--set", "train.log_every=10", env=env)
    assert r.exit_code == 0, r.output
    assert "changed on resume: train.epochs 1 -> 2; train.log_every 100 -> 10" in r.stdout
    assert (tiny / "config.yaml").read_text() == config  # reproduces the run as started
    resume = [row for row in rows(tiny) if row["kind"] == "resume"]
    assert len(resume) == 1 and resume[0]["step"] == 3 and resume[0]["epoch"] == 1
    assert resume[0]["changes"] == {"train.epochs": [1, 2], "train.log_every": [100, 10]}
    assert ckpt_io.load(tiny / "checkpoints" / "last.pt")["settings"]["train"]["log_every"] == 10  # in effect

    for flag, value, key in (("--seed", "5", "train.seed"), ("--set", "data.binarize=threshold", "data.binarize")):
        one_error_line(cli("train", "--resume", "tiny", flag, value, env=env),
                       f"--resume tiny: {key} cannot change")
    assert "no longer be reproducible" in cli("train", "--resume", "tiny", "--seed", "5", env=env).stderr

    r = cli("train", "--resume", "tiny", "--epochs", "3", "-b", "64", env=env)
    assert r.exit_code == 0, r.output
    assert "train.batch_size 32 -> 64" in r.stdout and "warning: a new train.batch_size" in r.stdout
    assert [row["changes"] for row in rows(tiny) if row["kind"] == "resume"][-1] == {
        "train.epochs": [2, 3], "train.batch_size": [32, 64]}
    assert (tiny / "config.yaml").read_text() == config


# ----------------------------------------------------------------------------- 4: outputs named by content
def test_item4_evaluations_keep_their_own_files_and_print_before_writing(tiny, env, tmp_path):
    common = ["--device", "cpu", "--limit", "8"]
    assert cli("evaluate", "tiny", *common, "--samples", "2", env=env).exit_code == 0
    assert cli("evaluate", "tiny", *common, "--samples", "1", "--split", "train", env=env).exit_code == 0
    named = sorted(p.name for p in tiny.glob("eval-*.json"))
    assert named == ["eval-test-k2-limit8-best.json", "eval-train-k1-limit8-best.json"]
    out = tmp_path / "mine" / "result.json"
    assert cli("evaluate", "tiny", *common, "-o", out, env=env).exit_code == 0
    assert json.loads(out.read_text())["samples"] == 100

    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    r = cli("evaluate", "tiny", *common, "--samples", "2", "-o", blocker / "x.json", env=env)
    one_error_line(r, f"cannot write {blocker / 'x.json'}: {blocker} is not a folder")
    assert "IWAE bound, K=2" not in r.stdout  # refused before the work (issue 26 item 5)
    one_error_line(cli("evaluate", "tiny", "-o", "x.txt", env=env), "x.txt: the results are written as JSON")


def test_item4_the_readme_picture_examples_do_not_overwrite_each_other(tiny, env):
    first = cli("sample", "tiny")
    second = cli("sample", "tiny", "-n", "16", "--nrow", "4", "--binary", "--npy")
    assert first.exit_code == 0 and second.exit_code == 0, (first.output, second.output)
    assert sorted(p.name for p in tiny.glob("samples*")) == [
        "samples-best-n16-seed0-binary.npy", "samples-best-n16-seed0-binary.png", "samples-best-n64-seed0.png"]
    for args in ((), ("--boxes",), ("--reconstruct",)):
        assert cli("animate", "tiny", "-n", "2", *args, env=env).exit_code == 0
    assert len(list(tiny.glob("animation-*.gif"))) == 3


# ----------------------------------------------------------------------------- 5: Ctrl-C with --nproc 2
@pytest.mark.parametrize("target", ["group", "launcher"])
def test_item5_ctrl_c_to_a_two_process_job_is_one_line_last_pt_and_exit_130(tmp_path, proc_env, target):
    proc = draw_process("train", "--nproc", "2", *TINY, "-b", "8", "--epochs", "50", "--set", "train.log_every=1",
                        "--name", "ddp", cwd=tmp_path, env=proc_env, start_new_session=True)
    metrics = tmp_path / "runs" / "ddp" / "metrics.jsonl"
    deadline = time.monotonic() + 180
    while not (metrics.is_file() and len(metrics.read_text().splitlines()) >= 15):  # into epoch 2
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            pytest.fail(f"no progress: {proc.communicate()}")
        time.sleep(0.05)
    if target == "group":
        os.killpg(proc.pid, signal.SIGINT)  # what Ctrl-C in a terminal does
    else:
        proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=180)
    assert proc.returncode == 130, (out, err)
    lines = [line for line in err.splitlines() if line.strip()]
    assert lines[:-1] == ["stopping after this step to save last.pt (press Ctrl-C again to quit at once)"], err
    assert re.fullmatch(r"stopped at step \d+: saved runs/ddp/checkpoints/last\.pt; "
                        r"continue with: draw train --resume ddp", lines[-1]), err
    last = ckpt_io.load(tmp_path / "runs" / "ddp" / "checkpoints" / "last.pt")
    assert last["step"] > 12 and last["epoch_images"] > 0
    if target == "group":  # and it goes on with two processes (rank 0 holds the run's lock)
        # To the end of the epoch after the one stopped in (12 steps each): on a loaded machine the stop
        # can land past epoch 2's end, where --epochs 2 would leave nothing to do.
        epochs = last["step"] // 12 + 2
        r = subprocess.run([sys.executable, "-m", "drawcli", "train", "--nproc", "2", "--resume", "ddp", "--epochs", str(epochs)],
                           cwd=tmp_path, env=proc_env, capture_output=True, text=True, timeout=180)
        assert r.returncode == 0, r.stderr
        assert ckpt_io.load(tmp_path / "runs" / "ddp" / "checkpoints" / "last.pt")["step"] == 12 * epochs


# ----------------------------------------------------------------------------- 6: unwritable pictures
def _unwritable_dir() -> pathlib.Path:
    """A folder nobody can create files in, root included (sysfs); skip where there is none."""
    where = pathlib.Path("/sys")
    probe = where / f"drawcli-probe-{os.getpid()}"
    try:
        probe.open("wb").close()
    except OSError:
        return where
    probe.unlink()
    pytest.skip("no folder here refuses a new file to this user")


def test_item6_an_unwritable_gif_is_one_error_and_no_finaliser_traceback(monkeypatch):
    where = _unwritable_dir()
    unraisable = []
    monkeypatch.setattr(sys, "unraisablehook", unraisable.append)
    frames = np.zeros((3, 8, 8), dtype=np.uint8)
    with pytest.raises(DrawError, match="cannot write .*: Permission denied"):
        writers.write_animation(where / "a.gif", frames, fps=10, hold=1)
    with pytest.raises(DrawError, match="cannot write"):
        writers.write_png(where / "a.png", np.zeros((8, 8), dtype=np.uint8))
    gc.collect()
    assert unraisable == []  # imageio's writer never held the failed file


def test_item6_cli_animate_to_an_unwritable_folder(tiny, proc_env):
    where = _unwritable_dir()
    for command in ("animate", "inspect-attention"):
        r = subprocess.run([sys.executable, "-m", "drawcli", command, "tiny", "-n", "1", "-o", where / "x.gif"],
                           cwd=tiny.parent.parent, env=proc_env, capture_output=True, text=True, timeout=120)
        assert r.returncode == 1 and r.stderr.splitlines() == [
            f"error: cannot write {where / 'x.gif'}: Permission denied (the previous file, if any, is unchanged)"], r.stderr


# ----------------------------------------------------------------------------- 7: usage errors
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
def test_item7_usage_errors_are_one_line_with_a_suggestion(argv, fragment):
    one_error_line(cli(*argv), fragment, code=2)


def test_item7_the_installed_entry_point_says_the_same():
    r = subprocess.run([sys.executable, "-m", "drawcli", "train", "--epocs", "3"], capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and r.stderr == "error: draw train: unknown option --epocs (did you mean --epochs?)\n"


# ----------------------------------------------------------------------------- 8: errors before torch
def test_item8_lookup_errors_are_answered_before_torch_is_imported(tmp_path):
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
            "import sys, time\n"
            "t0 = time.perf_counter()\n"
            "from drawcli.cli import app\n"
            f"try:\n    app({argv!r}, prog_name='draw')\n"
            "except SystemExit as e:\n    code = e.code\n"
            "print('TORCH' if 'torch' in sys.modules else 'NO_TORCH', code, round(time.perf_counter() - t0, 2))\n"
        )
        r = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=60)
        assert fragment in r.stderr and r.stderr.count("\n") == 1, (argv, r.stderr)
        torch_state, exit_code, seconds = r.stdout.split()
        assert (torch_state, exit_code) == ("NO_TORCH", "1"), (argv, r.stdout, f"{seconds} s")


# ----------------------------------------------------------------------------- 9: no wrapping off a terminal
def test_item9_log_lines_and_tables_are_not_wrapped_when_not_a_terminal(tmp_path, monkeypatch, env):
    monkeypatch.chdir(tmp_path)
    runs_dir = tmp_path / ("a-runs-folder-with-a-long-name-" * 3)
    r = cli("train", *TINY, "-b", "32", "--epochs", "1", "--runs-dir", runs_dir, "--name", "wide", env=env)
    assert r.exit_code == 0, r.output
    assert re.search(r"^training on 96 images, .* images; optimizer steps 0 -> 3 \(3 per epoch\)", r.stdout, re.M), r.stdout
    assert str(runs_dir / "wide") in r.stdout  # the summary's run directory, not cut with an ellipsis


# ----------------------------------------------------------------------------- 10: a run without checkpoints
def test_item10_a_second_ctrl_c_before_the_first_checkpoint_leaves_no_run_behind(tmp_path, monkeypatch, env):
    import drawcli.training.loop

    monkeypatch.chdir(tmp_path)

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt  # what the second SIGINT raises inside the first steps

    monkeypatch.setattr(drawcli.training.loop, "train", interrupted)
    r = cli("train", *TINY, "--name", "early", env=env)
    one_error_line(r, "interrupted before the first checkpoint; removed the unfinished run runs/early", code=130)
    assert not (tmp_path / "runs" / "early").exists()


def test_item10_a_run_left_without_checkpoints_says_which_folder_to_delete(tmp_path, monkeypatch, env):
    monkeypatch.chdir(tmp_path)
    left = tmp_path / "runs" / "left"
    (left / "checkpoints").mkdir(parents=True)
    (left / "config.yaml").write_text("model: {steps: 2}\n")  # as after kill -9 in the first epoch
    (left / "mine.txt").write_text("")  # with a file of the user's, it is not replaced (issue 26 item 1)
    one_error_line(cli("train", *TINY, "--name", "left", env=env), f"has no checkpoint to resume (it stopped before "
                   f"its first one) and holds files draw train did not write; delete {left} to start it again")
    one_error_line(cli("train", "--resume", "left", env=env), f"has no checkpoint to resume from (it stopped before "
                   f"its first one); start it again with --name left instead of --resume (its folder {left} is then replaced)")


# ----------------------------------------------------------------------------- 11-17: smaller things
def test_item11_missing_data_hints_carry_the_data_dir(tmp_path, monkeypatch):
    from drawcli.data.catalogue import get_spec
    from drawcli.data.loading import MissingDataset, load_images

    monkeypatch.setenv("DRAW_DATA_DIR", str(tmp_path / "default"))
    with pytest.raises(MissingDataset) as info:
        load_images(get_spec("mnist"), tmp_path / "x" / "mnist", "test_images")
    assert f"`draw download mnist --data-dir {tmp_path / 'x'}`" in str(info.value)
    with pytest.raises(MissingDataset) as info:
        load_images(get_spec("mnist"), tmp_path / "default" / "mnist", "test_images")
    assert "`draw download mnist`" in str(info.value)  # the default folder needs no flag


def test_item11_reconstruct_with_a_data_dir_without_the_data(tiny, tmp_path):
    empty = tmp_path / "empty-data"
    r = cli("animate", "tiny", "--reconstruct", "--data-dir", empty, "-n", "1")
    one_error_line(r, f"run `draw download mnist --data-dir {empty}`")


def test_item12_download_list_shows_download_and_unpacked_sizes(tmp_path):
    r = cli("download", "--list", "--data-dir", tmp_path)
    assert r.exit_code == 0, r.output
    mnist = next(line for line in r.stdout.splitlines() if " mnist " in line)
    assert "download" in r.stdout and "unpacked" in r.stdout
    assert "~11.6 MB" in mnist and "55.0 MB" in mnist


@pytest.mark.parametrize("value", ["0", "-1"])
def test_item13_nproc_below_one_is_refused(tmp_path, monkeypatch, value):
    monkeypatch.chdir(tmp_path)
    one_error_line(cli("train", "--nproc", value), f"--nproc must be at least 1, got {value}")
    assert not (tmp_path / "runs").exists()


def test_item14_train_has_runs_dir(tmp_path, monkeypatch, env):
    monkeypatch.chdir(tmp_path)
    r = cli("train", *TINY, "-b", "32", "--epochs", "1", "--runs-dir", "elsewhere", "--name", "r", env=env)
    assert r.exit_code == 0, r.output
    assert (tmp_path / "elsewhere" / "r" / "checkpoints" / "last.pt").is_file() and not (tmp_path / "runs").exists()
    assert cli("train", "--resume", "r", "--runs-dir", "elsewhere", "--epochs", "2", env=env).exit_code == 0
    one_error_line(cli("train", "--resume", "r", env=env), f"run 'r' not found in {tmp_path / 'runs'} (no runs there yet)")


def test_item15_data_set_names_get_a_suggestion(tmp_path):
    one_error_line(cli("download", "mnst", "--data-dir", tmp_path), "unknown data set 'mnst' (did you mean 'mnist'?)")
    one_error_line(cli("train", "--dataset", "fashion-mnst"), "got 'fashion-mnst' (did you mean 'fashion-mnist'?)")


def test_item16_a_name_starting_with_a_dash_is_explained(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    one_error_line(cli("train", "--name", "-dash"), "invalid run name '-dash': start with a letter or digit")


@pytest.mark.parametrize(
    "text, fragment",
    [
        ("train:\n  lr: 1e-3\n  epochs: 2\n  lr: 3e-3\n", "duplicate key 'train.lr' at line 4 (first at line 2)"),
        ("train: {epochs: 2}\nmodel:\n  steps: 3\ntrain:\n  lr: 3e-3\n", "duplicate section 'train' at line 4 (first at line 1)"),
        ("model: {steps: 3, steps: 4}\n", "duplicate key 'model.steps' at line 1 (first at line 1)"),
    ],
    ids=["key", "section", "flow"],
)
def test_item17_a_duplicate_yaml_key_or_section_is_refused(tmp_path, text, fragment):
    cfg = tmp_path / "c.yaml"
    cfg.write_text(text)
    one_error_line(cli("train", "--config", cfg), f"{cfg}: {fragment}")


# ----------------------------------------------------------------------------- 18-21: README, outputs
def test_item18_readme_install_advice_names_the_cpu_index_and_keeps_the_commands():
    readme = (ROOT / "README.md").read_text()
    assert "pip install torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu" in readme
    assert "CUDA build" in readme and "avoid" not in readme.split("## Commands")[0]
    top = re.findall(r"```bash\n(.*?)\n```", readme, re.S)[:2]
    assert all(block.startswith("pip install torch==2.13.0 && pip install -e ") for block in top)
    ci = (ROOT / ".ci" / "run").read_text()
    assert "may pull a multi-GB CUDA build" not in ci and "download.pytorch.org/whl/cpu" in ci


def test_item19_the_docs_document_every_train_flag_and_setting():
    import typer.main

    from drawcli.settings import Settings

    readme = (ROOT / "README.md").read_text()
    section = (ROOT / "docs" / "training.md").read_text().split("## `draw train`")[1].split("## Runs")[0]
    command = typer.main.get_command(app).commands["train"]
    flags = [opt for p in command.params for opt in p.opts if opt.startswith("--") and opt != "--help"]
    missing = [f for f in flags if f"`{f}" not in section]
    assert not missing, missing
    block = yaml.safe_load(section.split("```yaml\n")[1].split("```")[0])
    defaults = Settings().to_dict()
    assert {s: set(v) for s, v in block.items()} == {s: set(v) for s, v in defaults.items()}
    assert "exactly what the quickstart writes" not in readme


def test_item20_the_mp4_message_says_what_the_file_holds(tiny, monkeypatch, tmp_path):
    import imageio.v2

    appended = []

    class FakeWriter:  # stands in for imageio-ffmpeg, which this machine may not have
        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return False

        def append_data(self, frame):
            appended.append(frame.shape)

    monkeypatch.setattr(writers, "ffmpeg_available", lambda: True)
    monkeypatch.setattr(imageio.v2, "get_writer", lambda *a, **k: FakeWriter())
    out = tmp_path / "a.mp4"
    r = cli("animate", "tiny", "-o", out, "--fps", "10", "--hold", "2")
    assert r.exit_code == 0, r.output
    height, width = appended[0][:2]
    assert width % 2 == 0 and height % 2 == 0 and len(appended) == 2 + 19  # T glimpses, then 2 s at 10 fps
    assert f"wrote {out} ({len(appended)} frames: 2 glimpses, then the last held, {width}x{height})" in r.stdout


def test_item21_readme_example_outputs_in_a_clone_are_ignored_by_git():
    if shutil.which("git") is None or subprocess.run(["git", "-C", ROOT, "rev-parse"], capture_output=True).returncode:
        pytest.skip("not a git checkout")
    names = ["quick.gif", "out.gif", "out.mp4", "recon.gif", "prior.gif", "attention.json", "digits.png", "digits.npy"]
    r = subprocess.run(["git", "-C", ROOT, "check-ignore", *names], capture_output=True, text=True)
    assert sorted(r.stdout.split()) == sorted(names)
    r = subprocess.run(["git", "-C", ROOT, "check-ignore", "docs/quick.gif", "docs/quick-samples.png"],
                       capture_output=True, text=True)
    assert r.stdout == ""  # the committed pictures stay tracked
