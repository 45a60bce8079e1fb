"""A whole `draw train` run through the command line (drawcli/training/run.py, loop.py and
distributed.py): resuming across batch sizes and what a resume records, runs left without a
checkpoint, interrupts of one and of two processes, what a run prints.

Runs are tiny (helpers.TINY_TRAIN: T=2, 16 LSTM units, z of 4) on the synthetic mnist of
conftest.py (96 training and 40 test images: 3 steps of batch 32 per epoch); the tests that need
real processes (Ctrl-C to a torchrun job, the threads of --nproc) start them.
"""

from __future__ import annotations

import copy
import os
import re
import shutil
import signal
import subprocess
import sys
import time

import pytest

from drawcli.runs import checkpoint as ckpt_io
from drawcli.runs import names

from helpers import ROOT, TINY_TRAIN, draw_process, metrics_rows, ok, one_error_line, run_cli


# ----------------------------------------------------------------------------- epochs across resumes
def test_resume_with_another_batch_size_keeps_epochs_monotonic_and_epoch_files(workdir, env):
    ok(run_cli("train", *TINY_TRAIN, "-b", "32", "--epochs", "2", "--name", "b", env=env))
    run = workdir / "runs" / "b"
    ckpts = run / "checkpoints"
    before = {p.name: p.read_bytes() for p in ckpts.glob("epoch_*.pt")}
    assert set(before) == {"epoch_001.pt", "epoch_002.pt"}  # 3 steps each: step 6

    # Batch 64 makes 2 steps per epoch. Stop inside epoch 3 (--max-steps), then finish.
    ok(run_cli("train", "--resume", "b", "-b", "64", "--epochs", "4", "--max-steps", "7", env=env))
    assert names.list_epochs(ckpts) == [1, 2]  # step 7 is inside epoch 3: last.pt only
    last = ckpt_io.load(ckpts / "last.pt")
    assert (last["step"], last["epoch"], last["epoch_images"]) == (7, 3, 64)
    ok(run_cli("train", "--resume", "b", env=env))
    assert names.list_epochs(ckpts) == [1, 2, 3, 4]
    e3, e4 = ckpt_io.load(ckpts / "epoch_003.pt"), ckpt_io.load(ckpts / "epoch_004.pt")
    assert (e3["step"], e3["epoch_images"], e4["step"]) == (8, 0, 10)  # 64 + 32 images, then 2 more steps
    assert {p.name: p.read_bytes() for p in ckpts.glob("epoch_00[12].pt")} == before  # never rewritten
    epochs = [row["epoch"] for row in metrics_rows(run) if row["kind"] in ("train", "eval")]
    assert epochs == sorted(epochs) and epochs[-1] == 4  # monotonic across resumes

    # An epoch file that exists is not replaced by another training state: resume from an older
    # last.pt (epoch 3) and reach the end of epoch 4 again.
    (ckpts / "last.pt").unlink()
    shutil.copyfile(ckpts / "epoch_003.pt", ckpts / "last.pt")
    kept = (ckpts / "epoch_004.pt").read_bytes()
    r = run_cli("train", "--resume", "b", "--lr", "3e-3", env=env)
    one_error_line(r, "runs/b/checkpoints/epoch_004.pt already exists; it was not replaced")
    assert (ckpts / "epoch_004.pt").read_bytes() == kept
    assert ckpt_io.load(ckpts / "last.pt")["step"] == 10  # the new state is kept, as last.pt


def test_checkpoints_without_epoch_images_still_resume_as_before():
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


