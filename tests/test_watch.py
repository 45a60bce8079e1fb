"""Watching and comparing training: TensorBoard logs, `draw plot`, `draw runs`."""

from __future__ import annotations

import fcntl
import json
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from drawcli.core.errors import DrawError
from drawcli.runs.metrics import current_rows, steps_per_epoch
from drawcli.settings import build_settings
from drawcli.training.loop import Interrupted, train
from drawcli.training.tensorboard_log import TensorBoardLogger

from helpers import cli_in_fresh_interpreter, ok, run_cli, synthetic_images

TINY = ["--steps", "3", "--hidden", "16", "--embed", "4", "-b", "32", "--device", "cpu",
        "--set", "train.eval_batch_size=50", "--set", "train.log_every=1"]


def one_error_line(result, *needles):
    assert result.exit_code == 1, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]


in_subprocess_without_torch = cli_in_fresh_interpreter


# ----------------------------------------------------------------------------- settings
def test_tensorboard_setting_accepts_booleans_and_auto_and_refuses_others(tmp_path):
    for raw, want in [("true", "true"), ("false", "false"), ("auto", "auto"), ("yes", "true")]:
        assert build_settings(None, None, [f"run.tensorboard={raw}"]).run.tensorboard == want
    assert build_settings().run.tensorboard == "auto"
    assert build_settings(None, {"run": {"tensorboard": False}}).run.tensorboard == "false"
    for text, want in [("run: {tensorboard: true}\n", "true"), ("run: {tensorboard: auto}\n", "auto")]:
        (tmp_path / "c.yaml").write_text(text)
        settings = build_settings(tmp_path / "c.yaml")
        assert settings.run.tensorboard == want
        # what config.yaml holds reads back the same
        (tmp_path / "saved.yaml").write_text(settings.to_yaml())
        assert build_settings(tmp_path / "saved.yaml").run.tensorboard == want
    for raw, message in [("maybe", "run.tensorboard: expected one of auto, true, false, got 'maybe'"),
                         ("1", "run.tensorboard: expected auto, true or false, got 1")]:
        with pytest.raises(DrawError, match=message):
            build_settings(None, None, [f"run.tensorboard={raw}"])


# ----------------------------------------------------------------------------- TensorBoard
def tiny(*sets):
    return build_settings(None, None, ["model.steps=3", "model.hidden=16", "model.embed=4", "train.batch_size=32",
                                       "train.log_every=1", "train.eval_batch_size=50", "train.epochs=3", *sets])


class Collect:
    def __init__(self, stop_at=None):
        self.logs, self.ckpts, self.interrupted, self.stop_at, self.stop = [], [], None, stop_at, False

    def on_step(self, step, epoch):
        self.stop = self.stop or step == self.stop_at

    def on_log(self, row):
        self.logs.append(row)

    def on_checkpoint(self, ckpt, is_best):
        self.ckpts.append(ckpt)

    def on_interrupt(self, ckpt):
        self.interrupted = ckpt


def events(logdir):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(logdir), size_guidance={"scalars": 0, "images": 0})
    acc.Reload()
    return acc


@pytest.fixture
def event_clock(monkeypatch):
    """The clock of TensorBoard's event files, set by the test. A file's name starts with the second
    it was made in and TensorBoard reads a folder's files in name order, so a resumed run's file
    must be made in a later second than the first run's: the test moves this clock on
    (``event_clock.now += 1``) instead of waiting for the wall clock's second to change."""
    pytest.importorskip("tensorboard")
    from tensorboard.summary.writer import event_file_writer

    clock = SimpleNamespace(now=1_700_000_000.0)
    monkeypatch.setattr(event_file_writer, "time", SimpleNamespace(time=lambda: clock.now))
    return clock


def test_train_rows_carry_the_gradient_norm():
    cb = Collect()
    images = synthetic_images()
    train(tiny("train.max_steps=4", "train.log_every=2"), images, images[:40], torch.device("cpu"), callbacks=[cb])
    assert [r["step"] for r in cb.logs] == [2, 3, 4]
    assert all(r["grad_norm"] > 0 and r["grad_norm"] < float("inf") for r in cb.logs)


