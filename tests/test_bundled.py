"""The trained model shipped in the package (@mnist): verified, deterministic, still as good as the README says."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import torch

from drawcli.runs import builtin

ROOT = Path(__file__).resolve().parents[1]


# The weights of @mnist as the .pt file held them before it became a model folder (commit e1b604b's
# drawcli/runs/weights/mnist.pt): sha256 over every tensor's name and float32 bytes, by name.
WEIGHTS_FINGERPRINT = "f12277ffe25924b76b81f8d64e89f7b129f297b495309fa068c804a8b1ac2f38"


def fingerprint(state: dict) -> str:
    h = hashlib.sha256()
    for name in sorted(state):
        h.update(name.encode())
        h.update(state[name].contiguous().numpy().tobytes())
    return h.hexdigest()


def test_the_bundled_folder_is_small_safetensors_and_matches_its_sha256s():
    entry = builtin.get_builtin("@mnist")
    folder = builtin.folder_path(entry)
    assert sorted(p.name for p in folder.iterdir()) == ["README.md", "config.json", "model.safetensors"]
    assert (folder / "model.safetensors").stat().st_size <= 5 * 2**20
    assert builtin.sha256_of(folder / "model.safetensors") == entry.sha256
    assert builtin.sha256_of(folder / "config.json") == entry.config_sha256
    config = json.loads((folder / "config.json").read_text())
    image = config["image"]
    model = {"height": image["height"], "width": image["width"], "channels": image["channels"], "glimpses": config["model"]["glimpses"],
             "hidden": config["model"]["hidden"], "latent": config["model"]["latent"],
             **{k: config["model"][k] for k in ("attention", "read_n", "write_n")}}
    assert model == entry.model and config["data"]["dataset"] == entry.dataset
    assert "optimizer" not in config and "data_dir" not in config["data"] and "runs_dir" not in config["run"]


def test_the_conversion_kept_the_weights_bit_for_bit():
    model, _, _ = builtin.build(builtin.get_builtin("mnist"), torch.device("cpu"))
    assert fingerprint(model.state_dict()) == WEIGHTS_FINGERPRINT


def test_loading_the_bundled_model_runs_no_pickle(monkeypatch):
    import pickle

    import drawcli

    def refuse(*args, **kwargs):
        raise AssertionError("a pickle was read")

    for module, name in ((torch, "load"), (pickle, "load"), (pickle, "loads"), (pickle, "Unpickler")):
        monkeypatch.setattr(module, name, refuse)
    drawer = drawcli.load("@mnist", device="cpu")
    assert fingerprint(drawer.model.state_dict()) == WEIGHTS_FINGERPRINT


def test_its_whole_history_is_recorded_and_reported(tmp_path, monkeypatch):
    """400 epochs in four cycles (issue 36): the registry, config.json, the card, drawcli.load and the
    init-from line agree; each cycle's steps are 938 per epoch (60k images, batch 64)."""
    import drawcli
    from drawcli.runs.folder import read_config

    entry = builtin.get_builtin("@mnist")
    config = read_config(builtin.folder_path(entry))
    assert config.training == entry.training
    cycles = config.training["cycles"]
    assert [c["epochs"] for c in cycles] == [160, 90, 85, 65] and config.epochs == 400
    assert all(c["steps"] == 938 * c["epochs"] for c in cycles) and config.steps == 375200
    assert "400 epochs in four cycles (160 + 90 + 85 + 65)" in entry.trained
    card = (builtin.folder_path(entry) / "README.md").read_text()
    assert "400 in 4 cycles" in card and "| ELBO | 80.94 ± 0.22 | 10000 | 1 |" in card and "| IWAE bound | 79.20 ± 0.20 | 10000 | 100 |" in card
    assert entry.results["test ELBO (all 10k, K=1)"] == 80.94 and entry.results["test IWAE bound (all 10k, K=100)"] == 79.20
    drawer = drawcli.load("@mnist", device="cpu")
    assert drawer.epoch == 400 and drawer.training == entry.training
    assert "400 epochs in 4 cycles: 160 + 90 + 85 + 65, 375200 steps" in repr(drawer) and "epoch 65" not in repr(drawer)


