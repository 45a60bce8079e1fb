"""`draw train` and the CLI around it: help without torch, runs, checkpoints, resume, real MNIST."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import torch

from drawcli.core.version import __version__
from drawcli.runs import checkpoint as ckpt_io
from drawcli.runs import names
from drawcli.runs.store import resolve_checkpoint
from drawcli.settings import build_settings
from drawcli.training.loop import train

from helpers import Collect, cli_in_fresh_interpreter, run_cli, synthetic_images, tiny_settings


@pytest.mark.parametrize(
    "argv",
    [["--help"]] + [[c, "--help"] for c in ("train", "download", "sample", "animate", "inspect-attention", "evaluate",
                                          "plot", "runs", "models")],
)
def test_help_does_not_import_torch_and_ends_with_examples(argv):
    out, torch_loaded = cli_in_fresh_interpreter(argv)
    assert not torch_loaded
    if argv != ["--help"]:
        assert "Examples" in out and f"draw {argv[0]}" in out.split("Examples")[-1]


def test_python_dash_m_and_version():
    out = subprocess.run([sys.executable, "-m", "drawcli", "--version"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and __version__ in out.stdout


def test_train_function_reports_and_checkpoints_plain_data():
    cb = Collect()
    s = tiny_settings("train.epochs=2")
    images = synthetic_images()
    result = train(s, images, images[:40], torch.device("cpu"), callbacks=[cb])
    assert result.step == 6 and result.epoch == 2  # 96 images / 32 per batch = 3 steps per epoch
    assert [r["step"] for r in cb.logs] == [2, 3, 4, 6]  # every log_every (global) steps and at epoch ends
    assert [r["epoch"] for r in cb.epochs] == [1, 2]
    for row in cb.logs + cb.epochs:
        assert np.isfinite(row["loss"]) and row["loss"] == pytest.approx(row["lx"] + row["lz"])
    ckpt, is_best = cb.ckpts[-1]
    assert ckpt["step"] == 6 and ckpt["epoch"] == 2 and ckpt["settings"] == s.to_dict()
    assert set(ckpt["rng"]) == {"data", "noise"} and "state" in ckpt["optimizer"]
    assert cb.ckpts[0][1] is True  # the first evaluation is always the best so far


def test_training_is_deterministic_for_a_seed_and_differs_across_seeds():
    images = synthetic_images()
    runs = [train(tiny_settings("train.max_steps=3", f"train.seed={seed}"), images, images[:40], torch.device("cpu"))
            for seed in (0, 0, 1)]
    a, b, c = (r.model.state_dict() for r in runs)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not all(torch.equal(a[k], c[k]) for k in a)


def test_adam_uses_the_fused_kernel_where_torch_has_one_and_resume_keeps_this_machines_choice(monkeypatch):
    """make_adam asks for PyTorch's fused Adam (CPU: torch >= 2.4) and falls back to the default;
    a checkpoint written with the other kind resumes with this machine's kind."""
    from drawcli.training import loop as train_module

    layer = torch.nn.Linear(3, 2)
    fused = train_module.make_adam(layer.parameters(), 1e-3, (0.5, 0.999))
    from packaging.version import Version

    if Version(torch.__version__.split("+")[0]) >= Version("2.4"):
        assert fused.param_groups[0]["fused"] is True

    plain = torch.optim.Adam  # a machine without the fused kernel writes the checkpoint

    def refuse_fused(params, lr, betas, fused=None):
        if fused:
            raise RuntimeError("fused=True is not supported here")
        return plain(params, lr=lr, betas=betas)

    cb = Collect()
    images = synthetic_images()
    monkeypatch.setattr(train_module.torch.optim, "Adam", refuse_fused)
    train(tiny_settings("train.max_steps=2"), images, images[:40], torch.device("cpu"), callbacks=[cb])
    saved = cb.ckpts[-1][0]
    assert not saved["optimizer"]["param_groups"][0].get("fused")
    monkeypatch.setattr(train_module.torch.optim, "Adam", plain)
    cb2 = Collect()
    train(tiny_settings("train.max_steps=4"), images, images[:40], torch.device("cpu"), callbacks=[cb2], resume=saved)
    assert cb2.ckpts[-1][0]["step"] == 4
    assert cb2.ckpts[-1][0]["optimizer"]["param_groups"][0]["fused"] == fused.param_groups[0]["fused"]


