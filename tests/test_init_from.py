"""train.init_from (--init-from): a new run that starts from trained weights, with a fresh optimizer
and learning-rate schedule (how the second cycle of the reproduction run was made); weights files
(`draw export`, the kind @NAME ships) as a source."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch
import yaml

from drawcli.training.loop import train

from helpers import Collect, run_cli, synthetic_images, tiny_settings

pytestmark = pytest.mark.usefixtures("one_thread")

SETS = ("train.epochs=1", "train.lr=0.003", "train.lr_schedule=wsd", "train.warmup_steps=2")
TINY = ("--glimpses", "3", "--hidden", "16", "--latent", "4", "-b", "32", "--device", "cpu",
        "--set", "train.eval_batch_size=50")


class AtStart(Collect):
    """Also keeps the weights the model has when training starts."""

    def on_start(self, info):
        self.start = {k: v.detach().clone() for k, v in info["model"].state_dict().items()}


def test_a_run_starts_from_the_given_weights_and_trains_on_from_them():
    images = synthetic_images()
    donor = train(tiny_settings(*SETS), images, images[:40], torch.device("cpu")).model.state_dict()
    seeded = AtStart()
    train(tiny_settings(*SETS, "train.max_steps=1"), images, images[:40], torch.device("cpu"), callbacks=[seeded])
    assert not all(torch.equal(seeded.start[k], donor[k]) for k in donor)  # training changed the seeded weights

    cb = AtStart()
    first = train(tiny_settings(*SETS), images, images[:40], torch.device("cpu"), callbacks=[cb], init_weights=donor)
    assert all(torch.equal(cb.start[k], donor[k]) for k in donor)
    # It trains from there: the weights move, and the same call gives the same weights again.
    after = first.model.state_dict()
    assert not all(torch.equal(after[k], donor[k]) for k in donor)
    again = train(tiny_settings(*SETS), images, images[:40], torch.device("cpu"), init_weights=donor).model.state_dict()
    assert all(torch.equal(after[k], again[k]) for k in after)
    # The step count starts fresh: one epoch is 3 steps (the donor's 3 are not counted on), so the
    # warm-up and schedule run again from step 0.
    assert cb.ckpts[-1][0]["step"] == 3 and cb.ckpts[-1][0]["epoch"] == 1


def test_a_resume_continues_from_its_checkpoint_not_from_init_weights():
    """(Two resumes from one checkpoint dict also check that training leaves the dict as it was.)"""
    images = synthetic_images()
    donor = train(tiny_settings(*SETS), images, images[:40], torch.device("cpu")).model.state_dict()
    cb = Collect()
    sets = ("train.epochs=2", "train.lr=0.003")
    train(tiny_settings(*sets, "train.max_steps=2"), images, images[:40], torch.device("cpu"), callbacks=[cb])
    plain = train(tiny_settings(*sets), images, images[:40], torch.device("cpu"), resume=cb.ckpts[-1][0]).model.state_dict()
    given = train(tiny_settings(*sets), images, images[:40], torch.device("cpu"), resume=cb.ckpts[-1][0],
                  init_weights=donor).model.state_dict()
    assert all(torch.equal(plain[k], given[k]) for k in plain)


def test_draw_train_init_from_a_run_and_what_it_refuses(tmp_path, monkeypatch, env):
    monkeypatch.chdir(tmp_path)
    r = run_cli("train", *TINY, "--epochs", "2", "--name", "donor", env=env)
    assert r.exit_code == 0, r.output
    r = run_cli("train", *TINY, "--epochs", "1", "--init-from", "donor", "--name", "second", env=env)
    assert r.exit_code == 0, r.output
    assert "initial weights: donor, epoch 2, step 6; a fresh optimizer and learning-rate schedule" in r.output
    config = yaml.safe_load((tmp_path / "runs" / "second" / "config.yaml").read_text())
    assert config["train"]["init_from"] == "donor"  # config.yaml still reproduces the run
    start = torch.load(tmp_path / "runs" / "donor" / "checkpoints" / "last.pt", weights_only=True)["model"]
    second = torch.load(tmp_path / "runs" / "second" / "checkpoints" / "last.pt", weights_only=True)
    assert second["step"] == 3 and second["epoch"] == 1

    # Another model: one line naming the key, and no run left behind.
    r = run_cli("train", *TINY, "--hidden", "8", "--init-from", "donor", "--name", "other", env=env)
    assert r.exit_code != 0
    assert "train.init_from donor: another model (model.hidden is 16 there and 8 here, from --hidden)" in r.output
    assert not (tmp_path / "runs" / "other").exists()
    # A name that is nothing.
    r = run_cli("train", *TINY, "--init-from", "nosuch", "--name", "other", env=env)
    assert r.exit_code != 0 and "train.init_from: run 'nosuch' not found" in r.output
    assert not (tmp_path / "runs" / "other").exists()
    # A resume continues from its own checkpoint: changing where the weights came from is refused.
    r = run_cli("train", "--resume", "second", "--epochs", "2", "--set", "train.init_from=second", env=env)
    assert r.exit_code != 0 and "a resumed run continues from its checkpoint" in r.output
    # ... and a plain resume of the run made from them goes on.
    r = run_cli("train", "--resume", "second", "--epochs", "2", env=env)
    assert r.exit_code == 0, r.output
    assert torch.load(tmp_path / "runs" / "second" / "checkpoints" / "last.pt", weights_only=True)["epoch"] == 2
    after = torch.load(tmp_path / "runs" / "donor" / "checkpoints" / "last.pt", weights_only=True)["model"]
    assert all(torch.equal(start[k], after[k]) for k in start)  # the donor's file is untouched by runs made from it


def test_init_from_the_bundled_model_checks_the_model_settings(tmp_path, monkeypatch, env):
    monkeypatch.chdir(tmp_path)
    r = run_cli("train", *TINY, "--init-from", "@mnist", "--name", "other", env=env)
    assert r.exit_code != 0
    assert "train.init_from @mnist: another model (model.glimpses is 64 there and 3 here, from --glimpses;" in r.output
    assert "leave out --glimpses, --hidden and --latent" in " ".join(r.output.split())
    assert not (tmp_path / "runs" / "other").exists()


def test_init_from_the_bundled_model_names_its_whole_history():
    """@mnist trained 400 epochs in four cycles: the line says so, not only the last cycle's epoch 65."""
    from drawcli.runs import builtin
    from drawcli.settings import build_settings
    from drawcli.training.run import initial_weights

    settings = build_settings(None, None, ["train.init_from=@mnist", "model.glimpses=64", "model.hidden=256", "model.latent=100"])
    state, line = initial_weights(settings, 28, 28, 1)
    sha = builtin.get_builtin("@mnist").sha256[:16]
    assert line == (f"initial weights: @mnist (sha256 {sha}), 400 epochs in 4 cycles: 160 + 90 + 85 + 65, 375200 steps; "
                    "a fresh optimizer and learning-rate schedule")
    assert "epoch 65" not in line and len(state) > 10