# ----------------------------------------------------------------------------- what a resume records
def test_resume_keeps_config_yaml_records_changes_and_refuses_seed(tiny_run, env):
    config = (tiny_run / "config.yaml").read_text()
    r = ok(run_cli("train", "--resume", "tiny", "--epochs", "2", "--set", "train.log_every=10", env=env))
    assert "changed on resume: train.epochs 1 -> 2; train.log_every 100 -> 10" in r.stdout
    assert (tiny_run / "config.yaml").read_text() == config  # reproduces the run as started
    resume = [row for row in metrics_rows(tiny_run) if row["kind"] == "resume"]
    assert len(resume) == 1 and resume[0]["step"] == 3 and resume[0]["epoch"] == 1
    assert resume[0]["changes"] == {"train.epochs": [1, 2], "train.log_every": [100, 10]}
    assert ckpt_io.load(tiny_run / "checkpoints" / "last.pt")["settings"]["train"]["log_every"] == 10  # in effect

    for flag, value, key in (("--seed", "5", "train.seed"), ("--set", "data.binarize=threshold", "data.binarize")):
        one_error_line(run_cli("train", "--resume", "tiny", flag, value, env=env), f"--resume tiny: {key} cannot change")
    assert "no longer be reproducible" in run_cli("train", "--resume", "tiny", "--seed", "5", env=env).stderr

    r = ok(run_cli("train", "--resume", "tiny", "--epochs", "3", "-b", "64", env=env))
    assert "train.batch_size 32 -> 64" in r.stdout and "warning: a new train.batch_size" in r.stdout
    assert [row["changes"] for row in metrics_rows(tiny_run) if row["kind"] == "resume"][-1] == {
        "train.epochs": [2, 3], "train.batch_size": [32, 64]}
    assert (tiny_run / "config.yaml").read_text() == config


def test_a_resume_with_nothing_to_do_says_how_to_train_further_and_writes_nothing(tiny_run, env):
    rows_before = (tiny_run / "metrics.jsonl").read_text()
    r = ok(run_cli("train", "--resume", "tiny", env=env))
    assert r.stdout.strip() == ("nothing to do: run tiny has finished its 1 epochs (step 3); to train it further, "
                                "give more: draw train --resume tiny --epochs 11")
    assert (tiny_run / "metrics.jsonl").read_text() == rows_before  # no resume row for a resume that did nothing


def test_a_resume_prints_the_settings_it_changes_as_they_are_written(tiny_run, env):
    r = ok(run_cli("train", "--resume", "tiny", "--epochs", "2", "--set", "train.lr_schedule=wsd",
                   "--set", "train.decay_start=1", "--set", "train.decay_epochs=1", env=env))
    assert "train.lr_schedule 'constant' -> 'wsd'; train.decay_start null -> 1" in r.stdout and "None" not in r.stdout


def test_a_copied_run_folder_resumes_under_its_own_name(workdir, env):
    """Branching an experiment by copying its folder: the copy resumes as itself; the original is untouched."""
    ok(run_cli("train", *TINY_TRAIN, "--epochs", "1", "--name", "trunk", env=env))
    shutil.copytree(workdir / "runs" / "trunk", workdir / "runs" / "branch")
    before = (workdir / "runs" / "trunk" / "metrics.jsonl").read_text()
    r = ok(run_cli("train", "--resume", "branch", "--epochs", "2", env=env))
    assert "epoch 2" in r.stdout
    assert (workdir / "runs" / "branch" / "checkpoints" / "epoch_002.pt").is_file()
    assert not (workdir / "runs" / "trunk" / "checkpoints" / "epoch_002.pt").exists()
    assert (workdir / "runs" / "trunk" / "metrics.jsonl").read_text() == before
    # A --name that is neither the folder's nor the saved one is still a contradiction.
    one_error_line(run_cli("train", "--resume", "branch", "--name", "third", env=env), "--resume branch cannot be combined with --name third")


def test_train_writes_and_resumes_runs_in_the_runs_dir_given(workdir, env):
    ok(run_cli("train", *TINY_TRAIN, "--epochs", "1", "--runs-dir", "elsewhere", "--name", "r", env=env))
    assert (workdir / "elsewhere" / "r" / "checkpoints" / "last.pt").is_file() and not (workdir / "runs").exists()
    ok(run_cli("train", "--resume", "r", "--runs-dir", "elsewhere", "--epochs", "2", env=env))
    one_error_line(run_cli("train", "--resume", "r", env=env), f"run 'r' not found in {workdir / 'runs'} (no runs there yet)")


# ----------------------------------------------------------------------------- checks before a run starts
def test_a_batch_larger_than_the_training_split_is_refused(workdir, env):
    one_error_line(run_cli("train", *TINY_TRAIN, "--batch-size", "200", "--name", "big", env=env),
                   "train.batch_size 200 is larger than the training split of mnist (96 images); use --batch-size 96 or less")
    assert not (workdir / "runs" / "big").exists()