def test_a_plain_adam_state_loads_into_fused_adam_with_its_step_counters_placed_for_fused():
    """torch places Adam's step counters by the loaded group's "fused" flag; load_optimizer_state
    makes that flag this machine's before loading, so a checkpoint from a machine without the
    fused kernel gets float32 counters on the parameters' device (what CUDA's fused Adam needs),
    and the learning rate is the resumed run's."""
    from drawcli.training.loop import load_optimizer_state, make_adam

    layer = torch.nn.Linear(3, 2)
    plain = torch.optim.Adam(layer.parameters(), lr=1e-3)
    layer(torch.ones(1, 3)).sum().backward()
    plain.step()
    state = plain.state_dict()
    for st in state["state"].values():  # as a machine whose counters differ from fused placement
        st["step"] = st["step"].to(torch.float64)
    fused = make_adam(layer.parameters(), 1e-3, (0.9, 0.999))
    if not fused.param_groups[0].get("fused"):
        pytest.skip("this torch has no fused Adam for CPU")
    load_optimizer_state(fused, state, lr=5e-4)
    assert fused.param_groups[0]["fused"] is True and fused.param_groups[0]["lr"] == 5e-4
    for p in layer.parameters():
        step = fused.state[p]["step"]
        assert step.dtype == torch.float32 and step.device == p.device and step.item() == 1
    fused.step()  # and it runs


def test_rows_name_the_evaluation_split_as_data_validation_does_and_count_the_models_parameters():
    from drawcli.data.arrays import eval_split_name
    from drawcli.model import count_parameters

    images = synthetic_images()
    for validation, split in ((False, "test"), (True, "valid")):
        cb = Collect()
        cb.on_start = lambda info, cb=cb: setattr(cb, "info", info)
        s = tiny_settings("train.max_steps=2", f"data.validation={str(validation).lower()}")
        result = train(s, images, images[:40], torch.device("cpu"), callbacks=[cb])
        assert eval_split_name(validation) == split == cb.info["eval_split"]
        assert [row["split"] for row in cb.epochs] == [split]
        assert cb.info["parameters"] == count_parameters(result.model) == sum(p.numel() for p in result.model.parameters())


def test_a_stop_at_the_last_step_of_an_epoch_resumes_to_the_same_weights_and_rows():
    """A stop request at an epoch's last step checkpoints the epoch as in progress with all its
    images done (epoch_images = N); the resumed call then evaluates and checkpoints that epoch and
    goes on exactly as an uninterrupted run."""
    from drawcli.training.loop import Interrupted

    images, cpu = synthetic_images(), torch.device("cpu")
    s = tiny_settings("train.epochs=2", "train.eval_every=1")
    straight_cb = Collect()
    straight = train(s, images, images[:40], cpu, callbacks=[straight_cb])
    cut = Collect()
    cut.on_interrupt = lambda ckpt: setattr(cut, "interrupted", ckpt)
    cut.on_step = lambda step, epoch: setattr(cut, "step", step)
    with pytest.raises(Interrupted):  # 96 images / 32: step 3 ends epoch 1
        train(s, images, images[:40], cpu, callbacks=[cut], should_stop=lambda: cut.step == 3)
    ckpt = cut.interrupted
    assert (ckpt["step"], ckpt["epoch"], ckpt["epoch_images"]) == (3, 1, 96) and cut.epochs == []
    resumed_cb = Collect()
    resumed = train(s, images, images[:40], cpu, callbacks=[resumed_cb], resume=ckpt)
    assert resumed.step == straight.step == 6 and resumed.epoch == 2
    for key, value in straight.model.state_dict().items():
        assert torch.equal(resumed.model.state_dict()[key], value), key
    drop_time = lambda rows: [{k: v for k, v in row.items() if k != "time"} for row in rows]
    assert drop_time(resumed_cb.epochs) == drop_time(straight_cb.epochs)  # epoch 1's evaluation included
    assert [(c["step"], c["epoch"], c["epoch_images"]) for c, _ in resumed_cb.ckpts] == [(3, 1, 0), (6, 2, 0)]