def test_a_new_run_from_weights_takes_the_model_settings_the_file_carries(tmp_path, monkeypatch, env):
    """`draw export` then `draw train --init-from FILE` without repeating the model flags: the file's
    model settings are the run's; a flag, config or --set that sets one otherwise is refused, naming it."""
    monkeypatch.chdir(tmp_path)
    r = run_cli("train", *TINY, "--epochs", "1", "--read-n", "3", "--write-n", "4", "--name", "quick", env=env)
    assert r.exit_code == 0, r.output
    assert run_cli("export", "quick", "-o", "quick.pt", env=env).exit_code == 0
    plain = ("-b", "32", "--device", "cpu", "--epochs", "1", "--set", "train.eval_batch_size=50")
    for source in ("quick.pt", "quick"):
        r = run_cli("train", *plain, "--init-from", source, "--name", f"ft-{source}", env=env)
        assert r.exit_code == 0, r.output
        model = yaml.safe_load((tmp_path / "runs" / f"ft-{source}" / "config.yaml").read_text())["model"]
        assert model == {"glimpses": 3, "hidden": 16, "latent": 4, "attention": True, "read_n": 3, "write_n": 4}
    # Settings given explicitly that agree are fine; those that disagree are refused with the fix.
    r = run_cli("train", *plain, "--hidden", "16", "--init-from", "quick.pt", "--name", "same", env=env)
    assert r.exit_code == 0, r.output
    config = tmp_path / "c.yaml"
    config.write_text("model:\n  glimpses: 64\n")
    for extra, origin in ((["--glimpses", "5"], "--glimpses"), (["-c", config], f"model.glimpses in {config}"),
                          (["--set", "model.steps=5"], "--set model.steps=5")):
        r = run_cli("train", *plain, *extra, "--init-from", "quick.pt", "--name", "other", env=env)
        line = " ".join(r.stderr.split())
        assert r.exit_code == 1 and f"from {origin})" in line and f"leave out {origin}" in line, r.output
        assert "train.init_from quick.pt: another model (model.glimpses is 3 there and " in line, line
        assert not (tmp_path / "runs" / "other").exists()


