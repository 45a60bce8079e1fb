"""folder:PATH data sets: formats and colour modes, resizing, splits, the cache, and bad folders.

Every picture is written here with Pillow, most of them one flat colour, so the expected
pixel values are exact whatever the resizing filter does.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from drawcli.core.errors import DrawError
from drawcli.data import folders
from drawcli.data import loading as data
from drawcli.settings import build_settings, load_data

from helpers import TINY_TRAIN, ok, one_error_line, picture_folder, run_cli


def flat(mode: str, size: tuple[int, int], colour) -> Image.Image:
    return Image.new(mode, size, colour)


def save(img: Image.Image, path: Path, **kw) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path, **kw)
    return path


def palette_with_transparency(size=(10, 10)) -> Image.Image:
    """P image: left half palette index 0 (transparent), right half index 1 (pure green)."""
    img = Image.new("P", size, 0)
    img.putpalette([255, 0, 0, 0, 255, 0] + [0] * (254 * 3))
    img.paste(1, (size[0] // 2, 0, size[0], size[1]))
    img.info["transparency"] = 0
    return img


def gif_two_frames(path: Path) -> Path:
    first, second = flat("RGB", (10, 10), (0, 0, 255)), flat("RGB", (10, 10), (255, 255, 0))
    path.parent.mkdir(parents=True, exist_ok=True)
    first.save(path, save_all=True, append_images=[second], duration=100)
    return path


@pytest.fixture
def zoo(tmp_path) -> Path:
    """One folder with every kind of file, in class subfolders, 10x10 pixels each."""
    root = tmp_path / "pictures"
    save(flat("L", (10, 10), 100), root / "cats" / "a_grey.png")
    save(palette_with_transparency(), root / "cats" / "b_palette.png")
    rgba = flat("RGBA", (10, 10), (0, 0, 255, 255))
    rgba.paste((0, 0, 0, 0), (0, 0, 5, 10))  # left half fully transparent
    save(rgba, root / "cats" / "c_rgba.png")
    save(flat("LA", (10, 10), (0, 128)), root / "cats" / "d_la.png")  # black at half opacity
    save(flat("RGB", (10, 10), (200, 30, 60)), root / "dogs" / "e_rgb.bmp")
    save(flat("RGB", (10, 10), (0, 0, 0)), root / "dogs" / "f_black.JPG", quality=95)
    gif_two_frames(root / "dogs" / "g_anim.gif")
    save(Image.fromarray(np.full((10, 10), 32896, np.uint16)), root / "dogs" / "h_16bit.png")  # 128 * 257
    save(flat("1", (10, 10), 1), root / "i_bilevel.png")
    # Skipped: not images, hidden files, hidden folders.
    (root / "cats" / "notes.txt").write_text("not a picture\n")
    (root / "labels.csv").write_text("a,b\n")
    (root / ".DS_Store").write_bytes(b"\x00\x00")
    save(flat("RGB", (10, 10), (1, 2, 3)), root / ".thumbnails" / "x.png")
    save(flat("RGB", (10, 10), (1, 2, 3)), root / "cats" / "._c_rgba.png")
    return root


ORDER = ["cats/a_grey.png", "cats/b_palette.png", "cats/c_rgba.png", "cats/d_la.png", "dogs/e_rgb.bmp",
         "dogs/f_black.JPG", "dogs/g_anim.gif", "dogs/h_16bit.png", "i_bilevel.png"]


def test_every_format_and_mode_is_converted_to_rgb(zoo, tmp_path):
    images, found, cached = folders.load_folder_images(f"folder:{zoo}", tmp_path / "data")
    assert [rel for rel, _, _ in found.files] == ORDER and not cached
    assert images.shape == (9, 3, 10, 10) and images.dtype == np.uint8
    px = {name: images[i] for i, name in enumerate(ORDER)}

    def colour(name, y=5, x=5):
        return tuple(int(v) for v in px[name][:, y, x])

    assert colour("cats/a_grey.png") == (100, 100, 100)
    assert colour("cats/b_palette.png", x=1) == (255, 255, 255)  # transparent: the white background
    assert colour("cats/b_palette.png", x=8) == (0, 255, 0)
    assert colour("cats/c_rgba.png", x=1) == (255, 255, 255) and colour("cats/c_rgba.png", x=8) == (0, 0, 255)
    assert colour("cats/d_la.png") == (127, 127, 127)  # black over white at alpha 128/255
    assert colour("dogs/e_rgb.bmp") == (200, 30, 60)
    assert max(colour("dogs/f_black.JPG")) <= 2  # JPEG: near enough
    assert colour("dogs/g_anim.gif") == (0, 0, 255)  # the first frame
    assert colour("dogs/h_16bit.png") == (128, 128, 128)  # scaled from 16 bits, not clipped at 255
    assert colour("i_bilevel.png") == (255, 255, 255)
    assert found.skipped() == ("skipped 2 files not PNG, JPEG, BMP or GIF (cats/notes.txt, labels.csv) and "
                               "3 hidden files or folders (.DS_Store, .thumbnails/, cats/._c_rgba.png)")


def test_grey_channel_uses_luma(zoo, tmp_path):
    images, _, _ = folders.load_folder_images(f"folder:{zoo}", tmp_path / "data", channels=1)
    assert images.shape == (9, 10, 10)  # grey sets stay (N, H, W)
    px = dict(zip(ORDER, images))
    assert px["cats/a_grey.png"][5, 5] == 100
    assert px["dogs/e_rgb.bmp"][5, 5] == round(0.299 * 200 + 0.587 * 30 + 0.114 * 60)
    assert px["cats/c_rgba.png"][5, 1] == 255 and px["cats/c_rgba.png"][5, 8] == round(0.114 * 255)


def test_resize_uses_lanczos_with_reducing_gap(tmp_path):
    root = tmp_path / "p"
    rng = np.random.default_rng(0)
    noisy = Image.fromarray(rng.integers(0, 256, (40, 30, 3), dtype=np.uint8), "RGB")  # 30 wide, 40 high
    save(noisy, root / "a.png")
    save(flat("RGB", (7, 9), (10, 20, 30)), root / "b.png")
    images, _, _ = folders.load_folder_images(f"folder:{root}", None, image_size=8)
    assert images.shape == (2, 3, 8, 8)
    expected = np.asarray(noisy.resize((8, 8), Image.Resampling.LANCZOS, reducing_gap=3.0)).transpose(2, 0, 1)
    np.testing.assert_array_equal(images[0], expected)
    assert (images[1] == np.array([10, 20, 30])[:, None, None]).all()


def test_without_image_size_the_first_image_sets_the_size_non_square_allowed(tmp_path):
    root = tmp_path / "p"
    for name in ("a.png", "b.png"):
        save(flat("RGB", (12, 7), (5, 5, 5)), root / name)
    images, _, _ = folders.load_folder_images(f"folder:{root}", None)
    assert images.shape == (2, 3, 7, 12)


def test_splits_are_fixed_disjoint_and_cover_the_folder(tmp_path):
    root = tmp_path / "p"
    for i in range(40):
        save(flat("L", (4, 4), i), root / f"c{i % 3}" / f"{i:02d}.png")
    splits = data.load_splits(f"folder:{root}", tmp_path / "data", channels=1)
    assert splits.train.shape == (36, 4, 4) and splits.eval.shape == (4, 4, 4) and splits.eval_name == "test"
    values = lambda a: sorted(int(v) for v in a[:, 0, 0])  # noqa: E731 - each image's value is its number
    test = values(splits.eval)
    assert sorted(values(splits.train) + test) == list(range(40))
    assert splits.spec.channels == 1 and (splits.spec.height, splits.spec.width) == (4, 4)
    assert splits.spec.name == f"folder:{root}" and "40 images 4x4, 1 channel: 36 train, 4 test" in splits.notes[0]
    # The same split every time (it hangs on the paths, not on a generator), also with other settings.
    assert values(data.load_splits(f"folder:{root}", None, channels=1, image_size=6).eval) == test

    half = data.load_splits(f"folder:{root}", None, channels=1, test_fraction=0.5)
    assert len(half.eval) == 20 and set(test) <= set(values(half.eval))  # a superset: same ordering of paths

    valid = data.load_splits(f"folder:{root}", None, validation=True, channels=1)
    assert valid.eval_name == "valid" and len(valid.eval) == 4 and len(valid.train) == 32
    assert not set(values(valid.eval)) & set(test)  # validation never shows test images
    assert not set(values(valid.train)) & set(test)

    # Adding a picture moves at most one old one out of test (10% of 41 is still 4).
    save(flat("L", (4, 4), 40), root / "new.png")
    after = set(values(data.load_splits(f"folder:{root}", None, channels=1).eval))
    assert len(after) == 4 and len(set(test) - after) <= 1 and after - set(test) <= {40}


def test_default_test_split_is_capped(monkeypatch):
    assert folders.held_out_count(10, None) == 1 and folders.held_out_count(3, None) == 1
    assert folders.held_out_count(1_000_000, None) == 10_000
    assert folders.held_out_count(1_000_000, 0.2) == 200_000  # an explicit fraction is taken as given


def test_cache_hit_and_key_changes(zoo, tmp_path, monkeypatch):
    data_dir = tmp_path / "data"
    first, _, cached = folders.load_folder_images(f"folder:{zoo}", data_dir)
    assert not cached
    caches = list((data_dir / "folders").glob("*.npy"))
    assert len(caches) == 1 and not list((data_dir / "folders").glob(".*"))  # no temp file left

    real_read = folders.read_image
    monkeypatch.setattr(folders, "read_image", lambda *a, **k: pytest.fail("read again despite the cache"))
    again, _, cached = folders.load_folder_images(f"folder:{zoo}", data_dir)
    assert cached and np.array_equal(again, first)
    splits = data.load_splits(f"folder:{zoo}", data_dir)
    assert "(from the cache)" in splits.notes[0]
    assert "skipped 2 files not PNG" in splits.notes[1]  # said every time, cache or not
    monkeypatch.setattr(folders, "read_image", real_read)

    # Touching a file (new mtime) changes the key: read again, a second cache file.
    f = zoo / "cats" / "a_grey.png"
    st = f.stat()
    os.utime(f, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))
    _, _, cached = folders.load_folder_images(f"folder:{zoo}", data_dir)
    assert not cached and len(list((data_dir / "folders").glob("*.npy"))) == 2
    # So do the settings that change pixels.
    keys = {folders.cache_key(folders.scan(zoo), s, c) for s in (None, 8) for c in (1, 3)}
    assert len(keys) == 4


def test_unwritable_data_dir_still_loads(zoo, tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    images, _, cached = folders.load_folder_images(f"folder:{zoo}", blocker / "data")
    assert images.shape == (9, 3, 10, 10) and not cached


def test_load_data_passes_the_folder_settings(zoo, tmp_path):
    settings = build_settings(None, None, [f"data.dataset=folder:{zoo}", "data.image_size=6", "data.channels=1",
                                           "data.test_fraction=0.3"])
    splits = load_data(settings.data, tmp_path / "data")
    assert splits.train.shape == (6, 6, 6) and splits.eval.shape == (3, 6, 6)


# --------------------------------------------------------------------------- bad folders: one line, naming the file


def test_empty_folder(tmp_path):
    root = tmp_path / "empty"
    root.mkdir()
    with pytest.raises(DrawError) as e:
        data.load_splits(f"folder:{root}", None)
    assert str(e.value) == f"{root}: no PNG, JPEG, BMP or GIF images in this folder or its subfolders"
    (root / "readme.txt").write_text("x")
    save(flat("L", (4, 4), 0), root / ".hidden" / "a.png")
    with pytest.raises(DrawError) as e:
        data.load_splits(f"folder:{root}", None)
    assert str(e.value).endswith("(skipped 1 file not PNG, JPEG, BMP or GIF (readme.txt) and "
                                 "1 hidden file or folder (.hidden/))")


@pytest.mark.parametrize(
    "content",
    [b"", b"not an image at all", b"\x89PNG\r\n\x1a\n" + b"\x00" * 40, "truncated-png", "truncated-jpeg"],
    ids=["empty-file", "text", "png-header-only", "truncated-png", "truncated-jpeg"],
)
def test_corrupt_image_names_the_file(tmp_path, content):
    root = tmp_path / "p"
    save(flat("RGB", (8, 8), (1, 2, 3)), root / "a.png")
    if content in ("truncated-png", "truncated-jpeg"):
        suffix = ".png" if content == "truncated-png" else ".jpg"
        noisy = Image.fromarray(np.random.default_rng(0).integers(0, 256, (32, 32, 3), dtype=np.uint8))
        bad = save(noisy, root / f"b{suffix}")
        bad.write_bytes(bad.read_bytes()[: len(bad.read_bytes()) // 2])
    else:
        bad = root / "b.png"
        bad.write_bytes(content)
    with pytest.raises(DrawError) as e:
        data.load_splits(f"folder:{root}", None)
    message = str(e.value)
    assert message.startswith(f"{bad}: cannot read this image (") and "\n" not in message


def test_mixed_sizes_without_image_size(tmp_path):
    root = tmp_path / "p"
    save(flat("RGB", (8, 8), 0), root / "a.png")
    save(flat("RGB", (8, 8), 0), root / "b.png")
    save(flat("RGB", (16, 12), 0), root / "sub" / "c.png")
    with pytest.raises(DrawError) as e:
        data.load_splits(f"folder:{root}", None)
    assert str(e.value) == (f"{root / 'sub' / 'c.png'}: 16x12 pixels, but the first image, {root / 'a.png'}, is 8x8 "
                            f"(width x height); set data.image_size (--image-size S) to resize every image to one square size")
    splits = data.load_splits(f"folder:{root}", None, image_size=8)
    assert splits.train.shape[1:] == (3, 8, 8)


def test_missing_or_not_a_folder_or_too_few(tmp_path):
    with pytest.raises(DrawError, match=f"^{tmp_path / 'nope'}: no such folder"):
        data.load_splits(f"folder:{tmp_path / 'nope'}", None)
    (tmp_path / "f.png").write_bytes(b"x")
    with pytest.raises(DrawError, match="f.png: not a folder"):
        data.load_splits(f"folder:{tmp_path / 'f.png'}", None)
    with pytest.raises(DrawError, match="folder: needs a path"):
        data.load_splits("folder:", None)
    root = tmp_path / "one"
    save(flat("L", (4, 4), 0), root / "a.png")
    with pytest.raises(DrawError, match="only 1 image, too few to hold out 1 test image"):
        data.load_splits(f"folder:{root}", None)


def test_registry_sets_refuse_folder_only_settings(tmp_path):
    with pytest.raises(DrawError, match="data.image_size: only for folder:PATH data sets"):
        data.load_splits("mnist", tmp_path, image_size=32)
    with pytest.raises(DrawError, match="data.channels: cifar10 has 3 channel"):
        data.load_splits("cifar10", tmp_path, channels=1)


# ----------------------------------------------------------------------------- through draw train
def test_a_relative_folder_is_recorded_absolute_and_any_spelling_of_it_is_the_same(workdir, env, monkeypatch):
    import json

    import yaml

    start, elsewhere = workdir / "start", workdir / "elsewhere"
    picture_folder(start / "pics")
    elsewhere.mkdir()
    monkeypatch.chdir(start)
    flags = ["--glimpses", "2", "--hidden", "16", "--latent", "4", "--read-n", "2", "--write-n", "3", "-b", "8",
             "--device", "cpu", "--set", "data.binarize=none", "--set", "data.image_size=12", "--data-dir", workdir / "data"]
    ok(run_cli("train", "--dataset", "folder:./pics", *flags, "--max-steps", "2", "--name", "rel", env=env))
    config = yaml.safe_load((start / "runs" / "rel" / "config.yaml").read_text())
    assert config["data"]["dataset"] == f"folder:{start / 'pics'}"

    monkeypatch.chdir(elsewhere)
    runs = ["--runs-dir", start / "runs"]
    ok(run_cli("train", "--resume", "rel", *runs, "--max-steps", "3", env=env))
    r = ok(run_cli("train", "--resume", "rel", *runs, "--max-steps", "4", "--dataset", f"folder:{start / 'pics'}", env=env))
    assert "changed on resume: train.max_steps null -> 4\n" in r.stdout
    r = ok(run_cli("train", "--resume", "rel", *runs, "--max-steps", "5", "--dataset", "folder:../start/./pics", env=env))
    assert "changed on resume: train.max_steps null -> 5\n" in r.stdout

    # evaluate and --reconstruct read the pictures at the run's size and channels, from anywhere
    ok(run_cli("evaluate", "rel", *runs, "--samples", "1", "--dataset", "folder:../start/pics", "-o", "e.json", env=env))
    assert json.loads((elsewhere / "e.json").read_text())["values_per_image"] == 3 * 12 * 12
    picture_folder(elsewhere / "other", n=12, sizes=((40, 30),))  # another folder: read at the run's 12x12 in colour
    one_error_line(run_cli("train", "--resume", "rel", *runs, "--dataset", "folder:other", env=env), "cannot change the data set")
    ok(run_cli("evaluate", "rel", *runs, "--samples", "1", "--dataset", "folder:other", "-o", "o.json", env=env))
    assert json.loads((elsewhere / "o.json").read_text())["images"] >= 1
    ok(run_cli("animate", "rel", *runs, "--reconstruct", "-n", "2", "-o", "r.gif", env=env))


def test_the_image_size_flag_and_skipping_unreadable_pictures(workdir, env):
    import yaml

    pics = picture_folder(workdir / "pics")
    flags = ["--glimpses", "2", "--hidden", "16", "--latent", "4", "--read-n", "2", "--write-n", "3", "-b", "8", "--device", "cpu",
             "--dataset", "folder:pics", "--set", "data.binarize=none", "--data-dir", workdir / "data", "--max-steps", "1"]
    one_error_line(run_cli("train", *flags, "--name", "a", env=env), "set data.image_size (--image-size S) to resize")
    (pics / "a" / "broken.png").write_bytes(b"not a picture")
    one_error_line(run_cli("train", *flags, "--image-size", "12", "--name", "a", env=env),
                   "broken.png: cannot read this image (not an image Pillow can identify); set data.skip_unreadable: true")
    for note in ("", " (from the cache)"):
        r = ok(run_cli("train", *flags, "--image-size", "12", "--set", "data.skip_unreadable=true", "--name", f"a{len(note)}", env=env))
        assert f"30 images 12x12, 3 channels: 27 train, 3 test{note}" in r.stdout
        assert "skipped 1 unreadable picture (a/broken.png; data.skip_unreadable)" in r.stdout
    assert yaml.safe_load((workdir / "runs" / "a0" / "config.yaml").read_text())["data"]["image_size"] == 12
    one_error_line(run_cli("train", *TINY_TRAIN, "--image-size", "12", env=env), "data.image_size: only for folder:PATH data sets")