# ----------------------------------------------------------------------------- runs without a checkpoint
def test_a_second_ctrl_c_before_the_first_checkpoint_leaves_no_run_behind(workdir, monkeypatch, env):
    import drawcli.training.loop

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt  # what the second SIGINT raises inside the first steps

    monkeypatch.setattr(drawcli.training.loop, "train", interrupted)
    r = run_cli("train", *TINY_TRAIN, "--name", "early", env=env)
    one_error_line(r, "interrupted before the first checkpoint; removed the unfinished run runs/early", code=130)
    assert not (workdir / "runs" / "early").exists()


def test_a_run_left_without_checkpoints_says_which_folder_to_delete(workdir, env):
    left = workdir / "runs" / "left"
    (left / "checkpoints").mkdir(parents=True)
    (left / "config.yaml").write_text("model: {steps: 2}\n")  # as after kill -9 in the first epoch
    (left / "mine.txt").write_text("")  # with a file of the user's, it is not replaced (issue 26 item 1)
    one_error_line(run_cli("train", *TINY_TRAIN, "--name", "left", env=env), f"has no checkpoint to resume (it stopped before "
                   f"its first one) and holds files draw train did not write; delete {left} to start it again")
    one_error_line(run_cli("train", "--resume", "left", env=env), f"has no checkpoint to resume from (it stopped before "
                   f"its first one); start it again with --name left instead of --resume (its folder {left} is then replaced)")


def test_a_run_that_died_before_its_first_checkpoint_does_not_block_its_name(workdir, env):
    left = workdir / "runs" / "left"
    (left / "checkpoints").mkdir(parents=True)
    (left / "config.yaml").write_text("model: {glimpses: 2}\n")  # as after kill -9 (or the OOM killer) in the first epoch
    (left / "metrics.jsonl").write_text('{"kind": "train", "step": 1, "epoch": 1, "lx": 1, "lz": 1, "loss": 2}\n')
    one_error_line(run_cli("train", "--resume", "left", env=env), "start it again with --name left instead of --resume")
    r = ok(run_cli("train", *TINY_TRAIN, "--epochs", "1", "--name", "left", env=env))
    assert "removed runs/left, left by a run that stopped before its first checkpoint" in r.stdout
    assert (left / "checkpoints" / "epoch_001.pt").is_file()
    # A folder that holds anything draw train did not write is never removed.
    other = workdir / "runs" / "other"
    (other / "checkpoints").mkdir(parents=True)
    (other / "config.yaml").write_text("model: {glimpses: 2}\n")
    (other / "notes.txt").write_text("mine")
    one_error_line(run_cli("train", *TINY_TRAIN, "--name", "other", env=env), "holds files draw train did not write")
    assert (other / "notes.txt").read_text() == "mine"


# ----------------------------------------------------------------------------- what a run prints
def test_log_lines_and_tables_are_not_wrapped_when_not_a_terminal(workdir, env):
    runs_dir = workdir / ("a-runs-folder-with-a-long-name-" * 3)
    r = ok(run_cli("train", *TINY_TRAIN, "--epochs", "1", "--runs-dir", runs_dir, "--name", "wide", env=env))
    assert re.search(r"^training on 96 images, .* images; optimizer steps 0 -> 3 \(3 per epoch\)", r.stdout, re.M), r.stdout
    assert str(runs_dir / "wide") in r.stdout  # the summary's run directory, not cut with an ellipsis


