"""Issue 26: what a new user met, round 3 (killed runs, misleading flags and numbers, paths that break resume).

Each test names the item it covers. Runs are tiny (T=2, 16 LSTM units, z of 4) on the synthetic
data set of conftest.py (96 training and 40 test images).
"""

from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys

import pytest

from helpers import run_cli

ROOT = pathlib.Path(__file__).resolve().parent.parent
TINY = ["--glimpses", "2", "--hidden", "16", "--latent", "4", "-b", "32", "--device", "cpu", "--set", "train.eval_batch_size=50"]


def one_error_line(result, fragment: str, code: int = 1) -> str:
    assert result.exit_code == code, (result.exit_code, result.output)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert fragment in lines[0], f"\nexpected: {fragment}\n     got: {lines[0]}"
    return lines[0]


def ok(result):
    assert result.exit_code == 0, result.output
    return result


@pytest.fixture
def here(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    return tmp_path


# ----------------------------------------------------------------------------- 1: memory, batch, dead runs
def test_item1_a_batch_larger_than_the_training_split_is_refused(here, env):
    one_error_line(run_cli("train", *TINY, "--batch-size", "200", "--name", "big", env=env),
                   "train.batch_size 200 is larger than the training split of mnist (96 images); use --batch-size 96 or less")
    assert not (here / "runs" / "big").exists()


def test_item1_a_step_that_cannot_fit_in_memory_is_refused_with_the_largest_batch_that_fits(here, env):
    from drawcli.core.memory import step_memory

    # The tiny model's step: a 1.2 MB limit leaves room for about half of a 64-image batch.
    need = step_memory(2, 16, 4, True, 2, 5, 28, 28, parameters=0)
    limit = need.per_image * 40
    line = one_error_line(run_cli("train", *TINY, "--batch-size", "64", "--name", "m", env={**env, "DRAW_MEMORY_LIMIT": str(limit)}),
                          "a training step of batch 64 needs about")
    assert "is allowed (DRAW_MEMORY_LIMIT); the largest batch that fits is about" in line
    assert not (here / "runs" / "m").exists()
    largest = int(line.split("use --batch-size ")[1].split()[0])
    assert 0 < largest < 64
    ok(run_cli("train", *TINY, "--batch-size", largest, "--max-steps", "1", "--name", "m", env={**env, "DRAW_MEMORY_LIMIT": str(limit)}))


MEASURE = r"""
import json, re, sys
import torch
from drawcli.runs.checkpoint import build_model
from drawcli.training.distributed import DistEnv
from drawcli.core.memory import model_step_memory
from drawcli.settings import build_settings
from drawcli.training.loop import draw_batch, make_adam, train_step

def status(key):
    text = open("/proc/self/status").read()
    return int(re.search(rf"^{key}:\s+(\d+) kB", text, re.M).group(1)) * 1024

settings = build_settings(None, {"model": {"glimpses": 8, "hidden": 64, "latent": 10}})
model = build_model(settings, 28, 28)
params = list(model.parameters())
optimizer = make_adam(params, 1e-3, (0.9, 0.999))
gen = torch.Generator().manual_seed(0)

def step(b):
    images = torch.randint(0, 256, (b, 28, 28), dtype=torch.uint8)
    x, eps = draw_batch(images, torch.arange(b), "dynamic", model, gen, gen)
    train_step(model, optimizer, params, x, eps, 1e-3, 5.0, "float32", DistEnv())

step(8)  # libraries, the engine and Adam's state: not the batch's
before = status("VmRSS")
with open("/proc/self/clear_refs", "w") as f:
    f.write("5")  # resets the peak (VmHWM) to the current size
step(int(sys.argv[1]))
grown = status("VmHWM") - before
need = model_step_memory(settings.model, 28, 28, 1, sum(p.numel() for p in params), "float32")
print(json.dumps({"grown": grown, "estimate": need.total(int(sys.argv[1]))}))
"""


@pytest.mark.skipif(not os.path.exists("/proc/self/clear_refs"), reason="needs Linux's /proc/self/clear_refs")
@pytest.mark.parametrize("engine", ["default", "python"])
def test_item1_the_memory_estimate_is_near_what_a_real_step_allocates(engine):
    """Peak RSS growth of one training step at batch 4096 (a fresh process, so that no freed memory
    of an earlier step is reused), against the estimate from the model's shapes: within a loose
    factor, for the native loop (where it runs) and the Python loop."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    if engine == "python":
        env["DRAWCLI_NATIVE"] = "0"
    out = subprocess.run([sys.executable, "-c", MEASURE, "4096"], capture_output=True, text=True, env=env, timeout=300)
    assert out.returncode == 0, out.stderr
    found = json.loads(out.stdout.strip().splitlines()[-1])
    assert found["grown"] > 100e6  # the batch's memory dominates what is measured
    assert 0.5 < found["grown"] / found["estimate"] < 1.5, found


def test_item1_a_run_that_died_before_its_first_checkpoint_does_not_block_its_name(here, env):
    left = here / "runs" / "left"
    (left / "checkpoints").mkdir(parents=True)
    (left / "config.yaml").write_text("model: {glimpses: 2}\n")  # as after kill -9 (or the OOM killer) in the first epoch
    (left / "metrics.jsonl").write_text('{"kind": "train", "step": 1, "epoch": 1, "lx": 1, "lz": 1, "loss": 2}\n')
    one_error_line(run_cli("train", "--resume", "left", env=env), "start it again with --name left instead of --resume")
    r = ok(run_cli("train", *TINY, "--epochs", "1", "--name", "left", env=env))
    assert "removed runs/left, left by a run that stopped before its first checkpoint" in r.stdout
    assert (left / "checkpoints" / "epoch_001.pt").is_file()
    # A folder that holds anything draw train did not write is never removed.
    other = here / "runs" / "other"
    (other / "checkpoints").mkdir(parents=True)
    (other / "config.yaml").write_text("model: {glimpses: 2}\n")
    (other / "notes.txt").write_text("mine")
    one_error_line(run_cli("train", *TINY, "--name", "other", env=env), "holds files draw train did not write")
    assert (other / "notes.txt").read_text() == "mine"


# ----------------------------------------------------------------------------- 2: --steps, the model line
def test_item2_steps_warns_once_and_every_training_prints_the_model(here, env):
    r = ok(run_cli("train", "--steps", "3", "--hidden", "16", "--latent", "4", "-b", "32", "--max-steps", "2", "--device", "cpu",
                   "--set", "train.eval_batch_size=50", "--name", "s", env=env))
    lines = r.stdout.splitlines()
    warnings = [line for line in lines if "--steps" in line]
    assert warnings == ["warning: --steps sets glimpses T, the drawing steps per image (now --glimpses); "
                        "optimizer steps are --max-steps"], r.stdout
    assert "model: T=3 glimpses, LSTM 16, z 4, read 2x2, write 5x5, images 28x28; " in r.stdout
    # "steps" alone never names glimpses: the plan says optimizer steps, the summary too.
    assert "optimizer steps 0 -> 2 (3 per epoch)" in r.stdout and "optimizer steps" in r.stdout.split("run s")[-1]
    one_error_line(run_cli("train", "--steps", "3", "--glimpses", "4", "--name", "x", env=env),
                   "--steps (the old name of --glimpses) 3 and --glimpses 4 disagree")
    r = ok(run_cli("train", "--resume", "s", "--epochs", "1", env=env))
    assert "model: T=3 glimpses" in r.stdout and "--steps" not in r.stdout  # a resume prints it too; no warning without the alias
    r = ok(run_cli("train", *TINY, "--no-attention", "--max-steps", "1", "--name", "n", env=env))
    assert "model: T=2 glimpses, LSTM 16, z 4, no attention, images 28x28; " in r.stdout


# ----------------------------------------------------------------------------- 3: a corrupt last.pt
def test_item3_a_corrupt_last_pt_falls_back_to_the_newest_readable_checkpoint(here, env):
    from drawcli.runs import checkpoint as ckpt_io
    from drawcli.runs import names

    ok(run_cli("train", *TINY, "--epochs", "3", "--name", "c", env=env))
    ckpts = here / "runs" / "c" / "checkpoints"
    last = ckpts / "last.pt"
    os.truncate(last, 10000)  # last.pt is a hard link to epoch_003.pt: both are cut
    r = ok(run_cli("sample", "c", "-n", "4", env=env))
    assert "not a readable checkpoint" in r.stdout and "using epoch_002.pt instead (epoch 2, step 6)" in r.stdout
    assert (here / "runs" / "c" / "samples-epoch_002-n4-seed0.png").is_file()
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


# ----------------------------------------------------------------------------- 4: folders by any spelling
def pictures(folder: pathlib.Path, n: int = 30, sizes=((20, 16), (24, 24))) -> pathlib.Path:
    """n small RGB PNGs of two sizes (so data.image_size is needed), in two class subfolders."""
    import numpy as np
    from PIL import Image

    g = np.random.default_rng(0)
    for i in range(n):
        w, h = sizes[i % len(sizes)]
        img = np.full((h, w, 3), 30, np.uint8)
        img[g.integers(0, h - 6) :, g.integers(0, w - 6) :][:6, :6] = g.integers(80, 256, 3)
        (folder / "ab"[i % 2]).mkdir(parents=True, exist_ok=True)
        Image.fromarray(img).save(folder / "ab"[i % 2] / f"{i}.png")
    return folder


def test_item4_a_relative_folder_is_recorded_absolute_and_any_spelling_of_it_is_the_same(here, env, monkeypatch):
    import yaml

    start, elsewhere = here / "start", here / "elsewhere"
    pictures(start / "pics")
    elsewhere.mkdir()
    monkeypatch.chdir(start)
    flags = ["--glimpses", "2", "--hidden", "16", "--latent", "4", "--read-n", "2", "--write-n", "3", "-b", "8",
             "--device", "cpu", "--set", "data.binarize=none", "--set", "data.image_size=12", "--data-dir", here / "data"]
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
    pictures(elsewhere / "other", n=12, sizes=((40, 30),))  # another folder: read at the run's 12x12 in colour
    one_error_line(run_cli("train", "--resume", "rel", *runs, "--dataset", "folder:other", env=env), "cannot change the data set")
    ok(run_cli("evaluate", "rel", *runs, "--samples", "1", "--dataset", "folder:other", "-o", "o.json", env=env))
    assert json.loads((elsewhere / "o.json").read_text())["images"] >= 1
    ok(run_cli("animate", "rel", *runs, "--reconstruct", "-n", "2", "-o", "r.gif", env=env))


# ----------------------------------------------------------------------------- 5: outputs checked first
@pytest.fixture
def tiny(here, env):
    """runs/tiny: one epoch of 3 steps, trained through the CLI."""
    ok(run_cli("train", *TINY, "--epochs", "1", "--name", "tiny", env=env))
    return here / "runs" / "tiny"


def unwritable_folder() -> pathlib.Path:
    """A folder nobody can create files in, root included (sysfs); skip where there is none."""
    where = pathlib.Path("/sys")
    try:
        (where / f"drawcli-probe-{os.getpid()}").open("wb").close()
    except OSError:
        return where
    (where / f"drawcli-probe-{os.getpid()}").unlink()
    pytest.skip("no folder here refuses a new file to this user")


OUTPUTS = {  # a command that writes a file, with its file option last
    "sample": ["sample", "tiny", "-n", "2", "-o"],
    "animate": ["animate", "tiny", "-n", "2", "-o"],
    "inspect": ["inspect-attention", "tiny", "-n", "1", "--json"],
    "evaluate": ["evaluate", "tiny", "--samples", "1", "--limit", "4", "-o"],
    "plot": ["plot", "tiny", "-o"],
}
SUFFIX = {"sample": ".png", "animate": ".gif", "inspect": ".json", "evaluate": ".json", "plot": ".png"}


@pytest.mark.parametrize("command", list(OUTPUTS))
def test_item5_every_output_is_checked_before_the_work(tiny, env, command, monkeypatch):
    if command == "plot":
        pytest.importorskip("matplotlib")
    import drawcli.commands.pictures
    import drawcli.pictures.plot
    import drawcli.runs.store

    def no_work(*args, **kwargs):
        raise AssertionError("the work started before the output was checked")

    with monkeypatch.context() as m:
        for module, name in ((drawcli.commands.pictures, "load_run"), (drawcli.runs.store, "load_run"), (drawcli.pictures.plot, "build_figure")):
            m.setattr(module, name, no_work)
        where = unwritable_folder()
        one_error_line(run_cli(*OUTPUTS[command], where / f"x{SUFFIX[command]}", env=env),
                       f"cannot write {where / ('x' + SUFFIX[command])}: ")
        (tiny.parent.parent / "README.md").write_text("a file")
        one_error_line(run_cli(*OUTPUTS[command], f"README.md/x{SUFFIX[command]}", env=env),
                       f"cannot write README.md/x{SUFFIX[command]}: README.md is not a folder")
    # A folder that is missing is created, and said.
    r = ok(run_cli(*OUTPUTS[command], f"new/sub/x{SUFFIX[command]}", env=env))
    assert "created the folder new/sub for x" in r.output and (tiny.parent.parent / "new" / "sub" / f"x{SUFFIX[command]}").is_file()


# ----------------------------------------------------------------------------- 6: draw runs' progress
def test_item6_runs_shows_the_targets_in_effect_whole_epochs_limited_iwae_and_failed_runs(tiny, env):
    def info(name="tiny"):
        return {row["name"]: row for row in json.loads(ok(run_cli("runs", "--json")).stdout)}[name]

    # Stopped inside epoch 2 (--max-steps 4 of 3 steps per epoch): 1 whole epoch, of the 2 the resume set.
    ok(run_cli("train", "--resume", "tiny", "--epochs", "2", "--max-steps", "4", env=env))
    row = info()
    assert (row["epochs"], row["epochs_target"], row["steps"], row["max_steps"]) == (1, 2, 4, 4)
    assert row["status"] == "stopped at max-steps"  # at its --max-steps, before its epochs (issue 37)
    ok(run_cli("train", "--resume", "tiny", "--epochs", "5", "--max-steps", "5", env=env))
    ok(run_cli("train", "--resume", "tiny", "--epochs", "3", env=env))  # no --max-steps: none is in effect
    row = info()
    assert (row["epochs"], row["epochs_target"], row["steps"], row["max_steps"], row["status"]) == (3, 3, 9, None, "finished")
    table = ok(run_cli("runs")).stdout
    assert " 3/3 " in table and " 9 " in table

    ok(run_cli("evaluate", "tiny", "--samples", "2", "--limit", "8", env=env))
    assert info()["iwae"]["limit"] == 8
    assert "K2 (8 img)" in ok(run_cli("runs")).stdout  # not the whole test split: said beside the number

    dead = tiny.parent / "dead"  # killed (kill -9, the OOM killer) before its first checkpoint
    (dead / "checkpoints").mkdir(parents=True)
    (dead / "config.yaml").write_text((tiny / "config.yaml").read_text())
    (dead / "metrics.jsonl").write_text('{"kind": "train", "step": 1, "epoch": 1, "lx": 1, "lz": 1, "loss": 2}\n')
    assert info("dead")["status"] == "failed"
    assert all(line == line.rstrip() for line in ok(run_cli("runs")).stdout.splitlines())  # no padding off a terminal


# ----------------------------------------------------------------------------- 7: throughput
def test_item7_throughput_is_training_images_over_training_time(here, env, monkeypatch):
    """A fake clock: every training step takes 1 s, every evaluation 100 s. Each log row and the
    summary must then say 32 img/s (batch 32), the first row after an evaluation included."""
    import time

    import drawcli.training.loop

    clock = [0.0]
    monkeypatch.setattr(time, "perf_counter", lambda: clock[0])
    real_step, real_evaluate = drawcli.training.loop.train_step, drawcli.training.loop.evaluate

    def step(*args, **kwargs):
        clock[0] += 1.0
        return real_step(*args, **kwargs)

    def evaluate(*args, **kwargs):
        clock[0] += 100.0
        return real_evaluate(*args, **kwargs)

    monkeypatch.setattr(drawcli.training.loop, "train_step", step)
    monkeypatch.setattr(drawcli.training.loop, "evaluate", evaluate)
    r = ok(run_cli("train", *TINY, "--epochs", "2", "--set", "train.log_every=1", "--name", "t", env=env))
    rows = [json.loads(line) for line in (here / "runs" / "t" / "metrics.jsonl").read_text().splitlines()]
    assert [row["img_per_s"] for row in rows if row["kind"] == "train"] == [32.0] * 6
    assert "32 img/s (training images over training time)" in r.stdout
    r = ok(run_cli("train", *TINY, "--max-steps", "1", "--name", "one", env=env))
    assert "32 img/s (training images over training time)" in r.stdout and "1.0 s (without evaluations" in r.stdout


# ----------------------------------------------------------------------------- 8: --nproc's threads
def test_item8_nproc_decides_the_threads_once_and_torchrun_has_nothing_to_say(tmp_path, synthetic_data_dir):
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "MKL_NUM_THREADS")}
    env.update(DRAW_DATA_DIR=str(synthetic_data_dir), PYTHONPATH=str(ROOT))
    r = subprocess.run([sys.executable, "-m", "drawcli", "train", "--steps", "2", "--hidden", "16", "--latent", "4",
                        "-b", "32", "--device", "cpu", "--max-steps", "1", "--nproc", "2", "--no-tensorboard",
                        "--set", "train.eval_batch_size=20", "--name", "ddp"],
                       cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    out = r.stdout + r.stderr
    assert "OMP_NUM_THREADS" not in out and "*****" not in out, out  # torchrun's warning
    threads = [line for line in out.splitlines() if line.startswith("threads:")]
    assert len(threads) == 1 and " per process x 2 processes (" in threads[0], out
    assert out.count("warning: --steps sets glimpses T") == 1  # said once, by rank 0


# ----------------------------------------------------------------------------- 9: messages that point the right way
def test_item9_a_checkpoint_file_is_taken_wherever_a_run_is(tiny, env):
    ckpt = "runs/tiny/checkpoints/epoch_001.pt"
    ok(run_cli("sample", ckpt, "-n", "2", env=env))
    assert (tiny / "samples-epoch_001-n2-seed0.png").is_file()
    ok(run_cli("evaluate", ckpt, "--samples", "1", "--limit", "4", env=env))
    assert (tiny / "eval-test-k1-limit4-epoch_001.json").is_file()
    one_error_line(run_cli("sample", ckpt, "--load", "best", env=env), f"--load picks a run's checkpoint; {ckpt} is a checkpoint file already")
    one_error_line(run_cli("sample", "runs/tiny/checkpoints/epoch_009.pt", env=env), "checkpoint not found: runs/tiny/checkpoints/epoch_009.pt")
    # outside a run: the outputs go to the current folder, named after the file
    (tiny.parent.parent / "loose.pt").write_bytes((tiny / "checkpoints" / "epoch_001.pt").read_bytes())
    ok(run_cli("sample", "loose.pt", "-n", "2", env=env))
    assert (tiny.parent.parent / "loose-samples-n2-seed0.png").is_file()
    one_error_line(run_cli("train", "--resume", "loose.pt", env=env), "loose.pt is a checkpoint file outside a run directory")
    if __import__("importlib").util.find_spec("matplotlib"):
        ok(run_cli("plot", ckpt, "-o", "c.png"))


def test_item9_messages_point_the_right_way(tiny, env, monkeypatch):
    one_error_line(run_cli("plot", "@mnist"), "@mnist is a built-in model: it ships without learning curves")
    rows_before = (tiny / "metrics.jsonl").read_text()
    r = ok(run_cli("train", "--resume", "tiny", env=env))
    assert r.stdout.strip() == ("nothing to do: run tiny has finished its 1 epochs (step 3); to train it further, "
                                "give more: draw train --resume tiny --epochs 11")
    assert (tiny / "metrics.jsonl").read_text() == rows_before  # no resume row for a resume that did nothing
    one_error_line(run_cli("train", *TINY, "--set", "train.lr=true", env=env), "train.lr: expected a number, got true")
    one_error_line(run_cli("train", *TINY, "--set", "data.binarize=null", env=env), "data.binarize: a value is required, got null")
    r = ok(run_cli("train", "--resume", "tiny", "--epochs", "2", "--set", "train.lr_schedule=wsd",
                   "--set", "train.decay_start=1", "--set", "train.decay_epochs=1", env=env))
    assert "train.lr_schedule 'constant' -> 'wsd'; train.decay_start null -> 1" in r.stdout and "None" not in r.stdout
    elsewhere = tiny.parent.parent / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    assert f"no runs in {elsewhere / 'runs'} (--runs-dir DIR lists another folder" in ok(run_cli("runs")).stdout


def test_item9_attention_table_and_draw_models_read_cleanly():
    import numpy as np
    from rich.console import Console

    from drawcli.commands.models import list_models
    from drawcli.pictures.viz import attention_tables

    write = np.zeros((2, 3, 5))
    write[:, :, 0] = 14.1  # g_x, the same for every image: a standard deviation of 0
    write[:, :, 3] = [[1.0, 1.0, 1.0 + 2e-6], [2.5, 2.5, 2.5]]  # sigma^2 with a spread of about 1e-6
    console = Console(record=True, width=200)
    for table in attention_tables(None, write, 2, 5):
        console.print(table)
    text = console.export_text()
    assert "14.1 ± 0.0" in text and "1.00 ± 0.00" in text and "e-0" not in text and "±0 " not in text
    assert [set(m["model"]) for m in list_models()][0] == {"glimpses", "hidden", "latent", "attention", "read_n", "write_n",
                                                             "height", "width", "channels"}
    lines = ok(run_cli("models")).stdout.splitlines()
    assert all(line == line.rstrip() for line in lines) and "  settings  T=64 glimpses, LSTM 256, z 100, read 2x2, write 5x5" in lines


# ----------------------------------------------------------------------------- 10: own pictures
def test_item10_image_size_flag_and_skipping_unreadable_pictures(here, env):
    pics = pictures(here / "pics")
    flags = ["--glimpses", "2", "--hidden", "16", "--latent", "4", "--read-n", "2", "--write-n", "3", "-b", "8", "--device", "cpu",
             "--dataset", "folder:pics", "--set", "data.binarize=none", "--data-dir", here / "data", "--max-steps", "1"]
    one_error_line(run_cli("train", *flags, "--name", "a", env=env), "set data.image_size (--image-size S) to resize")
    (pics / "a" / "broken.png").write_bytes(b"not a picture")
    one_error_line(run_cli("train", *flags, "--image-size", "12", "--name", "a", env=env),
                   "broken.png: cannot read this image (not an image Pillow can identify); set data.skip_unreadable: true")
    for note in ("", " (from the cache)"):
        r = ok(run_cli("train", *flags, "--image-size", "12", "--set", "data.skip_unreadable=true", "--name", f"a{len(note)}", env=env))
        assert f"30 images 12x12, 3 channels: 27 train, 3 test{note}" in r.stdout
        assert "skipped 1 unreadable picture (a/broken.png; data.skip_unreadable)" in r.stdout
    import yaml

    assert yaml.safe_load((here / "runs" / "a0" / "config.yaml").read_text())["data"]["image_size"] == 12
    one_error_line(run_cli("train", *TINY, "--image-size", "12", env=env), "data.image_size: only for folder:PATH data sets")


# ----------------------------------------------------------------------------- 12: help examples that run
def help_examples(command: str) -> list[str]:
    import typer

    from drawcli.cli import app

    epilog = typer.main.get_command(app).commands[command].epilog
    return [line.strip().split("  (")[0].strip() for line in epilog.splitlines() if line.strip().startswith("draw ")]


def test_item12_help_examples_run_as_written(here):
    """Every example of sample, animate, inspect-attention and evaluate that names the built-in
    model runs as written (MNIST here: 16 synthetic test images); no example names a run a
    newcomer does not have, like run1."""
    import shlex

    from helpers import idx_bytes, synthetic_images

    data = here / "data" / "mnist"
    data.mkdir(parents=True)
    (data / "train-images-idx3-ubyte").write_bytes(idx_bytes(synthetic_images(96, seed=1)))
    (data / "t10k-images-idx3-ubyte").write_bytes(idx_bytes(synthetic_images(16, seed=2)))
    ran = 0
    for command in ("train", "download", "sample", "animate", "inspect-attention", "evaluate", "plot", "runs", "models"):
        for example in help_examples(command):
            assert "run1" not in example, example
            if command in ("sample", "animate", "inspect-attention", "evaluate") and "@mnist" in example and ".mp4" not in example:
                ok(run_cli(*shlex.split(example)[1:], env={"DRAW_DATA_DIR": str(here / "data")}))
                ran += 1
    assert ran >= 11
    assert {p.name for p in here.iterdir()} >= {"digits.png", "out.gif", "boxes.gif", "recon.gif", "attention.json", "prior.gif",
                                                "results", "mnist-samples-n64-seed0.png"}


# ----------------------------------------------------------------------------- 11: the quick config
def test_item11_quick_config_uses_the_faster_recipe_and_the_readme_shows_its_samples():
    from drawcli.settings import build_settings

    quick = build_settings(ROOT / "sample_configs" / "quick.yaml")
    assert (quick.train.batch_size, quick.train.beta1) == (64, 0.9)  # learned faster per epoch than 128 and 0.5
    readme = (ROOT / "README.md").read_text()
    assert "(docs/quick-samples.png)" in readme  # the grid, where a newcomer looks
    section = (ROOT / "docs" / "results.md").read_text().split("## The quick config")[1].split("\n## ")[0]
    assert "![" in section and "(quick-samples.png)" in section and "(quick.gif)" in section
    assert "--threads 1" in section  # measured on one thread: said, with the time
    for picture in ("quick-samples.png", "quick.gif"):
        assert (ROOT / "docs" / picture).stat().st_size > 1000


# ----------------------------------------------------------------------------- a copied run folder
def test_a_copied_run_folder_resumes_under_its_own_name(here, env):
    """Branching an experiment by copying its folder: the copy resumes as itself; the original is untouched."""
    import shutil

    ok(run_cli("train", *TINY, "--epochs", "1", "--name", "trunk", env=env))
    shutil.copytree(here / "runs" / "trunk", here / "runs" / "branch")
    before = (here / "runs" / "trunk" / "metrics.jsonl").read_text()
    r = ok(run_cli("train", "--resume", "branch", "--epochs", "2", env=env))
    assert "epoch 2" in r.stdout
    assert (here / "runs" / "branch" / "checkpoints" / "epoch_002.pt").is_file()
    assert not (here / "runs" / "trunk" / "checkpoints" / "epoch_002.pt").exists()
    assert (here / "runs" / "trunk" / "metrics.jsonl").read_text() == before
    # A --name that is neither the folder's nor the saved one is still a contradiction.
    one_error_line(run_cli("train", "--resume", "branch", "--name", "third", env=env), "--resume branch cannot be combined with --name third")