def test_tensorboard_events_are_readable_monotonic_across_interrupt_and_resume_and_change_nothing(tmp_path, event_clock):
    images, cpu = synthetic_images(), torch.device("cpu")
    logdir = tmp_path / "tb"

    # 96 images / 32 = 3 steps per epoch, 9 in all; stop after step 5 (mid epoch 2).
    cut = Collect(stop_at=5)
    with pytest.raises(Interrupted):
        train(tiny(), images, images[:40], cpu, callbacks=[cut, TensorBoardLogger(logdir, seed=0)],
              should_stop=lambda: cut.stop)
    acc = events(logdir)  # readable as left by the interrupted run
    assert [e.step for e in acc.Scalars("loss/train")] == [1, 2, 3, 4, 5]
    assert [e.step for e in acc.Scalars("loss/test")] == [3]

    event_clock.now += 1  # the resumed run's event file sorts after the first one's
    resumed = Collect()
    result = train(tiny(), images, images[:40], cpu, callbacks=[resumed, TensorBoardLogger(logdir, seed=0)],
                   resume=cut.interrupted)
    acc = events(logdir)
    for tag in ("loss/train", "L_x/train", "L_z/train", "optim/lr", "optim/grad_norm", "speed/img_per_s"):
        assert [e.step for e in acc.Scalars(tag)] == list(range(1, 10)), tag
    assert [e.step for e in acc.Scalars("loss/test")] == [3, 6, 9]
    logged = {e.step: e.value for e in acc.Scalars("loss/train")}
    for row in cut.logs + resumed.logs:
        assert logged[row["step"]] == pytest.approx(row["loss"], rel=1e-6)
    assert all(e.value > 0 for e in acc.Scalars("optim/grad_norm"))
    assert acc.Scalars("L_x/test")[-1].value + acc.Scalars("L_z/test")[-1].value == pytest.approx(
        acc.Scalars("loss/test")[-1].value, rel=1e-5)
    from drawcli.pictures.grids import grid_for

    prior, strip = acc.Images("samples/prior"), acc.Images("samples/glimpses")
    assert [e.step for e in prior] == [e.step for e in strip] == [3, 6, 9]
    assert (prior[0].height, prior[0].width) == grid_for(64, None, 56, 56).shape  # 8 x 8 samples, 2x upscaled
    assert (strip[0].height, strip[0].width) == grid_for(3, 3, 56, 56).shape  # T = 3 glimpses in a row

    # TensorBoard's sampling uses its own generator: training with and without it is bit-identical,
    # and the interrupted-and-resumed run with TensorBoard equals a straight run without it.
    straight = train(tiny(), images, images[:40], cpu)
    assert result.step == straight.step == 9
    for key, value in straight.model.state_dict().items():
        assert torch.equal(value, result.model.state_dict()[key]), key


def test_a_resume_from_an_older_checkpoint_hides_the_steps_logged_after_it(tmp_path, event_clock):
    """A run that died after logging past its last checkpoint: the resumed run's curve replaces it."""
    images, cpu = synthetic_images(), torch.device("cpu")
    first = Collect()
    train(tiny(), images, images[:40], cpu, callbacks=[first, TensorBoardLogger(tmp_path, seed=0)])
    epoch1 = first.ckpts[0]
    assert epoch1["step"] == 3
    event_clock.now += 1  # the resumed run's event file sorts after the first one's
    again = Collect()  # another learning rate after step 3, so the two histories differ
    train(tiny("train.lr=3e-3"), images, images[:40], cpu, callbacks=[again, TensorBoardLogger(tmp_path, seed=0)],
          resume=epoch1)
    scalars = events(tmp_path).Scalars("loss/train")
    assert [e.step for e in scalars] == list(range(1, 10))  # no step twice, never back in time
    later = {r["step"]: r["loss"] for r in again.logs}
    earlier = {r["step"]: r["loss"] for r in first.logs}
    for e in scalars:
        want = later[e.step] if e.step > 3 else earlier[e.step]
        assert e.value == pytest.approx(want, rel=1e-6), e.step
    assert any(later[s] != pytest.approx(earlier[s], rel=1e-6) for s in later)