def test_the_old_steps_flag_warns_once_and_every_training_prints_the_model(workdir, env):
    r = ok(run_cli("train", "--steps", "3", "--hidden", "16", "--latent", "4", "-b", "32", "--max-steps", "2", "--device", "cpu",
                   "--set", "train.eval_batch_size=50", "--name", "s", env=env))
    lines = r.stdout.splitlines()
    warnings = [line for line in lines if "--steps" in line]
    assert warnings == ["warning: --steps sets glimpses T, the drawing steps per image (now --glimpses); "
                        "optimizer steps are --max-steps"], r.stdout
    assert "model: T=3 glimpses, LSTM 16, z 4, read 2x2, write 5x5, images 28x28; " in r.stdout
    # "steps" alone never names glimpses: the plan says optimizer steps, the summary too.
    assert "optimizer steps 0 -> 2 (3 per epoch)" in r.stdout and "optimizer steps" in r.stdout.split("run s")[-1]
    one_error_line(run_cli("train", "--steps", "3", "--glimpses", "4", "--name", "x", env=env),
                   "--steps (the old name of --glimpses) 3 and --glimpses 4 disagree")
    r = ok(run_cli("train", "--resume", "s", "--epochs", "1", env=env))
    assert "model: T=3 glimpses" in r.stdout and "--steps" not in r.stdout  # a resume prints it too; no warning without the alias
    r = ok(run_cli("train", *TINY_TRAIN, "--no-attention", "--max-steps", "1", "--name", "n", env=env))
    assert "model: T=2 glimpses, LSTM 16, z 4, no attention, images 28x28; " in r.stdout


def test_throughput_is_training_images_over_training_time(workdir, env, monkeypatch):
    """A fake clock: every training step takes 1 s, every evaluation 100 s. Each log row and the
    summary must then say 32 img/s (batch 32), the first row after an evaluation included."""
    import drawcli.training.loop

    clock = [0.0]
    monkeypatch.setattr(time, "perf_counter", lambda: clock[0])
    real_step, real_evaluate = drawcli.training.loop.train_step, drawcli.training.loop.evaluate

    def step(*args, **kwargs):
        clock[0] += 1.0
        return real_step(*args, **kwargs)

    def evaluate(*args, **kwargs):
        clock[0] += 100.0
        return real_evaluate(*args, **kwargs)

    monkeypatch.setattr(drawcli.training.loop, "train_step", step)
    monkeypatch.setattr(drawcli.training.loop, "evaluate", evaluate)
    r = ok(run_cli("train", *TINY_TRAIN, "--epochs", "2", "--set", "train.log_every=1", "--name", "t", env=env))
    rows = metrics_rows(workdir / "runs" / "t")
    assert [row["img_per_s"] for row in rows if row["kind"] == "train"] == [32.0] * 6
    assert "32 img/s (training images over training time)" in r.stdout
    r = ok(run_cli("train", *TINY_TRAIN, "--max-steps", "1", "--name", "one", env=env))
    assert "32 img/s (training images over training time)" in r.stdout and "1.0 s (without evaluations" in r.stdout


# ----------------------------------------------------------------------------- two processes (--nproc 2)
@pytest.mark.parametrize("target", ["group", "launcher"])
def test_ctrl_c_to_a_two_process_job_is_one_line_last_pt_and_exit_130(tmp_path, proc_env, target):
    proc = draw_process("train", "--nproc", "2", *TINY_TRAIN, "-b", "8", "--epochs", "50", "--set", "train.log_every=1",
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


def test_nproc_decides_the_threads_once_and_torchrun_has_nothing_to_say(tmp_path, synthetic_data_dir):
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "MKL_NUM_THREADS")}
    env.update(DRAW_DATA_DIR=str(synthetic_data_dir), PYTHONPATH=str(ROOT))
    r = subprocess.run([sys.executable, "-m", "drawcli", "train", "--steps", "2", "--hidden", "16", "--latent", "4",
                        "-b", "32", "--device", "cpu", "--max-steps", "1", "--nproc", "2", "--no-tensorboard",
                        "--set", "train.eval_batch_size=20", "--name", "ddp"],
                       cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    out = r.stdout + r.stderr
    assert "OMP_NUM_THREADS" not in out and "*****" not in out, out  # torchrun's warning
    threads = [line for line in out.splitlines() if line.startswith("threads:")]
    assert len(threads) == 1 and " per process x 2 processes (" in threads[0], out
    assert out.count("warning: --steps sets glimpses T") == 1  # said once, by rank 0


@pytest.mark.parametrize("value", ["0", "-1"])
def test_nproc_below_one_is_refused(workdir, value):
    one_error_line(run_cli("train", "--nproc", value), f"--nproc must be at least 1, got {value}")
    assert not (workdir / "runs").exists()
