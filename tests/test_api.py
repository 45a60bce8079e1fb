"""The Python API (drawcli.load, Drawer, create_model) and torch.hub's hubconf.py: the same numbers
as the commands for the same images and seed."""

from __future__ import annotations

import json
import pydoc
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import drawcli
from drawcli.api import WORK
from drawcli.core.errors import DrawError

from helpers import run_cli, synthetic_images

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def mnist() -> drawcli.Drawer:
    return drawcli.load("@mnist", device="cpu")


def test_load_a_builtin_and_sample_deterministically(mnist):
    assert isinstance(mnist.model, drawcli.DRAW) and not mnist.model.training
    assert (mnist.glimpses, mnist.latent, mnist.image_shape, mnist.name) == (64, 100, (1, 28, 28), "@mnist")
    a, b, c = mnist.sample(5, seed=1), mnist.sample(5, seed=1), mnist.sample(5, seed=2)
    assert a.shape == (5, 1, 28, 28) and a.dtype == torch.float32 and 0 <= a.min() and a.max() <= 1
    assert torch.equal(a, b) and not torch.equal(a, c)
    film = mnist.sample_glimpses(5, seed=1)
    assert film.canvases.shape == (64, 5, 1, 28, 28) and film.write.shape == (64, 5, 5) and film.read is None
    assert torch.allclose(film.images, a, atol=1e-6)  # the same noise: the last glimpse is the sample


def test_api_latents_and_decode_draw_the_samples(mnist):
    z = mnist.latents(5, seed=7)
    assert z.shape == (64, 5, 100) and z.dtype == torch.float32
    film = mnist.decode(z[:, [3]].numpy())  # numpy or torch
    assert torch.allclose(film.images[0], mnist.sample(5, seed=7)[3], atol=1e-5)
    with pytest.raises(DrawError, match=r"\(T, N, Z\) = \(64, N, 100\)"):
        mnist.decode(torch.zeros(64, 2, 99))


def test_sample_is_what_draw_sample_writes(mnist, tmp_path):
    r = run_cli("sample", "@mnist", "-n", "6", "--seed", "3", "--npy", "--device", "cpu", "-o", tmp_path / "s.png")
    assert r.exit_code == 0, r.output
    written = np.load(tmp_path / "s.npy")
    assert np.array_equal(mnist.sample(6, seed=3)[:, 0].numpy(), written)


def test_bounds_and_attention_agree_with_the_commands_on_the_same_images_and_noise(mnist, tmp_path, monkeypatch, synthetic_data_dir):
    monkeypatch.setenv("DRAW_DATA_DIR", str(synthetic_data_dir))
    images = drawcli.load_images("mnist", limit=12)  # what draw evaluate --limit 12 reads
    for k in (1, 4):
        out = tmp_path / f"k{k}.json"
        r = run_cli("evaluate", "@mnist", "--samples", k, "--limit", 12, "--seed", 5, "--device", "cpu", "-o", out)
        assert r.exit_code == 0, r.output
        written = json.loads(out.read_text())
        bounds = mnist.bounds(images, samples=k, seed=5)
        assert bounds.elbo.shape == (12,) and bounds.elbo.dtype == torch.float64
        assert float(bounds.elbo.mean()) == pytest.approx(written["elbo"], abs=1e-9)
        assert float(bounds.iwae.mean()) == pytest.approx(written["iwae"], abs=1e-9)
    assert torch.equal(mnist.elbo(images, seed=5), mnist.bounds(images, 1, seed=5).elbo)
    assert float(mnist.iwae(images, k=4, seed=5).mean()) == pytest.approx(written["iwae"], abs=1e-9)

    r = run_cli("inspect-attention", "@mnist", "-n", 3, "--seed", 2, "--device", "cpu", "--json", tmp_path / "a.json",
                "-o", tmp_path / "a.gif")
    assert r.exit_code == 0, r.output
    doc = json.loads((tmp_path / "a.json").read_text())
    seen = mnist.attention(images[:3], seed=2)
    assert seen.canvases.shape == (64, 3, 1, 28, 28) and seen.read.shape == seen.write.shape == (64, 3, 5)
    assert set(np.unique(seen.inputs.numpy())) <= {0.0, 1.0}
    for i in range(3):
        for t in (0, 31, 63):
            step = doc["images"][i]["steps"][t]
            assert [step["write"][f] for f in ("g_x", "g_y", "delta", "sigma2", "gamma")] == pytest.approx(
                seen.write[t, i].tolist(), abs=1e-5)
            assert step["read"]["g_x"] == pytest.approx(float(seen.read[t, i, 0]), abs=1e-5)
    assert torch.equal(mnist.reconstruct(images[:3], seed=2), seen.images)