def test_cli_tensorboard_flag_setting_and_missing_package(tmp_path, monkeypatch, synthetic_data_dir):
    monkeypatch.chdir(tmp_path)
    env = {"DRAW_DATA_DIR": str(synthetic_data_dir)}
    # Without the package: auto trains without logs, true is one error line before anything is made.
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)
    r = run_cli("train", *TINY, "--epochs", "1", "--name", "auto", env=env)
    assert r.exit_code == 0, r.output
    assert not (tmp_path / "runs" / "auto" / "tb").exists()
    for argv in (["--tensorboard"], ["--set", "run.tensorboard=true"]):
        r = run_cli("train", *TINY, "--epochs", "1", "--name", "wanted", *argv, env=env)
        one_error_line(r, "run.tensorboard is true", 'pip install "drawcli[tensorboard]"')
        assert not (tmp_path / "runs" / "wanted").exists()
    monkeypatch.delitem(sys.modules, "torch.utils.tensorboard")

    pytest.importorskip("tensorboard")
    r = run_cli("train", *TINY, "--epochs", "1", "--name", "tb", "--tensorboard", env=env)
    assert r.exit_code == 0, r.output
    assert build_settings(tmp_path / "runs" / "tb" / "config.yaml").run.tensorboard == "true"
    assert [e.step for e in events(tmp_path / "runs" / "tb" / "tb").Scalars("loss/test")] == [3]
    rows = [json.loads(line) for line in (tmp_path / "runs" / "tb" / "metrics.jsonl").read_text().splitlines()]
    assert all(r["grad_norm"] > 0 for r in rows if r["kind"] == "train")
    r = run_cli("train", *TINY, "--epochs", "1", "--name", "off", "--no-tensorboard", env=env)
    assert r.exit_code == 0, r.output
    assert not (tmp_path / "runs" / "off" / "tb").exists()


