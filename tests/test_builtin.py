"""Built-in models (drawcli/runs/builtin.py): model folders verified by sha256, read with no pickle,
listed without torch; and the .pt weights files `draw export NAME.pt` writes."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch

from drawcli.core.errors import DrawError
from drawcli.runs import builtin
from drawcli.training.loop import train

from helpers import Collect, synthetic_images, tiny_settings

HISTORY = {"epochs": 3, "steps": 5, "cycles": [{"run": "a", "epochs": 1, "steps": 2}, {"run": "b", "epochs": 2, "steps": 3, "init_from": "a"}]}


@pytest.fixture
def tiny_ckpt():
    cb = Collect()
    images = synthetic_images()
    train(tiny_settings("train.max_steps=2"), images, images[:40], torch.device("cpu"), callbacks=[cb])
    return cb.ckpts[-1][0]


@pytest.fixture
def tiny_builtin(tiny_ckpt, tmp_path, monkeypatch):
    """A registry entry for a tiny model trained here, its folder in a temporary weights folder."""
    entry = builtin.BuiltinModel(name="tiny", folder="tiny", sha256="", config_sha256="", description="a test model",
                                 dataset="mnist", model=tiny_ckpt["model_config"], trained="two steps", training=HISTORY,
                                 measured=({"what": "ELBO", "nats": 99.5, "stderr": 1.25, "images": 10, "samples": 1,
                                            "command": "draw evaluate tiny --samples 1"},))
    weights, config = builtin.write_builtin(entry, tiny_ckpt, tmp_path / "tiny")
    entry = dataclasses.replace(entry, sha256=weights, config_sha256=config)
    monkeypatch.setitem(builtin.BUILTINS, "tiny", entry)
    monkeypatch.setattr(builtin, "folder_path", lambda e: tmp_path / e.folder)
    return entry, tmp_path / "tiny"


def test_export_weights_holds_weights_only_in_float32(tiny_ckpt, tmp_path):
    path = tmp_path / "tiny.pt"
    digest = builtin.export_weights(tiny_ckpt, path, {"note": "test"})
    data = torch.load(path, weights_only=True)
    assert data["format"] == builtin.WEIGHTS_FORMAT and "optimizer" not in data and "rng" not in data and data["note"] == "test"
    assert all(t.dtype == torch.float32 for t in data["model"].values())
    assert builtin.sha256_of(path) == digest


def test_exports_leave_out_the_training_machines_folders(tmp_path):
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
    entry = builtin.BuiltinModel(name="x", folder="x", sha256="", config_sha256="", description="", dataset="mnist",
                                 model=ckpt["model_config"], trained="")
    builtin.write_builtin(entry, ckpt, tmp_path / "x")
    config = (tmp_path / "x" / "config.json").read_text()
    assert "data_dir" not in config and "runs_dir" not in config and str(tmp_path) not in config


def test_a_builtin_loads_with_its_history_and_samples_deterministically(tiny_builtin):
    entry, folder = tiny_builtin
    model, settings, config = builtin.build(builtin.get_builtin("@tiny"), torch.device("cpu"))
    assert not model.training and settings.model.glimpses == 3 and config.training == HISTORY and config.epochs == 3
    a, _ = model.generate(4, generator=torch.Generator().manual_seed(1))
    b, _ = model.generate(4, generator=torch.Generator().manual_seed(1))
    assert torch.equal(a, b)
    card = (folder / "README.md").read_text()
    assert "# @tiny" in card and "| ELBO | 99.50 ± 1.25 | 10 | 1 | `draw evaluate tiny --samples 1` |" in card
    assert "| IWAE | not measured |" in card and "3 in 2 cycles" in card and "## License" in card and "MIT" in card


@pytest.mark.parametrize("name", ["model.safetensors", "config.json"])
def test_a_flipped_byte_is_one_clear_error(tiny_builtin, name):
    entry, folder = tiny_builtin
    path = folder / name
    raw = bytearray(path.read_bytes())
    raw[len(raw) // 2] ^= 0x01
    path.write_bytes(bytes(raw))
    with pytest.raises(DrawError, match=rf"built-in model @tiny: .*{name} is corrupt \(sha256 .*reinstall drawcli"):
        builtin.build(entry, torch.device("cpu"))


def test_a_missing_file_and_an_unknown_name_are_one_line_errors(tiny_builtin):
    entry, folder = tiny_builtin
    with pytest.raises(DrawError, match=r"unknown built-in model @nosuch \(built-in models: .*@tiny"):
        builtin.get_builtin("@nosuch")
    (folder / "model.safetensors").unlink()
    with pytest.raises(DrawError, match="model.safetensors is missing from this installation; reinstall drawcli"):
        builtin.build(entry, torch.device("cpu"))


def test_a_folder_that_matches_its_sha256_but_not_the_format_is_refused(tiny_builtin, tiny_ckpt):
    entry, folder = tiny_builtin
    torch.save({"format": "something-else"}, folder / "model.safetensors")  # a pickle where the weights should be
    config = json.loads((folder / "config.json").read_text())
    fake = dataclasses.replace(entry, sha256=builtin.sha256_of(folder / "model.safetensors"))
    with pytest.raises(DrawError, match=r"^built-in model @tiny: .*model.safetensors: not a valid safetensors file"):
        builtin.build(fake, torch.device("cpu"))
    assert config["format"] == "drawcli-model"


def test_a_mistyped_builtin_name_suggests_the_nearest():
    with pytest.raises(DrawError, match=r"unknown built-in model @mnst \(did you mean @mnist\?"):
        builtin.get_builtin("@mnst")