def test_a_weights_file_loads_and_starts_a_run_but_is_not_resumed(tmp_path, monkeypatch, env):
    """The files `@NAME` ships (export_weights: no optimizer or random state) work where a checkpoint
    file does for drawing, evaluating and --init-from; a resume from one is refused in one line."""
    import drawcli
    from drawcli.runs import builtin
    from drawcli.runs import checkpoint as ckpt_io

    monkeypatch.chdir(tmp_path)
    r = run_cli("train", *TINY, "--epochs", "1", "--name", "donor", env=env)
    assert r.exit_code == 0, r.output
    ckpt = ckpt_io.load(tmp_path / "runs" / "donor" / "checkpoints" / "last.pt")
    builtin.export_weights(ckpt, tmp_path / "w.pt")
    drawer = drawcli.load(tmp_path / "w.pt", device="cpu")
    assert drawer.epoch == 1 and all(torch.equal(drawer.model.state_dict()[k], v) for k, v in ckpt["model"].items())
    r = run_cli("train", *TINY, "--epochs", "1", "--init-from", "w.pt", "--name", "from-file", env=env)
    assert r.exit_code == 0, r.output
    assert "initial weights: w.pt, epoch 1, step 3;" in r.output
    (tmp_path / "runs" / "donor" / "checkpoints" / "w.pt").write_bytes((tmp_path / "w.pt").read_bytes())
    r = run_cli("train", "--resume", "runs/donor/checkpoints/w.pt", env=env)
    assert r.exit_code != 0
    assert "w.pt: a weights file (no optimizer or random state): it draws, evaluates and starts a new run (--init-from), " \
           "but cannot be resumed" in " ".join(r.output.split())


def test_draw_export_writes_a_weights_file_and_refuses_in_one_line(tmp_path, monkeypatch, env):
    from drawcli.runs import builtin
    from drawcli.runs import checkpoint as ckpt_io

    monkeypatch.chdir(tmp_path)
    r = run_cli("train", *TINY, "--epochs", "2", "--name", "donor", env=env)
    assert r.exit_code == 0, r.output
    r = run_cli("export", "donor", "--load", "1", "-o", "e1.pt", env=env)
    assert r.exit_code == 0, r.output
    digest = builtin.sha256_of(tmp_path / "e1.pt")
    assert "wrote e1.pt (" in r.output and f"donor's epoch_001.pt, epoch 1, step 3; sha256 {digest}" in r.output
    data = ckpt_io.load(tmp_path / "e1.pt", weights=True)
    source = ckpt_io.load(tmp_path / "runs" / "donor" / "checkpoints" / "epoch_001.pt")
    assert data["format"] == ckpt_io.WEIGHTS_FORMAT and "optimizer" not in data and "rng" not in data
    assert all(torch.equal(data["model"][k], v) for k, v in source["model"].items())
    assert "data_dir" not in data["settings"]["data"] and "runs_dir" not in data["settings"]["run"]

    for args, message in [
        (("donor", "-o", "e1.pt"), "error: e1.pt exists; use --force to replace it"),
        (("donor", "-o", "e1.txt"), "error: e1.txt: give NAME.pt for a weights file, or DIR/ for a model folder"),
        (("@mnist", "-o", "m.pt"), "error: @mnist is a model folder already"),
        (("nosuch", "-o", "m.pt"), "error: run 'nosuch' not found"),
        (("donor", "-o", "no/such/m.pt"), "error: no/such: no such folder"),
        (("donor", "--load", "last", "-o", "runs/donor/checkpoints/last.pt", "--force"), "is the checkpoint being exported"),
    ]:
        r = run_cli("export", *args, env=env)
        assert r.exit_code != 0 and message in r.output, (args, r.output)
    r = run_cli("export", "donor", "-o", "e1.pt", "--force", env=env)  # best, else last: epoch 2
    assert r.exit_code == 0 and "epoch 2, step 6" in r.output, r.output


def test_draw_export_help_and_errors_do_not_import_torch(tmp_path):
    code = (
        "import sys\n"
        "from typer.testing import CliRunner\n"
        "from drawcli.cli import app\n"
        "a = CliRunner().invoke(app, ['export', '--help'])\n"
        "b = CliRunner().invoke(app, ['export', 'nosuch', '-o', 'x.pt'])\n"
        "print(a.exit_code, b.exit_code, 'torch' in sys.modules)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=tmp_path).stdout
    assert out.split() == ["0", "1", "False"]