def test_load_images_reads_a_split_as_the_commands_do(synthetic_data_dir):
    from drawcli.data.catalogue import get_spec
    from drawcli.data.loading import load_images

    test = drawcli.load_images("mnist", data_dir=synthetic_data_dir)
    assert test.dtype == np.uint8 and test.shape == (40, 28, 28)
    assert np.array_equal(test, load_images(get_spec("mnist"), synthetic_data_dir / "mnist", "test_images"))
    assert np.array_equal(drawcli.load_images("mnist", "train", limit=5, data_dir=synthetic_data_dir),
                          load_images(get_spec("mnist"), synthetic_data_dir / "mnist", "train_images")[:5])
    for bad, message in (({"dataset": "mnsit"}, "did you mean 'mnist'"), ({"split": "tset"}, "split: expected one of"),
                         ({"limit": 0}, "limit must be an integer >= 1")):
        with pytest.raises(DrawError, match=message):
            drawcli.load_images(**{"data_dir": synthetic_data_dir, **bad})


def test_images_in_any_usual_form(mnist):
    u8 = synthetic_images(3)
    base = mnist.elbo(u8, seed=1)
    for same in (torch.from_numpy(u8), u8[:, None], u8.astype(np.float32) / 255.0, torch.from_numpy(u8).float() / 255):
        assert torch.equal(mnist.elbo(same, seed=1), base)
    assert mnist.elbo(u8[0], seed=1).shape == (1,)
    for bad, message in (
        (u8.astype(np.float32), "float images must hold grey levels in [0, 1]"),
        (u8[:, :20], "images are (20, 28); @mnist draws (28, 28)"),
        (u8.astype(np.int64), "images must be uint8 0..255 or floats in [0, 1], got int64"),
    ):
        with pytest.raises(DrawError, match=None) as e:
            mnist.elbo(bad)
        assert message in str(e.value)
    for bad_call, message in ((lambda: mnist.sample(0), "n must be an integer >= 1, got 0"),
                              (lambda: mnist.sample(2, seed=-1), "seed must be an integer >= 0, got -1"),
                              (lambda: mnist.iwae(u8, k=0), "k must be an integer >= 1, got 0"),
                              (lambda: mnist.bounds(u8, samples=0), "samples must be an integer >= 1, got 0")):
        with pytest.raises(DrawError) as e:
            bad_call()
        assert message in str(e.value)


def test_a_run_by_name_and_by_directory(tmp_path, monkeypatch, synthetic_data_dir):
    monkeypatch.chdir(tmp_path)
    r = run_cli("train", "--glimpses", "3", "--hidden", "16", "--latent", "4", "-b", "32", "--epochs", "1", "--device", "cpu",
                "--set", "train.eval_batch_size=50", "--name", "tiny", env={"DRAW_DATA_DIR": str(synthetic_data_dir)})
    assert r.exit_code == 0, r.output
    by_name = drawcli.load("tiny", device="cpu")
    by_dir = drawcli.load(tmp_path / "runs" / "tiny", device="cpu", checkpoint="1")
    assert by_name.name == by_dir.name == "tiny" and by_name.glimpses == 3 and by_dir.checkpoint.name == "epoch_001.pt"
    by_file = drawcli.load(tmp_path / "runs" / "tiny" / "checkpoints" / "epoch_001.pt", device="cpu")
    assert by_file.checkpoint.name == "epoch_001.pt" and by_file.epoch == 1
    assert torch.equal(by_name.sample(2, seed=0), by_dir.sample(2, seed=0))
    assert torch.equal(by_file.sample(2, seed=0), by_dir.sample(2, seed=0))
    # checkpoint: an epoch number as an int or a string, "last", "best" or None (the default).
    for checkpoint, name in ((1, "epoch_001.pt"), ("1", "epoch_001.pt"), ("001", "epoch_001.pt"), ("last", "last.pt"),
                             ("best", "best.pt"), (None, "best.pt")):
        assert drawcli.load("tiny", device="cpu", checkpoint=checkpoint).checkpoint.name == name, checkpoint
    for checkpoint, message in ((1.0, "checkpoint: expected an epoch number, 'last' or 'best', got 1.0"),
                                (True, "checkpoint: expected an epoch number, 'last' or 'best', got True"),
                                (-1, "checkpoint: expected an epoch number, 'last' or 'best', got -1"),
                                ("first", "checkpoint: expected an epoch number, 'last' or 'best', got 'first'"),
                                (2, "run 'tiny' has no checkpoint for epoch 2 (epochs with checkpoints: 1)")):
        with pytest.raises(DrawError) as e:
            drawcli.load("tiny", device="cpu", checkpoint=checkpoint)
        assert message in str(e.value), (checkpoint, str(e.value))


