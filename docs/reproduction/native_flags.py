"""The native engine built with other compile flags, timed: one variant per process (a process can
load one library under torch.ops.drawcli). How README's flag measurements were made:

    for round in 1 2 3; do for v in all no-fast-math no-march-native no-512; do
        OMP_NUM_THREADS=1 PYTHONPATH=. python docs/reproduction/native_flags.py $v; done; done

Each line: paper-config training in bfloat16 at batch 128, float32 evaluation of 800 image copies
(with the log ratio), and colour_quick.yaml's model in bfloat16 at batch 32, in images per second
(medians). The builds go to $DRAWCLI_CACHE (default /tmp/drawcli-flags), one per variant.
"""

from __future__ import annotations

import json
import os
import statistics
import sys
import time

import torch

from drawcli.model import DRAW
from drawcli.model import native_build as native
from drawcli.training.loop import make_adam

VARIANTS = {
    "all": ["-O3", "-march=native", "-mprefer-vector-width=512", "-ffast-math"],
    "no-fast-math": ["-O3", "-march=native", "-mprefer-vector-width=512"],
    "no-march-native": ["-O3", "-ffast-math"],
    "no-512": ["-O3", "-march=native", "-ffast-math"],
}
OPTIMISATION = {"-O3", "-march=native", "-ffast-math", "-mprefer-vector-width=512"}


def median_seconds(fn, repeats: int) -> float:
    fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def training_step(model: DRAW, x: torch.Tensor):
    opt = make_adam(model.parameters(), 1e-3, (0.5, 0.999))

    def step():
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss = model(x, engine="native").loss.mean()
        opt.zero_grad()
        loss.backward()
        opt.step()

    return step


def main(variant: str) -> dict:
    default_flags = native.flags

    def flags(cxx):
        cflags, ldflags = default_flags(cxx)
        return VARIANTS[variant] + [f for f in cflags if f not in OPTIMISATION], ldflags

    native.flags = flags
    os.environ.setdefault("DRAWCLI_CACHE", "/tmp/drawcli-flags")
    torch.set_num_threads(1)
    assert native.load(), native.unavailable_reason()
    out = {}
    torch.manual_seed(0)
    paper = DRAW()
    out["train_bf16_128"] = 128 / median_seconds(training_step(paper, torch.rand(128, 28, 28).bernoulli()), 5)
    x = torch.rand(800, 28, 28).bernoulli()

    @torch.no_grad()
    def evaluate():
        paper(x, log_ratio=True, engine="native")

    out["eval_fp32_800"] = 800 / median_seconds(evaluate, 3)
    torch.manual_seed(0)
    colour = DRAW(height=32, width=32, channels=3, steps=16, hidden=256, embed=20, read_n=4, write_n=6)
    out["colour_bf16_32"] = 32 / median_seconds(training_step(colour, torch.rand(32, 3, 32, 32)), 9)
    return {variant: out}


if __name__ == "__main__":
    print(json.dumps(main(sys.argv[1])), flush=True)