def test_cli_train_end_to_end_on_synthetic_data_resume_and_errors(tmp_path, monkeypatch, synthetic_data_dir):
    monkeypatch.chdir(tmp_path)
    env = {"DRAW_DATA_DIR": str(synthetic_data_dir)}
    args = ["train", "--steps", "3", "--hidden", "16", "--embed", "4", "-b", "32", "--epochs", "2",
            "--set", "train.eval_batch_size=50", "--device", "cpu"]
    r = run_cli(*args, "--max-steps", "4", env=env)
    assert r.exit_code == 0, r.output
    assert "device: cpu" in r.output and "runs/run1" in r.output
    run = tmp_path / "runs" / "run1"
    cfg = build_settings(run / "config.yaml")
    assert cfg.model.glimpses == 3 and cfg.train.max_steps == 4 and cfg.run.name == "run1"
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert {"kind", "step", "epoch", "lx", "lz", "loss", "img_per_s", "lr", "time"} <= set(rows[0])
    assert rows[-1]["kind"] == "eval" and rows[-1]["step"] == 4
    ckpts = run / "checkpoints"
    # Step 4 is inside epoch 2: last.pt (and best.pt) only; epoch_002.pt is for the whole epoch.
    assert {p.name for p in ckpts.iterdir()} == {"epoch_001.pt", "last.pt", "best.pt"}
    assert ckpt_io.load(ckpts / "last.pt")["step"] == 4
    config_before = (run / "config.yaml").read_text()

    # --resume continues the step count, inheriting the saved settings.
    r = run_cli("train", "--resume", "run1", "--epochs", "3", env=env)
    assert r.exit_code == 0, r.output
    assert "resuming at step 4" in r.output
    assert ckpt_io.load(ckpts / "last.pt")["step"] == 9  # 3 epochs x 3 steps
    assert names.list_epochs(ckpts) == [1, 2, 3]
    assert resolve_checkpoint(run, "3").name == "epoch_003.pt"
    assert (run / "config.yaml").read_text() == config_before  # the original settings, for good

    # Reproduce from the saved config under another name, with what the resume changed: the
    # uninterrupted copy ends with exactly the weights of the run stopped at step 4 and resumed.
    r = run_cli("train", "--config", str(run / "config.yaml"), "--name", "copy", "--epochs", "3",
                "--set", "train.max_steps=null", env=env)
    assert r.exit_code == 0, r.output
    copy = ckpt_io.load(tmp_path / "runs" / "copy" / "checkpoints" / "last.pt")
    original = ckpt_io.load(ckpts / "last.pt")
    assert copy["step"] == 9
    assert all(torch.equal(copy["model"][k], original["model"][k]) for k in original["model"])

    for argv, message in [
        (["train", "--resume", "run1", "--steps", "5"], "cannot change the model shape (glimpses 3 -> 5)"),
        (["train", "--resume", "ghost"], f"run 'ghost' not found in {tmp_path / 'runs'} (existing runs: run1, copy)"),
        (["train", "--name", "run1", *args[1:]], "run 'run1' already exists"),
        (["train", "--name", "../evil"], "invalid run name"),
        (["train", "--set", "model.read_m=3"], "model.read_m: unknown key (did you mean 'read_n'?)"),
        (["train", "--read-n", "0"], "model.read_n: must be >= 1, got 0"),
        (["train", "--config", "missing.yaml"], "config file not found: missing.yaml"),
        (["train", "--device", "cuda:7"], "device 'cuda:7' requested but"),
        (["train", "--device", "tpu"], "run.device: expected auto, cpu, cuda, cuda:N or mps, got 'tpu'"),
    ]:
        r = run_cli(*argv, env=env)
        assert r.exit_code == 1, (argv, r.output)
        assert message in r.stderr, (argv, r.stderr)
        assert len(r.stderr.strip().splitlines()) == 1, r.stderr


