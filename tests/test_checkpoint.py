"""drawcli/runs/checkpoint.py: the format is written, read back weights-only, and rebuilds the model;
a corrupt checkpoint is passed over for the newest readable one."""

from __future__ import annotations

import torch

from drawcli.runs import checkpoint as ckpt_io
from drawcli.training.loop import train

from helpers import TINY_TRAIN, Collect, ok, run_cli, synthetic_images, tiny_settings


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


def test_a_corrupt_last_pt_falls_back_to_the_newest_readable_checkpoint(workdir, env):
    import json
    import os

    from drawcli.runs import names

    ok(run_cli("train", *TINY_TRAIN, "--epochs", "3", "--name", "c", env=env))
    ckpts = workdir / "runs" / "c" / "checkpoints"
    last = ckpts / "last.pt"
    os.truncate(last, 10000)  # last.pt is a hard link to epoch_003.pt: both are cut
    r = ok(run_cli("sample", "c", "-n", "4", env=env))
    assert "not a readable checkpoint" in r.stdout and "using epoch_002.pt instead (epoch 2, step 6)" in r.stdout
    assert (workdir / "runs" / "c" / "samples-epoch_002-n4-seed0.png").is_file()
    status = json.loads(run_cli("runs", "--json").stdout)[0]
    assert "last.pt" in status["unreadable"] and "last.pt" in run_cli("runs").stdout.split("unreadable")[0]

    r = ok(run_cli("train", "--resume", "c", "--epochs", "4", env=env))
    assert "using epoch_002.pt instead" in r.stdout and "moved last.pt, epoch_003.pt" in r.stdout
    aside = [p for p in ckpts.iterdir() if p.name.startswith("set-aside-")]
    assert len(aside) == 1 and (aside[0] / "last.pt").stat().st_size == 10000  # the evidence, as it was
    assert ckpt_io.load(ckpts / "epoch_004.pt")["step"] == 12 and ckpt_io.load(ckpts / "last.pt")["step"] == 12
    assert not run_cli("runs", "--json").stdout.count('"last.pt"')

    # A chosen checkpoint file: resume from epoch 1; the newer files move aside, nothing is overwritten.
    r = ok(run_cli("train", "--resume", ckpts / "epoch_001.pt", "--epochs", "2", env=env))
    assert "moved last.pt, epoch_002.pt, epoch_003.pt, epoch_004.pt" in r.stdout
    assert ckpt_io.load(ckpts / "epoch_002.pt")["step"] == 6 and names.list_epochs(ckpts) == [1, 2]
    assert len([p for p in ckpts.iterdir() if p.name.startswith("set-aside-")]) == 2
