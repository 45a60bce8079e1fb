"""drawcli/runs/checkpoint.py: the format is written, read back weights-only, and rebuilds the model."""

from __future__ import annotations

import torch

from drawcli.runs import checkpoint as ckpt_io
from drawcli.training.loop import train

from helpers import Collect, synthetic_images, tiny_settings


def test_checkpoint_round_trip_is_weights_only(tmp_path):
    cb = Collect()
    images = synthetic_images()
    train(tiny_settings("train.max_steps=2"), images, images[:40], torch.device("cpu"), callbacks=[cb])
    path = tmp_path / "x.pt"
    ckpt_io.atomic_save(cb.ckpts[-1][0], path)
    assert not list(tmp_path.glob(".*tmp*"))  # the temp file was renamed into place
    loaded = torch.load(path, weights_only=True)  # plain types and tensors only
    assert loaded["step"] == 2 and loaded["format"] == ckpt_io.FORMAT


def test_a_written_checkpoint_loads_checks_and_rebuilds_the_same_model(tmp_path):
    cb = Collect()
    images = synthetic_images()
    result = train(tiny_settings("train.max_steps=2"), images, images[:40], torch.device("cpu"), callbacks=[cb])
    ckpt = cb.ckpts[-1][0]
    assert set(ckpt) == {"format", "format_version", "package_version", "model_config", "model", "optimizer", "epoch",
                         "epoch_images", "step", "settings", "rng", "metrics", "best_loss"}
    assert set(ckpt["rng"]) == {"data", "noise"} and ckpt["model_config"]["channels"] == 1
    path = tmp_path / "last.pt"
    ckpt_io.atomic_save(ckpt, path)
    model = ckpt_io.model_from_checkpoint(ckpt_io.load(path), "cpu")
    for k, v in result.model.state_dict().items():
        assert torch.equal(model.state_dict()[k], v)


def test_old_checkpoints_without_channels_or_epoch_images_still_load(tmp_path):
    cb = Collect()
    images = synthetic_images()
    train(tiny_settings("train.max_steps=2"), images, images[:40], torch.device("cpu"), callbacks=[cb])
    ckpt = dict(cb.ckpts[-1][0])
    ckpt["model_config"] = {k: v for k, v in ckpt["model_config"].items() if k != "channels"}
    del ckpt["epoch_images"]
    path = tmp_path / "old.pt"
    ckpt_io.atomic_save(ckpt, path)
    assert ckpt_io.model_from_checkpoint(ckpt_io.load(path), "cpu").config()["channels"] == 1
