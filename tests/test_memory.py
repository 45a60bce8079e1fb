"""drawcli/core/memory.py: the memory a training step needs. A batch that cannot fit is refused
before the run starts, with the largest batch that fits, and the estimate is near what a real
step allocates."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from helpers import ROOT, TINY_TRAIN, ok, one_error_line, run_cli


def test_a_step_that_cannot_fit_in_memory_is_refused_with_the_largest_batch_that_fits(workdir, env):
    from drawcli.core.memory import step_memory

    # The tiny model's step: a 1.2 MB limit leaves room for about half of a 64-image batch.
    need = step_memory(2, 16, 4, True, 2, 5, 28, 28, parameters=0)
    limit = need.per_image * 40
    line = one_error_line(run_cli("train", *TINY_TRAIN, "--batch-size", "64", "--name", "m",
                                  env={**env, "DRAW_MEMORY_LIMIT": str(limit)}),
                          "a training step of batch 64 needs about")
    assert "is allowed (DRAW_MEMORY_LIMIT); the largest batch that fits is about" in line
    assert not (workdir / "runs" / "m").exists()
    largest = int(line.split("use --batch-size ")[1].split()[0])
    assert 0 < largest < 64
    ok(run_cli("train", *TINY_TRAIN, "--batch-size", largest, "--max-steps", "1", "--name", "m",
               env={**env, "DRAW_MEMORY_LIMIT": str(limit)}))


MEASURE = r"""
import json, re, sys
import torch
from drawcli.runs.checkpoint import build_model
from drawcli.training.distributed import DistEnv
from drawcli.core.memory import model_step_memory
from drawcli.settings import build_settings
from drawcli.training.loop import draw_batch, make_adam, train_step

def status(key):
    text = open("/proc/self/status").read()
    return int(re.search(rf"^{key}:\s+(\d+) kB", text, re.M).group(1)) * 1024

settings = build_settings(None, {"model": {"glimpses": 8, "hidden": 64, "latent": 10}})
model = build_model(settings, 28, 28)
params = list(model.parameters())
optimizer = make_adam(params, 1e-3, (0.9, 0.999))
gen = torch.Generator().manual_seed(0)

def step(b):
    images = torch.randint(0, 256, (b, 28, 28), dtype=torch.uint8)
    x, eps = draw_batch(images, torch.arange(b), "dynamic", model, gen, gen)
    train_step(model, optimizer, params, x, eps, 1e-3, 5.0, "float32", DistEnv())

step(8)  # libraries, the engine and Adam's state: not the batch's
before = status("VmRSS")
with open("/proc/self/clear_refs", "w") as f:
    f.write("5")  # resets the peak (VmHWM) to the current size
step(int(sys.argv[1]))
grown = status("VmHWM") - before
need = model_step_memory(settings.model, 28, 28, 1, sum(p.numel() for p in params), "float32")
print(json.dumps({"grown": grown, "estimate": need.total(int(sys.argv[1]))}))
"""


@pytest.mark.skipif(not os.path.exists("/proc/self/clear_refs"), reason="needs Linux's /proc/self/clear_refs")
@pytest.mark.parametrize("engine", ["default", "python"])
def test_the_memory_estimate_is_near_what_a_real_step_allocates(engine):
    """Peak RSS growth of one training step at batch 4096 (a fresh process, so that no freed memory
    of an earlier step is reused), against the estimate from the model's shapes: within a loose
    factor, for the native loop (where it runs) and the Python loop."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    if engine == "python":
        env["DRAWCLI_NATIVE"] = "0"
    out = subprocess.run([sys.executable, "-c", MEASURE, "4096"], capture_output=True, text=True, env=env, timeout=300)
    assert out.returncode == 0, out.stderr
    found = json.loads(out.stdout.strip().splitlines()[-1])
    assert found["grown"] > 100e6  # the batch's memory dominates what is measured
    assert 0.5 < found["grown"] / found["estimate"] < 1.5, found