@pytest.mark.parametrize("side", [32, 60, 64])
def test_windows_as_wide_as_the_image_train_on_a_folder(tmp_path, monkeypatch, side):
    """A read and write window as wide as the image side (not capped at 28): YAML and flags, Python engine."""
    from PIL import Image

    monkeypatch.chdir(tmp_path)
    folder = tmp_path / f"pictures{side}"
    folder.mkdir()
    for i, image in enumerate(synthetic_images(12, seed=side)):
        Image.fromarray(image).resize((side, side)).save(folder / f"{i:02d}.png")
    small = ["--glimpses", "2", "--hidden", "8", "--latent", "3", "-b", "4", "--max-steps", "1", "--device", "cpu",
             "--engine", "python", "--set", "train.eval_batch_size=4", "--no-tensorboard"]
    r = run_cli("train", "--dataset", f"folder:{folder}", "--read-n", side, "--write-n", side, *small, "--name", "flags")
    assert r.exit_code == 0, r.output
    assert ckpt_io.load(tmp_path / "runs" / "flags" / "checkpoints" / "last.pt")["model_config"]["read_n"] == side
    config = tmp_path / "c.yaml"
    config.write_text(f"model:\n  read_n: {side}\n  write_n: {side}\ndata:\n  dataset: folder:{folder}\n  image_size: {side}\n")
    r = run_cli("train", "-c", config, *small, "--name", "yaml")
    assert r.exit_code == 0, r.output
    # One pixel wider than the image: refused in one line, naming the real side.
    r = run_cli("train", "--dataset", f"folder:{folder}", "--read-n", side + 1, *small, "--name", "wide")
    assert r.exit_code == 1 and f"model.read_n: must be <= {side} (the image side), got {side + 1}" in r.stderr, r.output


def test_resume_after_a_corrupt_last_pt_takes_the_newest_readable_full_checkpoint_by_step(tmp_path, monkeypatch, synthetic_data_dir):
    """Whatever its kind (last.pt, best.pt, epoch_NNN.pt): the readable checkpoint with the most steps
    and the full training state; the files it would overwrite are set aside, never deleted."""
    import os
    import shutil

    monkeypatch.chdir(tmp_path)
    env = {"DRAW_DATA_DIR": str(synthetic_data_dir)}
    tiny = ["--glimpses", "2", "--hidden", "16", "--latent", "4", "-b", "32", "--device", "cpu", "--set", "train.eval_batch_size=50"]
    r = run_cli("train", *tiny, "--epochs", "3", "--max-steps", "5", "--name", "c", env=env)  # 3 steps per epoch
    assert r.exit_code == 0, r.output
    ckpts = tmp_path / "runs" / "c" / "checkpoints"
    last, best = ckpts / "last.pt", ckpts / "best.pt"
    # best.pt its own file (not a link to last.pt) at step 5, as readable as it was; last.pt cut short.
    best.unlink()
    shutil.copyfile(last, best)
    os.truncate(last, 10000)
    assert ckpt_io.load(best)["step"] == 5 and ckpt_io.load(ckpts / "epoch_001.pt")["step"] == 3

    r = run_cli("train", "--resume", "c", "--max-steps", "6", env=env)
    assert r.exit_code == 0, r.output
    assert "using best.pt instead (epoch 2, step 5)" in r.stdout and "resuming at step 5" in r.stdout
    assert ckpt_io.load(last)["step"] == 6  # one step trained, not 3 trained again from epoch_001.pt
    aside = [p for p in ckpts.iterdir() if p.name.startswith("set-aside-")]
    assert len(aside) == 1 and sorted(p.name for p in aside[0].iterdir()) == ["last.pt"]
    assert (aside[0] / "last.pt").stat().st_size == 10000  # kept as it was

    # A readable best.pt without the random state cannot continue training: the next newest that can.
    full = ckpt_io.load(last)
    ckpt_io.atomic_save({k: v for k, v in full.items() if k != "rng"}, ckpts / "best.pt.new")
    os.replace(ckpts / "best.pt.new", best)
    os.truncate(last, 10000)  # step 6 ended epoch 2: last.pt is a link to epoch_002.pt, cut too
    r = run_cli("train", "--resume", "c", "--max-steps", "7", env=env)
    assert r.exit_code == 0, r.output
    assert "using epoch_001.pt instead (epoch 1, step 3)" in r.stdout and "resuming at step 3" in r.stdout
    # best.pt (step 6, newer than epoch_001.pt) was set aside with the cut files: nothing is deleted.
    second = [p for p in ckpts.iterdir() if p.name.startswith("set-aside-") and p not in aside]
    assert len(second) == 1 and sorted(p.name for p in second[0].iterdir()) == ["best.pt", "epoch_002.pt", "last.pt"]