# ----------------------------------------------------------------------------- metrics rows
def test_current_rows_drop_what_a_resume_rewrote_and_steps_per_epoch():
    def tr(step, loss=1.0):
        return {"kind": "train", "step": step, "epoch": (step - 1) // 3 + 1, "lx": loss, "lz": 0.0, "loss": loss}

    rows = [tr(1), tr(2), tr(3), {"kind": "eval", "step": 3, "epoch": 1, "lx": 1, "lz": 0, "loss": 1}, tr(4), tr(5),
            {"kind": "resume", "step": 3}, tr(4, 2.0), tr(5, 2.0), tr(6, 2.0), "junk", {"kind": "iwae", "step": 6}]
    kept = current_rows([r for r in rows if isinstance(r, dict)])
    assert [(r["kind"], r["step"]) for r in kept] == [("train", 1), ("train", 2), ("train", 3), ("eval", 3),
                                                      ("resume", 3), ("train", 4), ("train", 5), ("train", 6),
                                                      ("iwae", 6)]
    assert [r["loss"] for r in kept if r["kind"] == "train"][3:] == [2.0, 2.0, 2.0]
    # no resume row: a step that is not after the last one of its kind replaces the older rows
    kept = current_rows([tr(1), tr(2), tr(3), tr(4), tr(3, 5.0), tr(4, 5.0)])
    assert [(r["step"], r["loss"]) for r in kept] == [(1, 1.0), (2, 1.0), (3, 5.0), (4, 5.0)]
    assert steps_per_epoch([tr(1), tr(2), tr(3), tr(4)]) == 3


# ----------------------------------------------------------------------------- draw plot
def fake_run(runs_dir: Path, name: str, *, epochs=3, done_epochs=3, spe=4, attention=True, dataset="mnist",
             max_steps=None, extra_rows=(), metrics=True, checkpoints=True) -> Path:
    """A run directory as `draw train` leaves it, without training (checkpoints are empty files:
    `draw runs` and `draw plot` read only their names)."""
    run = runs_dir / name
    (run / "checkpoints").mkdir(parents=True)
    cfg = build_settings(None, None, [f"train.epochs={epochs}", f"model.attention={str(attention).lower()}",
                                      f"data.dataset={dataset}", f"run.name={name}", "model.steps=8"]
                         + ([f"train.max_steps={max_steps}"] if max_steps else []))
    (run / "config.yaml").write_text(cfg.to_yaml())
    rows = []
    for step in range(1, done_epochs * spe + 1):
        epoch = (step - 1) // spe + 1
        loss = 200.0 / (1 + step)
        rows.append({"kind": "train", "step": step, "epoch": epoch, "lx": loss * 0.8, "lz": loss * 0.2, "loss": loss,
                     "img_per_s": 100.0, "lr": 1e-3, "grad_norm": 2.0})
        if step % spe == 0:
            rows.append({"kind": "eval", "split": "test", "step": step, "epoch": epoch, "lx": loss * 0.8 + 1,
                         "lz": loss * 0.2, "loss": loss + 1})
            if checkpoints:
                (run / "checkpoints" / f"epoch_{epoch:03d}.pt").write_bytes(b"")
    rows += list(extra_rows)
    if metrics:
        (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return run


def png_size(path: Path) -> tuple[int, int]:
    from PIL import Image

    with Image.open(path) as im:
        assert im.format == "PNG"
        return im.size


def test_plot_writes_pngs_of_the_expected_size_for_one_and_two_runs(tmp_path, monkeypatch):
    pytest.importorskip("matplotlib")
    monkeypatch.chdir(tmp_path)
    runs = tmp_path / "runs"
    fake_run(runs, "att", extra_rows=[{"kind": "iwae", "split": "test", "step": 12, "epoch": 3, "iwae": 60.0,
                                       "samples": 10}])
    fake_run(runs, "noatt", attention=False, extra_rows=[{"kind": "resume", "step": 4}])

    r = run_cli("plot", "att")
    assert r.exit_code == 0, r.output
    assert png_size(runs / "att" / "curves.png") == (1000, 600)  # default: beside the run

    r = run_cli("plot", "att", "runs/noatt", "-o", "both.png", "--parts", "--x", "epoch", "--log", "--paper")
    assert r.exit_code == 0, r.output
    assert png_size(tmp_path / "both.png") == (1500, 500)
    r = run_cli("plot", "att", "noatt", "--size", "640x480", "--ymax", "100")
    assert r.exit_code == 0, r.output
    assert png_size(tmp_path / "curves.png") == (640, 480)
    assert not list(tmp_path.glob(".*tmp*"))  # written through a temp file that is gone


def test_plot_draws_the_current_rows_of_each_run_and_the_papers_lines(tmp_path):
    pytest.importorskip("matplotlib")
    from drawcli.pictures.plot import build_figure, load_runs

    runs = tmp_path / "runs"
    # "att" died after logging steps 13-14 past its last checkpoint (step 12) and was resumed there.
    stale = [{"kind": "train", "step": s, "epoch": 4, "lx": 9.0, "lz": 9.0, "loss": 18.0} for s in (13, 14)]
    again = [{"kind": "resume", "step": 12}] + [
        {"kind": "train", "step": s, "epoch": 4, "lx": 1.0, "lz": 2.0, "loss": 3.0} for s in (13, 14, 15, 16)]
    fake_run(runs, "att", epochs=4, extra_rows=stale + again)
    fake_run(runs, "noatt", attention=False, done_epochs=2)
    fake_run(runs, "fashion", dataset="fashion-mnist", done_epochs=1)

    fig, notes = build_figure(load_runs(["att", "noatt", "fashion"], runs), paper=True, parts=True)
    loss_ax, lx_ax, lz_ax = fig.axes
    lines = {line.get_label(): line for line in loss_ax.get_lines()}
    train = lines["att train"]
    assert list(train.get_xdata()) == list(range(1, 17))  # 13 and 14 once, from the resumed run
    assert list(train.get_ydata())[12:] == [3.0] * 4
    assert list(lines["att test"].get_xdata()) == [4, 8, 12]
    assert list(lines["noatt test"].get_ydata()) == pytest.approx([200 / 5 + 1, 200 / 9 + 1])
    paper = sorted(line.get_ydata()[0] for label, line in lines.items() if label.startswith("paper"))
    assert paper == [80.97, 87.40] and notes == []  # one line per MNIST kind; none for fashion-mnist
    lx = {line.get_label(): line for line in lx_ax.get_lines()}
    assert list(lx["att train"].get_ydata())[12:] == [1.0] * 4
    assert not any(line.get_label().startswith("paper") for line in lz_ax.get_lines())

    fig, notes = build_figure(load_runs(["noatt"], runs), x="epoch")  # fractional epochs: 4 steps per epoch
    train = {line.get_label(): line for line in fig.axes[0].get_lines()}["noatt train"]
    assert list(train.get_xdata()) == [s / 4 for s in range(1, 9)]
    fig, notes = build_figure(load_runs(["fashion"], runs), paper=True)
    assert notes == ["--paper: none of these runs is an MNIST run; no paper line drawn"]


def test_plot_lr_draws_each_runs_schedule_on_a_second_axis(tmp_path, monkeypatch):
    pytest.importorskip("matplotlib")
    from drawcli.pictures.plot import build_figure, load_runs

    runs = tmp_path / "runs"
    decay = [{"kind": "train", "step": s, "epoch": 4, "lx": 1.0, "lz": 1.0, "loss": 2.0, "lr": 1e-3 / s} for s in (13, 14)]
    fake_run(runs, "att", epochs=4, done_epochs=3, extra_rows=decay)
    fig, notes = build_figure(load_runs(["att"], runs), lr=True)
    assert len(fig.axes) == 2 and notes == []
    rate = {line.get_label(): line for line in fig.axes[1].get_lines()}["att learning rate"]
    assert list(rate.get_ydata()) == [1e-3] * 12 + [1e-3 / 13, 1e-3 / 14]
    assert "att learning rate" in [t.get_text() for t in fig.axes[0].get_legend().get_texts()]
    assert len(build_figure(load_runs(["att"], runs))[0].axes) == 1  # only when asked

    old = [json.loads(line) for line in (runs / "att" / "metrics.jsonl").read_text().splitlines()]
    (runs / "att" / "metrics.jsonl").write_text("".join(json.dumps({k: v for k, v in r.items() if k != "lr"}) + "\n" for r in old))
    fig, notes = build_figure(load_runs(["att"], runs), lr=True)
    assert len(fig.axes) == 1 and notes == ["--lr: none of these runs logged a learning rate; none drawn"]
    monkeypatch.chdir(tmp_path)
    r = run_cli("plot", "att", "--lr", "-o", "lr.png")
    assert r.exit_code == 0 and "none of these runs logged a learning rate" in r.output and png_size(tmp_path / "lr.png") == (1000, 600)


def test_plot_errors_are_one_line(tmp_path, monkeypatch):
    pytest.importorskip("matplotlib")
    monkeypatch.chdir(tmp_path)
    runs = tmp_path / "runs"
    fake_run(runs, "empty", metrics=False, checkpoints=False)
    fake_run(runs, "good")
    for argv, needles in [
        (["plot", "empty"], ["run 'empty' has no metrics to plot yet", "metrics.jsonl does not exist"]),
        (["plot", "ghost"], ["run 'ghost' not found"]),
        (["plot", "good", "--x", "time"], ["--x: expected step or epoch"]),
        (["plot", "good", "-o", "curves.gif"], ["expected a .png, .svg or .pdf"]),
        (["plot", "good", "--size", "big"], ["--size: expected WIDTHxHEIGHT"]),
    ]:
        one_error_line(run_cli(*argv), *needles)
    (runs / "empty" / "metrics.jsonl").write_text('{"kind": "resume", "step": 0}\n{"cut sh')
    one_error_line(run_cli("plot", "empty"), "has no train or eval rows")


def test_plot_without_matplotlib_says_how_to_install_it(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    fake_run(tmp_path / "runs", "good")
    for module in ("matplotlib", "matplotlib.figure", "matplotlib.backends.backend_agg"):
        monkeypatch.setitem(sys.modules, module, None)
    one_error_line(run_cli("plot", "good"), 'pip install "drawcli[plot]"')


def test_plot_and_runs_do_not_import_torch(tmp_path):
    fake_run(tmp_path / "runs", "a")
    out, torch_loaded = in_subprocess_without_torch(["runs", "--json"], tmp_path)
    assert not torch_loaded and json.loads(out.split("TORCH_")[0])[0]["name"] == "a"
    pytest.importorskip("matplotlib")
    out, torch_loaded = in_subprocess_without_torch(["plot", "a", "-o", "a.png"], tmp_path)
    assert not torch_loaded and (tmp_path / "a.png").is_file()


# ----------------------------------------------------------------------------- draw runs
def test_runs_lists_finished_interrupted_empty_and_locked_runs(tmp_path, monkeypatch, synthetic_data_dir):
    monkeypatch.chdir(tmp_path)
    runs = tmp_path / "runs"
    # A real finished run (1 epoch of 3 steps), then hand-made ones.
    r = run_cli("train", *TINY, "--epochs", "1", "--name", "real", "--no-tensorboard",
                env={"DRAW_DATA_DIR": str(synthetic_data_dir)})
    assert r.exit_code == 0, r.output
    (runs / "real" / "eval.json").write_text(json.dumps({"iwae": 150.5, "iwae_stderr": 1.0, "samples": 7,
                                                         "split": "test", "step": 3}))
    fake_run(runs, "stopped", epochs=3, done_epochs=2)  # 2 of 3 epochs
    fake_run(runs, "capped", epochs=100, done_epochs=2, spe=4, max_steps=8)  # stopped at its max_steps
    fake_run(runs, "early", epochs=2, done_epochs=1, spe=4,  # an early stop inside epoch 2, max_steps since dropped
             extra_rows=[{"kind": "train", "step": 6, "epoch": 2, "lx": 1, "lz": 1, "loss": 2},
                         {"kind": "eval", "split": "test", "step": 6, "epoch": 2, "lx": 1, "lz": 1, "loss": 2}])
    fake_run(runs, "fresh", metrics=False, checkpoints=False)
    fake_run(runs, "busy", epochs=3, done_epochs=1, extra_rows=[{"kind": "iwae", "iwae": 88.0, "samples": 5,
                                                                  "split": "test", "step": 4, "time": 1.0}])
    (runs / "notarun").mkdir()
    with open(runs / "busy" / ".lock", "w") as lock:
        lock.write(json.dumps({"pid": 4242, "host": "h", "started": "now"}))
        lock.flush()
        fcntl.flock(lock.fileno(), fcntl.LOCK_EX)
        r = run_cli("runs", "--json")
        table = run_cli("runs")
    assert r.exit_code == 0 and table.exit_code == 0, (r.output, table.output)
    info = {row["name"]: row for row in json.loads(r.stdout)}
    assert set(info) == {"real", "stopped", "capped", "early", "fresh", "busy"}
    status = {name: row["status"] for name, row in info.items()}
    assert status == {"real": "finished", "stopped": "interrupted", "capped": "stopped at max-steps", "early": "interrupted",
                      "fresh": "empty", "busy": "locked"}
    assert info["busy"]["lock"]["pid"] == 4242
    real = info["real"]
    assert real["dataset"] == "mnist" and real["epochs"] == 1 and real["epochs_target"] == 1 and real["steps"] == 3
    assert real["model"] == {"glimpses": 3, "read_n": 2, "write_n": 5, "hidden": 16, "latent": 4, "attention": True}
    rows = [json.loads(line) for line in (runs / "real" / "metrics.jsonl").read_text().splitlines()]
    assert real["best_eval"]["loss"] == pytest.approx(min(r["loss"] for r in rows if r["kind"] == "eval"))
    assert real["iwae"]["iwae"] == 150.5 and real["iwae"]["samples"] == 7 and real["iwae"]["source"] == "eval.json"
    assert info["busy"]["iwae"]["iwae"] == 88.0
    assert info["stopped"]["epochs"] == 2 and info["stopped"]["steps"] == 8
    assert info["fresh"]["best_eval"] is None and info["fresh"]["steps"] == 0
    assert real["last_change_unix"] == pytest.approx(
        max(p.stat().st_mtime for p in [runs / "real", *(runs / "real").rglob("*")]), abs=1e-3)
    for name in info:
        assert name in table.stdout
    for word in ("finished", "interrupted", "empty", "locked (pid 4242)", "T3 r2 w5 h16 z4", "150.50 K7"):
        assert word in table.stdout, word

    # The lock is gone once its holder closes it: busy is interrupted again.
    r = run_cli("runs", "--json")
    assert {row["name"]: row["status"] for row in json.loads(r.stdout)}["busy"] == "interrupted"
    # An empty or missing runs folder
    r = run_cli("runs", "--runs-dir", "nowhere")
    assert r.exit_code == 0 and f"no runs in {tmp_path / 'nowhere'} (--runs-dir DIR lists another folder" in r.stdout
    assert json.loads(run_cli("runs", "--runs-dir", "nowhere", "--json").stdout) == []


def test_summary_and_runs_count_the_same_epochs_and_a_max_steps_stop_is_not_finished(tmp_path, monkeypatch, synthetic_data_dir):
    """--max-steps inside an epoch: the training summary and `draw runs` both count complete epochs
    (1 of 5 here, 3 steps per epoch), and the run is listed as stopped at max-steps, not finished."""
    monkeypatch.chdir(tmp_path)
    env = {"DRAW_DATA_DIR": str(synthetic_data_dir)}
    r = run_cli("train", *TINY, "--epochs", "5", "--max-steps", "4", "--name", "short", "--no-tensorboard", env=env)
    assert r.exit_code == 0, r.output
    row = next(line for line in r.stdout.splitlines() if "│ epochs" in line)
    assert "1/5 complete; stopped inside epoch 2 after 32 of 96 images" in row, row
    info = json.loads(run_cli("runs", "--json").stdout)[0]
    assert (info["epochs"], info["epochs_target"], info["status"]) == (1, 5, "stopped at max-steps")
    table = run_cli("runs").stdout
    assert " 1/5 " in table and "stopped at max-steps" in table
    # Trained on to its epochs: finished.
    r = run_cli("train", "--resume", "short", "--epochs", "2", env=env)
    assert r.exit_code == 0, r.output
    assert "2/2 complete" in next(line for line in r.stdout.splitlines() if "│ epochs" in line)
    info = json.loads(run_cli("runs", "--json").stdout)[0]
    assert (info["epochs"], info["status"]) == (2, "finished")


def test_runs_shows_the_tightest_iwae_bound_with_its_k(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    runs = tmp_path / "runs"
    bounds = [{"kind": "iwae", "iwae": 165.04, "samples": 100, "split": "test", "step": 12, "time": 1.0},
              {"kind": "iwae", "iwae": 167.28, "samples": 10, "split": "test", "step": 12, "time": 2.0}]
    fake_run(runs, "a", extra_rows=bounds)
    (runs / "a" / "eval-test-k5-limit100-best.json").write_text(json.dumps(
        {"iwae": 150.0, "samples": 5, "split": "test", "limit": 100, "images": 100, "step": 12}))  # 100 images only
    info = json.loads(run_cli("runs", "--json").stdout)[0]
    assert info["iwae"]["iwae"] == 165.04 and info["iwae"]["samples"] == 100
    assert len(info["iwae_all"]) == 3
    assert "165.04 K100" in run_cli("runs").stdout


def test_plot_after_a_batch_size_change_is_against_epochs_by_default(tmp_path, monkeypatch):
    """Steps of 32 images, then (after a resume with --batch-size 64) of 64: the default axis is
    epochs, placed by where each epoch ended; --x step still draws steps and marks the change."""
    pytest.importorskip("matplotlib")
    from drawcli.pictures.plot import build_figure, load_runs, plot_runs

    runs = tmp_path / "runs"
    # 2 epochs of 4 steps (batch 32, 128 images), then epochs 3-4 of 2 steps each (batch 64).
    later = []
    for step in (9, 10, 11, 12):
        epoch = 3 + (step - 9) // 2
        later.append({"kind": "train", "step": step, "epoch": epoch, "lx": 1.0, "lz": 1.0, "loss": 2.0})
        if step % 2 == 0:
            later.append({"kind": "eval", "split": "test", "step": step, "epoch": epoch, "lx": 1.0, "lz": 1.0, "loss": 2.0,
                          "epoch_complete": True})
    resume = {"kind": "resume", "step": 8, "epoch": 2, "changes": {"train.batch_size": [32, 64], "train.epochs": [2, 4]}}
    fake_run(runs, "b", epochs=2, done_epochs=2, spe=4, extra_rows=[resume, *later])
    fake_run(runs, "plain", epochs=2, done_epochs=2, spe=4)

    fig, notes = build_figure(load_runs(["b"], runs))
    lines = {line.get_label(): line for line in fig.axes[0].get_lines()}
    assert fig.axes[0].get_xlabel() == "epoch"
    assert list(lines["b test"].get_xdata()) == [1, 2, 3, 4]
    assert list(lines["b train"].get_xdata()) == [s / 4 for s in range(1, 9)] + [2.5, 3, 3.5, 4]
    assert any("batch size changed on resume" in note and "32 -> 64" in note for note in notes), notes
    assert build_figure(load_runs(["plain"], runs))[0].axes[0].get_xlabel() == "step"  # no change: steps

    fig, notes = build_figure(load_runs(["b"], runs), x="step")
    texts = [t.get_text() for t in fig.axes[0].texts]
    assert fig.axes[0].get_xlabel() == "step" and any("batch 32 → 64" in t for t in texts), texts
    monkeypatch.chdir(tmp_path)
    path, notes = plot_runs(["b"], "b.png")
    assert path.is_file() and any("batch size changed" in n for n in notes)


def test_plot_of_a_builtin_model_says_it_has_no_curves():
    one_error_line(run_cli("plot", "@mnist"), "@mnist is a built-in model: it ships without learning curves")


def test_runs_in_a_folder_without_runs_says_where_it_looked(workdir):
    assert f"no runs in {workdir / 'runs'} (--runs-dir DIR lists another folder" in ok(run_cli("runs")).stdout


def test_runs_shows_the_targets_in_effect_whole_epochs_limited_iwae_and_failed_runs(tiny_run, env):
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

    dead = tiny_run.parent / "dead"  # killed (kill -9, the OOM killer) before its first checkpoint
    (dead / "checkpoints").mkdir(parents=True)
    (dead / "config.yaml").write_text((tiny_run / "config.yaml").read_text())
    (dead / "metrics.jsonl").write_text('{"kind": "train", "step": 1, "epoch": 1, "lx": 1, "lz": 1, "loss": 2}\n')
    assert info("dead")["status"] == "failed"
    assert all(line == line.rstrip() for line in ok(run_cli("runs")).stdout.splitlines())  # no padding off a terminal
