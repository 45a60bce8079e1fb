"""Settings: precedence, YAML round trip, every rejection with its message."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import yaml

from drawcli.core.errors import DrawError
from drawcli.settings import Settings, build_settings, check_against_image, from_dict, parse_set

from helpers import TINY_TRAIN, one_error_line, run_cli

CONFIGS = sorted((Path(__file__).parent.parent / "sample_configs").glob("*.yaml"))


def write(tmp_path, text: str) -> Path:
    path = tmp_path / "c.yaml"
    path.write_text(text)
    return path


def test_defaults_follow_the_original_implementation():
    s = Settings()
    assert (s.train.lr, s.train.beta1, s.train.grad_clip, s.train.batch_size) == (1e-3, 0.5, 5.0, 128)
    assert (s.model.read_n, s.model.write_n, s.model.latent, s.model.hidden) == (2, 5, 100, 256)
    assert s.run.device == "auto" and s.data.binarize == "dynamic"


def test_settings_are_frozen():
    with pytest.raises(dataclasses.FrozenInstanceError):
        Settings().model.glimpses = 3  # type: ignore[misc]


def test_precedence_defaults_yaml_flags_set(tmp_path):
    cfg = write(tmp_path, "model:\n  steps: 10\n  hidden: 64\ntrain:\n  lr: 1e-2\n  epochs: 3\n")
    s = build_settings(cfg, {"model": {"steps": 20, "hidden": None}}, ["model.steps=30", "train.beta1=0.9"])
    assert s.model.glimpses == 30  # --set beats the flag, which beats the file
    assert s.model.hidden == 64  # file beats default; an unset flag (None) changes nothing
    assert s.train.lr == 1e-2 and isinstance(s.train.lr, float)  # `1e-2` in YAML 1.1 is a string
    assert s.train.epochs == 3 and s.train.beta1 == 0.9
    assert s.model.latent == 100  # default


def test_yaml_round_trip(tmp_path):
    s = build_settings(None, None, ["model.steps=7", "data.binarize=threshold", "train.max_steps=5", "run.name=x"])
    path = write(tmp_path, s.to_yaml())
    assert build_settings(path) == s
    assert from_dict(yaml.safe_load(s.to_yaml())) == s


@pytest.mark.parametrize("path", CONFIGS, ids=[p.name for p in CONFIGS])
def test_every_sample_config_loads(path):
    s = build_settings(path)
    check_against_image(s, 28, 28)


def test_sample_configs_match_the_paper_and_the_original():
    by_name = {p.name: build_settings(p) for p in CONFIGS}
    assert {"mnist_attention.yaml", "mnist_no_attention.yaml", "seed.yaml", "quick.yaml"} <= set(by_name)
    paper = by_name["mnist_attention.yaml"].model
    assert (paper.glimpses, paper.hidden, paper.latent, paper.read_n, paper.write_n, paper.attention) == (64, 256, 100, 2, 5, True)
    assert by_name["mnist_no_attention.yaml"].model.attention is False
    seed = by_name["seed.yaml"]
    assert (seed.model.glimpses, seed.model.read_n, seed.model.write_n, seed.model.latent) == (50, 2, 5, 100)
    assert (seed.train.lr, seed.train.epochs) == (1e-3, 100)
    # Table 3's SVHN and CIFAR-10 rows: (T, LSTM, z, read N, write N); continuous intensities, not binarised
    for name, want, dataset in (("svhn.yaml", (32, 800, 100, 12, 12), "svhn"), ("cifar10.yaml", (64, 400, 200, 5, 5), "cifar10")):
        s = by_name[name]
        assert (s.model.glimpses, s.model.hidden, s.model.latent, s.model.read_n, s.model.write_n) == want
        assert s.data.dataset == dataset and s.data.binarize == "none" and s.model.attention
    repro = by_name["mnist_reproduce.yaml"]
    assert repro.model == paper and repro.train.lr_schedule == "wsd" and repro.train.decay_start is None and repro.train.precision == "auto"
    assert repro.train.eval_every == 5 and repro.train.batch_size == 64
    assert by_name["two_digit_mnist.yaml"].data.dataset == "two-digit-mnist"
    assert by_name["colour_quick.yaml"].data.channels == 3 and by_name["colour_quick.yaml"].data.dataset.startswith("folder:")


@pytest.mark.parametrize(
    "text, message",
    [
        ("model:\n  read_m: 3\n", "model.read_m: unknown key (did you mean 'read_n'?)"),
        ("modle:\n  steps: 3\n", "modle: unknown section (did you mean 'model'?)"),
        ("model:\n  lr: 0.1\n", "model.lr: unknown key (did you mean 'train.lr'?)"),
        ("model:\n  steps: ten\n", "model.steps: expected an integer, got 'ten'"),
        ("model:\n  steps: 2.5\n", "model.steps: expected an integer, got 2.5"),
        ("model:\n  attention: maybe\n", "model.attention: expected true or false, got 'maybe'"),
        ("train:\n  lr: fast\n", "train.lr: expected a number, got 'fast'"),
        ("model:\n  steps: 0\n", "model.steps: must be >= 1, got 0"),
        ("model:\n  read_n: 0\n", "model.read_n: must be >= 1, got 0"),
        ("model:\n  write_n: 29\n", "model.write_n: must be <= 28 (the image side), got 29"),
        ("model:\n  embed: 0\n", "model.embed: must be >= 1, got 0"),
        ("train:\n  lr: 0\n", "train.lr: must be > 0, got 0.0"),
        ("train:\n  lr: -1e-3\n", "train.lr: must be > 0, got -0.001"),
        ("train:\n  batch_size: 0\n", "train.batch_size: must be >= 1, got 0"),
        ("train:\n  beta1: 1.5\n", "train.beta1: must be in [0, 1), got 1.5"),
        ("data:\n  binarize: sometimes\n", "data.binarize: expected one of dynamic, threshold, none, got 'sometimes'"),
        ("data:\n  dataset: cifar\n", "data.dataset: expected one of mnist, fashion-mnist, binarized-mnist, svhn, cifar10, two-digit-mnist or folder:PATH, got 'cifar'"),
        ("- a\n- list\n", "expected a mapping of sections (model, data, train, run), got list"),
        ("model: 3\n", "model: expected a mapping of keys, got 3"),
        ("model:\n  steps: [1, 2\n", "not valid YAML (line"),
        ("model: !!python/object:os.system {}\n", "not valid YAML"),
    ],
)
def test_rejections_name_the_key_and_value(tmp_path, text, message):
    with pytest.raises(DrawError) as e:
        build_settings(write(tmp_path, text))
    assert message in str(e.value)
    assert "\n" not in str(e.value)


def test_missing_config_file(tmp_path):
    with pytest.raises(DrawError, match="config file not found"):
        build_settings(tmp_path / "nope.yaml")


def test_empty_yaml_is_the_defaults(tmp_path):
    assert build_settings(write(tmp_path, "")) == Settings()


@pytest.mark.parametrize(
    "item, message",
    [
        ("train.lr", "expected section.key=value"),
        ("lr=1", "expected section.key=value"),
        ("train.lr.x=1", "expected section.key=value"),
        ("train.lrr=1", "train.lrr: unknown key (did you mean 'lr'?)"),
        ("train.epochs=0", "train.epochs: must be >= 1"),
    ],
)
def test_set_rejections(item, message):
    with pytest.raises(DrawError) as e:
        build_settings(None, None, [item])
    assert message in str(e.value)


def test_set_parses_yaml_values():
    assert parse_set(["train.lr=1e-3", "model.attention=false", "train.max_steps=null"]) == {
        "train": {"lr": "1e-3", "max_steps": None},
        "model": {"attention": False},
    }
    assert build_settings(None, None, ["train.lr=1e-3"]).train.lr == 1e-3


def test_glimpse_larger_than_the_image_is_refused():
    s = build_settings(None, {"model": {"read_n": 20}})
    with pytest.raises(DrawError, match="model.read_n: must be <= 12"):
        check_against_image(s, 12, 16)


def test_glimpses_and_latent_keep_their_old_names_as_aliases(tmp_path):
    """model.glimpses (T) and model.latent (Z) were model.steps and model.embed: the old names still
    work in YAML, --set and saved settings, and giving both names of one setting is refused."""
    old = build_settings(write(tmp_path, "model:\n  steps: 12\n  embed: 7\n"), None, ["model.embed=9"])
    assert (old.model.glimpses, old.model.latent) == (12, 9)
    assert from_dict({"model": {"steps": 5, "embed": 3}}).model == dataclasses.replace(Settings().model, glimpses=5, latent=3)
    assert "glimpses: 12" in old.to_yaml() and "steps" not in old.to_yaml().split("train:")[0]
    with pytest.raises(DrawError, match=r"model.steps: the same setting as model.glimpses; give one of them"):
        build_settings(write(tmp_path, "model:\n  glimpses: 3\n  steps: 4\n"))
    with pytest.raises(DrawError, match=r"model.steps: must be >= 1, got 0"):  # messages use the name as written
        build_settings(None, None, ["model.steps=0"])
    from drawcli.settings import model_arguments

    assert model_arguments(old.model)["glimpses"] == 12 and model_arguments(old.model)["latent"] == 9  # the constructor has the same names


@pytest.mark.parametrize("dataset, side", [("svhn", 32), ("cifar10", 32), ("two-digit-mnist", 60), ("mnist", 28)])
def test_windows_may_be_as_wide_as_the_data_sets_image_side(tmp_path, dataset, side):
    """read_n and write_n are limited by the data set's real image side, not by a fixed 28."""
    s = build_settings(write(tmp_path, f"model:\n  read_n: {side}\n  write_n: {side}\ndata:\n  dataset: {dataset}\n"))
    assert (s.model.read_n, s.model.write_n) == (side, side)
    with pytest.raises(DrawError) as e:
        build_settings(write(tmp_path, f"model:\n  read_n: {side + 1}\ndata:\n  dataset: {dataset}\n"))
    assert f"model.read_n: must be <= {side} (the image side), got {side + 1}" in str(e.value)


