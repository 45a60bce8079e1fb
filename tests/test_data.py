"""drawcli/data/loading.py: reading data sets (IDX, .amat, gzip), splits, the data directory and model input."""

from __future__ import annotations

import gzip

import numpy as np
import pytest
import torch

from drawcli.core.errors import DrawError
from drawcli.data import loading as data

from helpers import idx_bytes, one_error_line, run_cli, synthetic_images


def test_idx_files_parse_plain_or_gzipped_by_their_bytes_not_their_name(tmp_path):
    images = synthetic_images(5)
    raw = idx_bytes(images)
    plain, zipped = tmp_path / "a", tmp_path / "b"
    plain.write_bytes(raw)
    zipped.write_bytes(gzip.compress(raw))  # no .gz suffix: the magic bytes decide
    for path in (plain, zipped):
        assert np.array_equal(data.parse_idx(data.read_bytes(path), path, 3), images)


@pytest.mark.parametrize(
    "mutate, message",
    [
        (lambda b: b[:3], "not an IDX ubyte file with 3 dimension(s)"),
        (lambda b: b[:-1], "truncated IDX data"),
        (lambda b: b + b"\x00", "too long IDX data"),
        (lambda b: b"\x00\x00\x08\x01" + b[4:], "not an IDX ubyte file with 3 dimension(s) (magic 00000801"),
    ],
)
def test_bad_idx_data_is_one_clear_error(tmp_path, mutate, message):
    raw = mutate(idx_bytes(synthetic_images(2)))
    with pytest.raises(DrawError, match=None) as e:
        data.parse_idx(raw, tmp_path / "f", 3)
    assert message in str(e.value)


def test_amat_rows_become_0_255_images(tmp_path):
    rows = np.random.default_rng(0).integers(0, 2, (3, 16))
    text = "\r\n".join(" ".join(map(str, r)) + " " for r in rows) + "\r\n"  # Windows line ends, trailing spaces
    images = data.parse_amat(text.encode(), tmp_path / "x.amat", side=4)
    assert images.dtype == np.uint8 and images.shape == (3, 4, 4)
    assert np.array_equal(images.reshape(3, 16), rows * 255)
    with pytest.raises(DrawError, match="expected 16 pixels on each of 1 lines"):
        data.parse_amat(b"0 1 0\n", tmp_path / "x.amat", side=4)


def test_the_data_directory_comes_from_the_setting_then_the_environment_then_the_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("DRAW_DATA_DIR", str(tmp_path / "env"))
    assert data.resolve_data_dir(str(tmp_path / "set")) == tmp_path / "set"
    assert data.resolve_data_dir(None) == tmp_path / "env"
    monkeypatch.delenv("DRAW_DATA_DIR")
    assert data.resolve_data_dir(None) == data.default_data_dir()


def test_splits_test_and_held_out_validation(synthetic_data_dir):
    splits = data.load_splits("mnist", synthetic_data_dir)
    assert (splits.train.shape, splits.eval.shape, splits.eval_name) == ((96, 28, 28), (40, 28, 28), "test")
    with pytest.raises(DrawError, match="too few training images to hold out 10000"):
        data.load_splits("mnist", synthetic_data_dir, validation=True)


def test_a_missing_set_names_the_file_and_the_command_with_its_data_dir(tmp_path):
    with pytest.raises(data.MissingDataset) as e:
        data.load_splits("mnist", tmp_path)
    assert "train-images-idx3-ubyte[.gz]" in str(e.value) and f"--data-dir {tmp_path}" in str(e.value)


def test_model_input_for_each_binarisation():
    images = torch.tensor([[[0, 64, 128, 255]]], dtype=torch.uint8)
    assert torch.equal(data.to_input(images, "threshold"), torch.tensor([[[0.0, 0.0, 1.0, 1.0]]]))
    assert torch.allclose(data.to_input(images, "none"), images.float() / 255)
    draws = torch.stack([data.to_input(images, "dynamic", torch.Generator().manual_seed(s)) for s in range(400)])
    assert set(draws.unique().tolist()) <= {0.0, 1.0}
    assert torch.allclose(draws.mean(0), images.float() / 255, atol=0.08)  # a Bernoulli sample of the grey levels
    assert draws[:, 0, 0, 0].sum() == 0 and draws[:, 0, 0, 3].sum() == 400
    with pytest.raises(DrawError, match="unknown binarisation 'blur'"):
        data.to_input(images, "blur")


def test_missing_data_hints_carry_the_data_dir(tmp_path, monkeypatch):
    from drawcli.data.catalogue import get_spec

    monkeypatch.setenv("DRAW_DATA_DIR", str(tmp_path / "default"))
    with pytest.raises(data.MissingDataset) as info:
        data.load_images(get_spec("mnist"), tmp_path / "x" / "mnist", "test_images")
    assert f"`draw download mnist --data-dir {tmp_path / 'x'}`" in str(info.value)
    with pytest.raises(data.MissingDataset) as info:
        data.load_images(get_spec("mnist"), tmp_path / "default" / "mnist", "test_images")
    assert "`draw download mnist`" in str(info.value)  # the default folder needs no flag


def test_data_set_names_get_a_suggestion(workdir):
    one_error_line(run_cli("download", "mnst", "--data-dir", workdir), "unknown data set 'mnst' (did you mean 'mnist'?)")
    one_error_line(run_cli("train", "--dataset", "fashion-mnst"), "got 'fashion-mnst' (did you mean 'fashion-mnist'?)")
