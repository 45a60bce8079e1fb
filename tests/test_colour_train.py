"""Colour training end to end: a folder of RGB pictures trains, resumes, evaluates and samples."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from drawcli.cli import app

runner = CliRunner()


def draw(*args):
    result = runner.invoke(app, [str(a) for a in args])
    assert "Traceback" not in result.output, result.output
    return result


@pytest.fixture
def pictures(tmp_path):
    """40 small RGB pictures in two class folders: a coloured square on a dark background."""
    g = np.random.default_rng(0)
    for i in range(40):
        img = np.zeros((12, 12, 3), dtype=np.uint8)
        y, x = g.integers(0, 6, 2)
        img[y : y + 6, x : x + 6] = g.integers(80, 256, 3)
        folder = tmp_path / "pics" / ("a" if i % 2 else "b")
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(img).save(folder / f"{i}.png")
    return tmp_path / "pics"


def test_a_folder_of_colour_pictures_trains_resumes_evaluates_and_samples(pictures, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    common = ["--data-dir", tmp_path / "data", "--runs-dir", tmp_path / "runs", "--device", "cpu"]
    first = draw("train", "--dataset", f"folder:{pictures}", "--steps", "2", "--hidden", "16", "--embed", "4",
                 "--read-n", "2", "--write-n", "3", "-b", "8", "--max-steps", "3", "--name", "rgb", "--set", "data.binarize=none", *common)
    assert first.exit_code == 0, first.output
    ckpt = torch.load(tmp_path / "runs" / "rgb" / "checkpoints" / "last.pt", weights_only=True)
    assert ckpt["model_config"]["channels"] == 3 and ckpt["model_config"]["height"] == 12
    resumed = draw("train", "--resume", "rgb", "--max-steps", "5", *common)
    assert resumed.exit_code == 0, resumed.output
    rows = [json.loads(line) for line in (tmp_path / "runs" / "rgb" / "metrics.jsonl").read_text().splitlines()]
    evals = [r for r in rows if r["kind"] == "eval"]
    assert [r["step"] for r in evals] == [3, 5] and all(np.isfinite(r["loss"]) for r in evals)
    ev = draw("evaluate", "rgb", "--samples", "2", "--runs-dir", tmp_path / "runs", "--data-dir", tmp_path / "data",
              "-o", tmp_path / "e.json")
    assert ev.exit_code == 0, ev.output
    result = json.loads((tmp_path / "e.json").read_text())
    assert result["continuous"] is True and result["values_per_image"] == 3 * 12 * 12
    assert result["elbo_per_value_bits"] == pytest.approx(result["elbo"] / 432 / np.log(2))
    assert "not bounds on a likelihood" in ev.output and "Bernoulli cross-entropy of continuous targets" in ev.output
    events = list((tmp_path / "runs" / "rgb" / "tb").glob("events.*"))
    assert events, "TensorBoard logs colour runs too (RGB sample grids)"
    sample = draw("sample", "rgb", "--runs-dir", tmp_path / "runs", "-n", "4", "-o", tmp_path / "s.png")
    assert sample.exit_code == 0, sample.output
    assert np.asarray(Image.open(tmp_path / "s.png")).shape[-1] == 3  # an RGB grid of the colour samples