def test_a_wrong_source_is_one_clear_error(tmp_path):
    with pytest.raises(DrawError, match="unknown built-in model @nope"):
        drawcli.load("@nope")
    with pytest.raises(DrawError, match="not found"):
        drawcli.load("ghost", runs_dir=tmp_path)
    with pytest.raises(DrawError, match="run.device: expected auto, cpu, cuda, cuda:N or mps, got 'gpu'"):
        drawcli.load("@mnist", device="gpu")


def test_engine_answers_for_each_work_the_drawer_runs_and_only_those():
    drawer = drawcli.load("@mnist", device="cpu", engine="python")
    assert WORK == ("sample", "evaluate", "inspect-attention")
    assert [drawer.engine(work) for work in WORK] == ["python"] * 3
    with pytest.raises(DrawError, match="work: expected one of sample, evaluate, inspect-attention, got 'train'"):
        drawer.engine("train")


def test_create_model_takes_the_documented_names_and_checks_them():
    model = drawcli.create_model(glimpses=5, latent=7, read_n=3, height=20, width=24)
    assert isinstance(model, drawcli.DRAW) and (model.steps, model.embed, model.read_n, model.height, model.width) == (5, 7, 3, 20, 24)
    out = model(torch.rand(2, 20, 24))
    assert out.loss.shape == (2,)
    for kwargs, message in (({"glimpse": 5}, "did you mean 'glimpses'?"), ({"read_n": 30}, "model.read_n: must be <= 28"),
                            ({"channels": 0}, "channels must be an integer >= 1, got 0")):
        with pytest.raises(DrawError) as e:
            drawcli.create_model(**kwargs)
        assert message in str(e.value)


def test_create_model_takes_windows_as_wide_as_the_image():
    """The read and write windows may be as wide as the image side, whatever it is (not a fixed 28)."""
    model = drawcli.create_model(glimpses=2, hidden=8, latent=3, read_n=30, write_n=64, height=64, width=64)
    assert (model.read_n, model.write_n) == (30, 64)
    assert model(torch.rand(2, 64, 64), engine="python").loss.shape == (2,)
    with pytest.raises(DrawError) as e:
        drawcli.create_model(read_n=33, height=32, width=40)
    assert "model.read_n: must be <= 32 (the image side), got 33" in str(e.value)


def test_torch_hub_entry_points(tmp_path, monkeypatch):
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path))
    trained = torch.hub.load(str(ROOT), "mnist", source="local", device="cpu")
    assert isinstance(trained, drawcli.Drawer) and trained.name == "@mnist"
    assert torch.equal(trained.sample(2, seed=4), drawcli.load("@mnist", device="cpu").sample(2, seed=4))
    fresh = torch.hub.load(str(ROOT), "draw", source="local", glimpses=4, read_n=3)
    assert isinstance(fresh, drawcli.DRAW) and fresh.steps == 4 and fresh.read_n == 3


def test_import_is_light_and_help_is_useful():
    code = "import sys, drawcli; print('torch' in sys.modules); print(sorted(drawcli.__all__))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split("\n")
    assert out[0] == "False"
    assert "load" in out[1] and "create_model" in out[1]
    text = pydoc.render_doc(drawcli.api, renderer=pydoc.plaintext)
    for name in ("load", "Drawer", "sample_glimpses", "reconstruct", "iwae", "create_model"):
        assert name in text
    assert "drawcli.load(\"@mnist\")" in (drawcli.__doc__ or "")