def test_draw_evaluate_reports_its_whole_history(tmp_path, monkeypatch, env):
    """`draw evaluate @mnist` says 400 epochs in four cycles (not the last cycle's epoch 65), in its
    line, its table and its JSON."""
    from helpers import run_cli

    monkeypatch.chdir(tmp_path)
    r = run_cli("evaluate", "@mnist", "--samples", "1", "--limit", "4", "--device", "cpu", env=env)
    assert r.exit_code == 0, r.output
    text = " ".join(r.output.split())
    assert "evaluating @mnist (400 epochs in 4 cycles: 160 + 90 + 85 + 65, 375200 steps) on 4 mnist test images" in text
    assert "run @mnist, 400 epochs in 4 cycles:" in text and "epoch 65" not in text
    result = json.loads((tmp_path / "mnist-eval-test-k1-limit4.json").read_text())
    assert result["epoch"] == 400 and result["step"] == 375200
    assert [c["epochs"] for c in result["training"]["cycles"]] == [160, 90, 85, 65]


def test_the_bundled_model_samples_deterministically_for_a_seed():
    model, settings, _ = builtin.build(builtin.get_builtin("mnist"), torch.device("cpu"))
    a, _ = model.generate(3, generator=torch.Generator().manual_seed(5), every_step=False)
    b, _ = model.generate(3, generator=torch.Generator().manual_seed(5), every_step=False)
    c, _ = model.generate(3, generator=torch.Generator().manual_seed(6), every_step=False)
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert settings.model.glimpses == 64 and settings.data.dataset == "mnist"


def test_draw_models_lists_it_without_torch():
    code = "import sys\nfrom drawcli.cli import app\ntry:\n    app(['models', '--json'], prog_name='draw')\nexcept SystemExit as e:\n    assert e.code in (0, None)\nprint('TORCH' if 'torch' in sys.modules else 'NO_TORCH')\n"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert '"ref": "@mnist"' in out.stdout and "NO_TORCH" in out.stdout


def test_animate_at_mnist_draws_with_no_data_and_no_runs(tmp_path, monkeypatch):
    """On a fresh install: no data set, no runs folder; the GIF is written to the current directory."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("DRAW_DATA_DIR", str(tmp_path / "no-data"))
    out = subprocess.run([sys.executable, "-m", "drawcli", "animate", "@mnist", "-o", "out.gif", "-n", "4"],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert (tmp_path / "out.gif").stat().st_size > 1000 and not (tmp_path / "no-data").exists()


@pytest.mark.mnist
def test_the_bundled_model_still_reaches_its_recorded_elbo(mnist_data_dir):
    """A regression check that can fail: the ELBO on the first 500 test images (fixed binarisation,
    K = 1) stays within 2 nats of the figure measured when the file was made."""
    from drawcli.data.loading import load_splits
    from drawcli.evaluation.bounds import likelihood_bounds

    want = builtin.REGRESSION["mnist"]
    model, settings, _ = builtin.build(builtin.get_builtin("mnist"), torch.device("cpu"))
    images = load_splits("mnist", mnist_data_dir).eval[: want["limit"]]
    bounds = likelihood_bounds(model, images, settings.data.binarize, want["samples"], seed=0)
    got = float(bounds.elbo.mean())
    assert abs(got - want["elbo"]) < 2.0, (got, want["elbo"])


def test_the_wheel_carries_the_weights(tmp_path):
    out = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(tmp_path), str(ROOT)],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    wheel = next(tmp_path.glob("drawcli-*.whl"))
    names = zipfile.ZipFile(wheel).namelist()
    assert {f"drawcli/runs/weights/mnist/{name}" for name in ("config.json", "model.safetensors", "README.md")} <= set(names)
