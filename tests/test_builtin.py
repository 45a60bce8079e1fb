"""Built-in models (drawcli/runs/builtin.py): verified by sha256, loaded weights-only, listed without torch."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from drawcli.core.errors import DrawError
from drawcli.runs import builtin
from drawcli.training.loop import train

from helpers import Collect, synthetic_images, tiny_settings


@pytest.fixture
def tiny_builtin(tmp_path, monkeypatch):
    """A registry entry for a tiny model trained here, its file in a temporary weights folder."""
    cb = Collect()
    images = synthetic_images()
    train(tiny_settings("train.max_steps=2"), images, images[:40], torch.device("cpu"), callbacks=[cb])
    path = tmp_path / "tiny.pt"
    digest = builtin.export_weights(cb.ckpts[-1][0], path, {"note": "test"})
    entry = builtin.BuiltinModel(name="tiny", file="tiny.pt", sha256=digest, description="a test model",
                                 dataset="mnist", model=cb.ckpts[-1][0]["model_config"], trained="two steps")
    monkeypatch.setitem(builtin.BUILTINS, "tiny", entry)
    monkeypatch.setattr(builtin, "weights_path", lambda e: tmp_path / e.file)
    return entry, path


def test_export_holds_weights_only_in_float32(tiny_builtin):
    entry, path = tiny_builtin
    data = torch.load(path, weights_only=True)
    assert data["format"] == builtin.WEIGHTS_FORMAT and "optimizer" not in data and "rng" not in data
    assert all(t.dtype == torch.float32 for t in data["model"].values())
    assert builtin.sha256_of(path) == entry.sha256


def test_export_leaves_out_the_training_machines_folders(tmp_path):
    cb = Collect()
    images = synthetic_images()
    settings = tiny_settings("train.max_steps=1", f"data.data_dir={tmp_path / 'mydata'}", f"run.runs_dir={tmp_path / 'myruns'}")
    train(settings, images, images[:40], torch.device("cpu"), callbacks=[cb])
    ckpt = cb.ckpts[-1][0]
    assert ckpt["settings"]["data"]["data_dir"] == str(tmp_path / "mydata")
    builtin.export_weights(ckpt, tmp_path / "w.pt")
    saved = torch.load(tmp_path / "w.pt", weights_only=True)["settings"]
    assert "data_dir" not in saved["data"] and "runs_dir" not in saved["run"] and str(tmp_path) not in repr(saved)
    assert saved["model"] == ckpt["settings"]["model"] and ckpt["settings"]["data"]["data_dir"]  # the checkpoint is untouched


def test_a_builtin_loads_and_samples_deterministically(tiny_builtin):
    entry, _ = tiny_builtin
    model, settings, data = builtin.build(builtin.get_builtin("@tiny"), torch.device("cpu"))
    assert not model.training and settings.model.glimpses == 3 and data["note"] == "test"
    a, _ = model.generate(4, generator=torch.Generator().manual_seed(1))
    b, _ = model.generate(4, generator=torch.Generator().manual_seed(1))
    assert torch.equal(a, b)


def test_a_flipped_byte_is_one_clear_error(tiny_builtin):
    entry, path = tiny_builtin
    raw = bytearray(path.read_bytes())
    raw[len(raw) // 2] ^= 0x01
    path.write_bytes(bytes(raw))
    with pytest.raises(DrawError, match=r"built-in model @tiny: .*tiny.pt is corrupt \(sha256 .*reinstall drawcli"):
        builtin.build(entry, torch.device("cpu"))


def test_a_missing_file_and_an_unknown_name_are_one_line_errors(tiny_builtin, tmp_path):
    entry, path = tiny_builtin
    with pytest.raises(DrawError, match=r"unknown built-in model @nosuch \(built-in models: .*@tiny"):
        builtin.get_builtin("@nosuch")
    path.unlink()
    with pytest.raises(DrawError, match="is missing from this installation; reinstall drawcli"):
        builtin.build(entry, torch.device("cpu"))


def test_a_file_that_is_not_weights_is_refused(tiny_builtin):
    entry, path = tiny_builtin
    torch.save({"format": "something-else"}, path)
    fake = dataclasses.replace(entry, sha256=builtin.sha256_of(path))
    with pytest.raises(DrawError, match="is not a drawcli weights file"):
        builtin.load_weights(fake)


def test_a_mistyped_builtin_name_suggests_the_nearest():
    with pytest.raises(DrawError, match=r"unknown built-in model @mnst \(did you mean @mnist\?"):
        builtin.get_builtin("@mnst")
