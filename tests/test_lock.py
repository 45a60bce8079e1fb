"""drawcli/runs/lock.py: one writer per run. A second process cannot train a run that is being
trained; the lock is reentrant inside one process and let go by the OS when its holder dies."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import pytest

from drawcli.runs import lock

from helpers import TINY_TRAIN, draw_process, metrics_rows, one_error_line, run_cli


def test_a_second_process_cannot_train_a_run_that_is_being_trained(tiny_run, proc_env):
    cwd = tiny_run.parent.parent
    first = draw_process("train", "--resume", "tiny", "--epochs", "5000", "--set", "train.log_every=1", cwd=cwd, env=proc_env)
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:  # the lock file names its holder once it holds it
            if first.poll() is not None:
                pytest.fail(f"the first training ended early: {first.communicate()}")
            try:
                if json.loads((tiny_run / ".lock").read_text()).get("pid") == first.pid:
                    break
            except (OSError, ValueError):
                pass
            time.sleep(0.05)
        holder = lock.lock_holder(tiny_run)
        assert holder is not None and holder["pid"] == first.pid and holder["command"].startswith("draw train --resume")
        second = subprocess.run([sys.executable, "-m", "drawcli", "train", "--resume", "tiny", "--epochs", "500"],
                                cwd=cwd, env=proc_env, capture_output=True, text=True, timeout=120)
        assert second.returncode == 1, second
        lines = second.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith(f"error: run 'tiny' is being trained by pid {first.pid} on "), lines
        second_rows = [r for r in metrics_rows(tiny_run) if r["kind"] == "resume" and r["changes"].get("train.epochs") == [1, 500]]
        assert not second_rows  # the second one wrote nothing
        one_error_line(run_cli("train", *TINY_TRAIN, "--name", "tiny"),
                       f"run 'tiny' already exists in runs and is being trained by pid {first.pid} on ")
    finally:
        first.kill()  # SIGKILL: no cleanup of any kind
        first.communicate()
    assert (tiny_run / ".lock").is_file() and lock.lock_holder(tiny_run) is None  # the OS let go of it
    third = subprocess.run([sys.executable, "-m", "drawcli", "train", "--resume", "tiny", "--epochs", "1"],
                           cwd=cwd, env=proc_env, capture_output=True, text=True, timeout=120)
    assert third.returncode == 0, third.stderr
    steps = [r["step"] for r in metrics_rows(tiny_run) if r["kind"] == "train"]
    assert steps == sorted(steps)  # one writer at a time: no interleaved rows


def test_the_lock_is_reentrant_in_one_process_and_exclusive_across_descriptors(tmp_path):
    with lock.run_lock(tmp_path):
        with lock.run_lock(tmp_path):  # the CLI holds it, then training takes it again
            assert lock.lock_holder(tmp_path) is None  # this process is not "another" holder
        info = json.loads((tmp_path / ".lock").read_text())
        assert info["pid"] == os.getpid() and {"host", "started", "command"} <= set(info)
    assert lock.lock_holder(tmp_path) is None
