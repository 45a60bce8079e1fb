"""Run under torchrun by test_distributed.py: train a tiny DRAW and save this rank's weights."""

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from drawcli.settings import build_settings  # noqa: E402
from drawcli.training import distributed  # noqa: E402
from drawcli.training.loop import train  # noqa: E402

from helpers import synthetic_images  # noqa: E402


def main(out: str, steps: str) -> None:
    env = distributed.env_from_os()
    device = distributed.init(env, "cpu")
    settings = build_settings(None, None, [
        "model.steps=3", "model.hidden=16", "model.embed=4", "train.batch_size=64", "data.binarize=threshold",
        f"train.max_steps={steps}", "train.eval_batch_size=30", "train.log_every=2", "train.seed=3",
        "train.precision=float32",  # compared with one process to float-sum precision: exactness pins float32
    ])
    images = synthetic_images(200, seed=5)
    result = train(settings, images, images[:70], device, env=env)
    torch.save({"model": result.model.state_dict(), "eval": result.eval}, Path(out) / f"rank{env.rank}.pt")
    distributed.barrier()  # leave together (see drawcli.training.run.run_train)
    distributed.shutdown()


if __name__ == "__main__":
    main(*sys.argv[1:])