def test_windows_of_a_folder_data_set_are_limited_by_its_image_size(tmp_path):
    """folder:PATH with data.image_size: checked against it at once; without: once the pictures are read."""
    s = build_settings(write(tmp_path, "model:\n  read_n: 30\n  write_n: 64\ndata:\n  dataset: folder:/x\n  image_size: 64\n"))
    assert (s.model.read_n, s.model.write_n) == (30, 64)
    with pytest.raises(DrawError, match=r"model.write_n: must be <= 64 \(the image side\), got 65"):
        build_settings(write(tmp_path, "model:\n  write_n: 65\ndata:\n  dataset: folder:/x\n  image_size: 64\n"))
    assert build_settings(write(tmp_path, "model:\n  read_n: 100\ndata:\n  dataset: folder:/x\n")).model.read_n == 100


@pytest.mark.parametrize(
    "item, message",
    [
        ("train.learning_rate=0.01", "--set train.learning_rate: unknown key (did you mean 'lr'?)"),
        ("train.batch=64", "--set train.batch: unknown key (did you mean 'batch_size'?)"),
        ("model.z_dim=10", "--set model.z_dim: unknown key (did you mean 'latent'?)"),
        ("model.hidden_size=10", "--set model.hidden_size: unknown key (did you mean 'hidden'?)"),
        ("model.learning_rate=0.1", "--set model.learning_rate: unknown key (did you mean 'train.lr'?)"),
        ("run.gpu=cuda", "--set run.gpu: unknown key (did you mean 'device'?)"),
        ("train.steps=10", "--set train.steps: unknown key (did you mean 'model.glimpses'? glimpses are the drawing "
                           "steps per image; optimizer steps are train.max_steps)"),
    ],
)
def test_unknown_keys_are_matched_on_meaning_too(item, message):
    """Common other names of a setting suggest it, as close spellings do (settings.SYNONYMS)."""
    with pytest.raises(DrawError) as e:
        build_settings(None, None, [item])
    assert str(e.value) == message


