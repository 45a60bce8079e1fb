"""torchrun + DistributedDataParallel on the CPU (gloo), 2 processes, as CI runs it."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import torch

from drawcli.runs import checkpoint as ckpt_io
from drawcli.runs.checkpoint import model_from_checkpoint
from drawcli.settings import build_settings
from drawcli.training.loop import train

from helpers import synthetic_images

HERE = Path(__file__).parent


def torchrun(*args, cwd, env=None, timeout=300):
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2", *args]
    return subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


def test_two_processes_match_one_process_with_the_global_batch(tmp_path):
    r = torchrun(str(HERE / "ddp_worker.py"), str(tmp_path), "5", cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    ranks = [torch.load(tmp_path / f"rank{i}.pt", weights_only=True) for i in (0, 1)]
    # The same settings in one process: batch 64 instead of 2 x 32.
    settings = build_settings(None, None, [
        "model.steps=3", "model.hidden=16", "model.embed=4", "train.batch_size=64", "data.binarize=threshold",
        "train.max_steps=5", "train.eval_batch_size=30", "train.log_every=2", "train.seed=3", "train.precision=float32",
    ])
    images = synthetic_images(200, seed=5)
    single = train(settings, images, images[:70], torch.device("cpu"))
    for key, value in single.model.state_dict().items():
        assert torch.equal(ranks[0]["model"][key], ranks[1]["model"][key]), key  # identical across ranks
        assert torch.allclose(ranks[0]["model"][key], value, rtol=1e-4, atol=1e-5), key
    # Sharded evaluation reduces to the single-process value.
    for k in ("lx", "lz"):
        assert abs(ranks[0]["eval"][k] - single.eval[k]) < 1e-3 * abs(single.eval[k]) + 1e-3


def test_nproc_cli_single_writer_checkpoint_loads_and_resume_in_one_process(tmp_path, synthetic_data_dir):
    env = {**os.environ, "DRAW_DATA_DIR": str(synthetic_data_dir)}
    base = [sys.executable, "-m", "drawcli", "train", "--steps", "3", "--hidden", "16", "--embed", "4",
            "-b", "32", "--device", "cpu", "--set", "train.log_every=1", "--set", "train.eval_batch_size=20"]
    r = subprocess.run([*base, "--nproc", "2", "--epochs", "1", "--name", "ddp"], cwd=tmp_path, env=env,
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    run = tmp_path / "runs" / "ddp"
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    steps = [row["step"] for row in rows if row["kind"] == "train"]
    assert steps == [1, 2, 3]  # 96 images / 32: one writer, each step once
    if importlib.util.find_spec("tensorboard") is not None:  # run.tensorboard auto: rank 0 alone writes events
        assert len(list((run / "tb").glob("events.out.tfevents.*"))) == 1
    assert r.stdout.count("epoch 1 (step 3)") == 1  # printed once, by rank 0
    ckpt = ckpt_io.load(run / "checkpoints" / "last.pt")
    model = model_from_checkpoint(ckpt, "cpu")  # the unwrapped model's keys: loads in one process
    canvases, _ = model.generate(2)
    assert torch.isfinite(canvases).all()

    r = subprocess.run([sys.executable, "-m", "drawcli", "train", "--resume", "ddp", "--epochs", "2"], cwd=tmp_path,
                       env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    assert ckpt_io.load(run / "checkpoints" / "last.pt")["step"] == 6

    # A failure on rank 0 (the run exists) ends the whole job, with the message shown once.
    r = subprocess.run([*base, "--nproc", "2", "--name", "ddp"], cwd=tmp_path, env=env,
                       capture_output=True, text=True, timeout=300)
    assert r.returncode != 0
    assert r.stderr.count("run 'ddp' already exists") == 1, r.stderr
    assert "Traceback" not in r.stderr

    # A global batch that does not split over the processes is refused before launching.
    r = subprocess.run([*base[:-4], "-b", "33", "--nproc", "2"], cwd=tmp_path, env=env,
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 1 and "must be divisible by --nproc 2" in r.stderr