def test_a_window_without_attention_and_more_threads_than_cores_are_said_in_one_line(tmp_path, monkeypatch, synthetic_data_dir):
    import os

    monkeypatch.chdir(tmp_path)
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    r = run_cli("train", "--no-attention", "--read-n", "3", "--glimpses", "2", "--hidden", "8", "--latent", "2", "-b", "32",
                "--max-steps", "1", "--device", "cpu", "--threads", cores + 1, "--no-tensorboard", "--name", "w",
                env={"DRAW_DATA_DIR": str(synthetic_data_dir)})
    assert r.exit_code == 0, r.output
    lines = r.stdout.splitlines()
    assert "warning: --read-n has no effect without attention (--no-attention): the model reads and writes whole images" in lines
    threads = [line for line in lines if line.startswith("warning: --threads")]
    assert threads == [f"warning: --threads {cores + 1} is more than the {cores} CPU core{'s' * (cores > 1)} this process may "
                       "use; the threads beyond them wait for each other (slower, not faster)"], lines


def test_real_mnist_training_learns_and_resumes(mnist_data_dir, tmp_path, monkeypatch):
    """A few hundred steps on real MNIST beat the best model that ignores the latents.

    The best independent-pixel Bernoulli model scores 205.8 nats on the (dynamically
    binarised) test set; 300 steps of a small DRAW reach about 193 (seeded). The
    threshold leaves room for platform noise, which is well under 1 nat here.
    """
    monkeypatch.chdir(tmp_path)
    env = {"DRAW_DATA_DIR": str(mnist_data_dir)}
    base = ["train", "--steps", "8", "--hidden", "128", "--embed", "16", "-b", "64", "--device", "cpu"]
    r = run_cli(*base, "--max-steps", "300", "--name", "real", env=env)
    assert r.exit_code == 0, r.output
    ckpt = ckpt_io.load(tmp_path / "runs" / "real" / "checkpoints" / "last.pt")
    assert ckpt["step"] == 300
    assert ckpt["metrics"]["loss"] < 200.0, ckpt["metrics"]
    assert ckpt["metrics"]["lz"] > 1.0  # the latents carry information: no posterior collapse

    r = run_cli("train", "--resume", "real", "--max-steps", "320", env=env)
    assert r.exit_code == 0, r.output
    resumed = ckpt_io.load(tmp_path / "runs" / "real" / "checkpoints" / "last.pt")
    assert resumed["step"] == 320
    rows = [json.loads(line) for line in (tmp_path / "runs" / "real" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if r["kind"] == "eval"] == [300, 320]