def test_every_synonym_names_a_real_setting_and_is_none_itself():
    from dataclasses import fields

    from drawcli.settings import _SECTION_CLASSES, SYNONYMS

    keys = {f"{section}.{f.name}" for section, cls in _SECTION_CLASSES.items() for f in fields(cls)}
    for other, target in SYNONYMS.items():
        assert target.split(" ")[0] in keys, (other, target)
        # (an old name, model.steps, is read as its key in its own section: a synonym in the others)
        assert other not in {k.split(".")[1] for k in keys}, other


def test_every_setting_declares_its_help_and_rules_beside_it():
    """Each field says what it means, and the one validator reads its bounds and choices from the field."""
    from drawcli.settings import _SECTION_CLASSES, apply_overrides, rule

    for section, cls in _SECTION_CLASSES.items():
        for f in dataclasses.fields(cls):
            meta = rule(section, f.name)
            assert meta["help"].strip(), f"{section}.{f.name} has no help"
            if meta["bounds"] is not None:  # a value just outside the low end is refused with the field's own rule
                lo, _, lo_in, _ = meta["bounds"]
                bad = (lo - 1 if isinstance(lo, int) else lo - 0.5) if lo_in else lo
                with pytest.raises(DrawError, match=rf"^{section}\.{f.name}: must be "):
                    apply_overrides(Settings(), {section: {f.name: bad}}, together=False)
            if meta["choices"]:
                with pytest.raises(DrawError, match=rf"^{section}\.{f.name}: expected one of {', '.join(map(str, meta['choices']))}"):
                    apply_overrides(Settings(), {section: {f.name: "no-such-value"}}, together=False)


def test_the_quick_config_uses_the_faster_recipe():
    quick = build_settings(Path(__file__).parent.parent / "sample_configs" / "quick.yaml")
    assert (quick.train.batch_size, quick.train.beta1) == (64, 0.9)  # learned faster per epoch than 128 and 0.5


@pytest.mark.parametrize(
    "text, fragment",
    [
        ("train:\n  lr: 1e-3\n  epochs: 2\n  lr: 3e-3\n", "duplicate key 'train.lr' at line 4 (first at line 2)"),
        ("train: {epochs: 2}\nmodel:\n  steps: 3\ntrain:\n  lr: 3e-3\n", "duplicate section 'train' at line 4 (first at line 1)"),
        ("model: {steps: 3, steps: 4}\n", "duplicate key 'model.steps' at line 1 (first at line 1)"),
    ],
    ids=["key", "section", "flow"],
)
def test_a_duplicate_yaml_key_or_section_is_refused(workdir, text, fragment):
    cfg = write(workdir, text)
    one_error_line(run_cli("train", "--config", cfg), f"{cfg}: {fragment}")


def test_set_values_of_the_wrong_type_or_null_are_one_line_from_the_cli(workdir, env):
    one_error_line(run_cli("train", *TINY_TRAIN, "--set", "train.lr=true", env=env), "train.lr: expected a number, got true")
    one_error_line(run_cli("train", *TINY_TRAIN, "--set", "data.binarize=null", env=env), "data.binarize: a value is required, got null")
