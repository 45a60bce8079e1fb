"""Interruption and exact resume, with a real signal to a real `draw train` process."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from drawcli.runs import checkpoint as ckpt_io

ARGS = ["train", "--steps", "3", "--hidden", "16", "--embed", "4", "-b", "8", "--epochs", "3",
        "--device", "cpu", "--seed", "7", "--set", "train.log_every=1", "--set", "train.eval_batch_size=40"]


def draw(*args, cwd, env, **kw):
    return subprocess.Popen([sys.executable, "-m", "drawcli", *args], cwd=cwd, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kw)


def wait_for_step(metrics, step, proc, timeout=120):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"training ended before step {step}: {proc.communicate()}")
        if metrics.is_file():
            steps = [json.loads(line)["step"] for line in metrics.read_text().splitlines() if line.strip()]
            if steps and max(steps) >= step:
                return
        time.sleep(0.05)
    pytest.fail(f"step {step} not reached in {timeout} s")


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_signal_saves_last_and_resume_is_bit_identical(tmp_path, synthetic_data_dir, sig):
    env = {**os.environ, "DRAW_DATA_DIR": str(synthetic_data_dir), "PYTHONUNBUFFERED": "1"}
    # 96 images / 8 = 12 steps per epoch, 36 in all. Interrupt somewhere inside epoch 2.
    proc = draw(*ARGS, "--name", "cut", cwd=tmp_path, env=env)
    wait_for_step(tmp_path / "runs" / "cut" / "metrics.jsonl", 14, proc)
    proc.send_signal(sig)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, (out, err)
    assert "Traceback" not in err
    assert "continue with: draw train --resume cut" in err
    last = ckpt_io.load(tmp_path / "runs" / "cut" / "checkpoints" / "last.pt")
    stopped_at = last["step"]
    assert 14 <= stopped_at < 36  # mid-run, after the step that was in flight
    assert not list((tmp_path / "runs" / "cut" / "checkpoints").glob(".*tmp*"))

    resumed = draw("train", "--resume", "cut", cwd=tmp_path, env=env)
    out, err = resumed.communicate(timeout=300)
    assert resumed.returncode == 0, err
    straight = draw(*ARGS, "--name", "straight", cwd=tmp_path, env=env)
    out, err = straight.communicate(timeout=300)
    assert straight.returncode == 0, err

    a = ckpt_io.load(tmp_path / "runs" / "cut" / "checkpoints" / "last.pt")
    b = ckpt_io.load(tmp_path / "runs" / "straight" / "checkpoints" / "last.pt")
    assert a["step"] == b["step"] == 36
    for key in b["model"]:
        assert torch.equal(a["model"][key], b["model"][key]), key
    for sa, sb in zip(a["optimizer"]["state"].values(), b["optimizer"]["state"].values()):
        assert all(torch.equal(sa[k], sb[k]) for k in sb if torch.is_tensor(sb[k]))


def test_non_finite_loss_stops_with_the_step_and_term(tmp_path, synthetic_data_dir):
    """A learning rate this large blows the weights up; the last good checkpoint stays."""
    env = {**os.environ, "DRAW_DATA_DIR": str(synthetic_data_dir)}
    first = draw(*ARGS[:-4], "--max-steps", "12", "--name", "blow", cwd=tmp_path, env=env)
    assert first.wait(timeout=300) == 0
    good = ckpt_io.load(tmp_path / "runs" / "blow" / "checkpoints" / "last.pt")
    proc = draw("train", "--resume", "blow", "--lr", "1e30", "--set", "train.grad_clip=0", cwd=tmp_path, env=env)
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 1, (out, err)
    assert "training diverged:" in err and "was not finite at step" in err and "Traceback" not in err
    assert any(term in err for term in ("L_x", "L_z", "gradient norm"))
    kept = ckpt_io.load(tmp_path / "runs" / "blow" / "checkpoints" / "last.pt")
    assert kept["step"] == good["step"]
    assert all(torch.equal(kept["model"][k], good["model"][k]) for k in good["model"])


def test_second_sigint_quits_at_once_without_a_partial_checkpoint(tmp_path, synthetic_data_dir):
    env = {**os.environ, "DRAW_DATA_DIR": str(synthetic_data_dir), "PYTHONUNBUFFERED": "1"}
    proc = draw(*ARGS, "--name", "twice", cwd=tmp_path, env=env)
    ckpts = tmp_path / "runs" / "twice" / "checkpoints"
    wait_for_step(tmp_path / "runs" / "twice" / "metrics.jsonl", 14, proc)  # epoch 1's checkpoint exists
    proc.send_signal(signal.SIGINT)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, (out, err)
    assert "Traceback" not in err
    # Whatever happened first, last.pt is a whole checkpoint (the old one or the new one).
    assert ckpt_io.load(ckpts / "last.pt")["step"] >= 12
    assert not list(ckpts.glob(".*tmp*"))


def test_a_clean_stop_is_not_an_error_and_says_what_was_saved(tmp_path, monkeypatch, synthetic_data_dir):
    """What Ctrl-C (or SIGTERM) ends with once last.pt is written: not 'error:', but where to go on from."""
    import drawcli.training.loop
    from drawcli.core.errors import Interrupted

    from helpers import run_cli

    monkeypatch.chdir(tmp_path)

    def stopped(*args, **kwargs):
        raise Interrupted(5)

    monkeypatch.setattr(drawcli.training.loop, "train", stopped)
    r = run_cli(*ARGS, "--name", "cut", env={"DRAW_DATA_DIR": str(synthetic_data_dir)})
    assert r.exit_code == 130
    assert r.stderr.strip().splitlines()[-1] == "stopped at step 5: saved runs/cut/checkpoints/last.pt; continue with: draw train --resume cut"
    assert "error" not in r.stderr
