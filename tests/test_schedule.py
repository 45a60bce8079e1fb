"""The learning-rate schedule: its values, its settings, and exact resume through it."""

from __future__ import annotations

import json
import math

import pytest
import torch

from drawcli.core.errors import DrawError
from drawcli.settings import build_settings
from drawcli.training.loop import learning_rate, train

from helpers import Collect, run_cli, synthetic_images, tiny_settings


def ts(*sets):
    return build_settings(None, None, list(sets)).train


def test_constant_is_the_default_and_ignores_the_step():
    t = ts()
    assert t.lr_schedule == "constant" and t.warmup_steps == 0
    assert [learning_rate(t, s, 100) for s in (0, 1, 10_000)] == [t.lr] * 3


def test_warmup_rises_linearly_to_the_peak_then_hands_over():
    t = ts("train.lr=0.01", "train.warmup_steps=4")
    assert [learning_rate(t, s, 10) for s in range(6)] == pytest.approx([0.0025, 0.005, 0.0075, 0.01, 0.01, 0.01])


def test_cosine_runs_from_lr_to_min_lr_over_the_epochs_after_warmup():
    t = ts("train.lr=0.01", "train.min_lr=0.001", "train.lr_schedule=cosine", "train.epochs=10", "train.warmup_steps=20")
    spe = 10  # 100 steps in all, 80 of them on the cosine
    assert learning_rate(t, 20, spe) == pytest.approx(0.01)
    assert learning_rate(t, 60, spe) == pytest.approx(0.0055)  # half-way: the mean of the two ends
    assert learning_rate(t, 99, spe) == pytest.approx(0.001 + 0.009 * 0.5 * (1 + math.cos(math.pi * 79 / 80)))
    assert learning_rate(t, 100, spe) == pytest.approx(0.001)
    assert learning_rate(t, 500, spe) == pytest.approx(0.001)  # a resume past the end stays at the floor
    rates = [learning_rate(t, s, spe) for s in range(20, 101)]
    assert all(a >= b for a, b in zip(rates, rates[1:]))


def test_step_decay_multiplies_every_n_epochs():
    t = ts("train.lr=0.1", "train.lr_schedule=step", "train.lr_step_epochs=2", "train.lr_decay=0.5")
    assert [learning_rate(t, s, 5) for s in (0, 9, 10, 19, 20)] == pytest.approx([0.1, 0.1, 0.05, 0.05, 0.025])


def test_wsd_warms_up_holds_then_decays_by_epochs_and_stays_at_the_floor():
    t = ts("train.lr=0.01", "train.min_lr=0.001", "train.lr_schedule=wsd", "train.epochs=30", "train.warmup_steps=4",
           "train.decay_start=20", "train.decay_epochs=8")
    spe = 10
    assert [learning_rate(t, s, spe) for s in range(5)] == pytest.approx([0.0025, 0.005, 0.0075, 0.01, 0.01])
    assert learning_rate(t, 199, spe) == pytest.approx(0.01)  # the stable phase lasts to the end of epoch 20
    assert learning_rate(t, 200, spe) == pytest.approx(0.01)  # the decay's first step is still at the peak
    assert learning_rate(t, 240, spe) == pytest.approx(0.0055)  # half-way through the decay: the mean of the ends
    assert learning_rate(t, 230, spe) == pytest.approx(0.001 + 0.009 * 0.5 * (1 + math.cos(math.pi * 3 / 8)))
    assert learning_rate(t, 280, spe) == pytest.approx(0.001)
    assert learning_rate(t, 299, spe) == pytest.approx(0.001)  # after the decay: the floor to the end
    rates = [learning_rate(t, s, spe) for s in range(4, 300)]
    assert all(a >= b for a, b in zip(rates, rates[1:]))
    # The decay counts in epochs: after a batch-size change (other steps per epoch) it is where the epochs say.
    assert learning_rate(t, 123, 5, epochs_done=24.0) == pytest.approx(0.0055)


def test_wsd_without_a_decay_start_is_constant_until_one_is_chosen():
    t = ts("train.lr=0.004", "train.lr_schedule=wsd", "train.warmup_steps=2", "train.epochs=300")
    assert t.decay_start is None
    assert [learning_rate(t, s, 10) for s in (0, 1, 2, 100, 2999)] == pytest.approx([0.002, 0.004, 0.004, 0.004, 0.004])


@pytest.mark.parametrize(
    "sets, message",
    [
        (["train.lr_schedule=linear"], "train.lr_schedule: expected one of constant, cosine, step, wsd, got 'linear'"),
        (["train.lr_schedule=wsd", "train.min_lr=0.1"], "train.min_lr: must be <= train.lr (0.001) for the wsd schedule"),
        (["train.lr_schedule=wsd", "train.epochs=20", "train.decay_start=15", "train.decay_epochs=10"],
         "train.decay_start: the decay (15 + 10 train.decay_epochs) would end after train.epochs (20); set train.epochs to at least 25"),
        (["train.lr_schedule=cosine", "train.decay_start=5"], "train.decay_start: only for train.lr_schedule=wsd (it is cosine)"),
        (["train.lr_schedule=wsd", "train.decay_epochs=0"], "train.decay_epochs: must be >= 1, got 0"),
        (["train.lr_schedule=wsd", "train.decay_start=-1"], "train.decay_start: must be >= 0, got -1"),
        (["train.lr_schedule=wsd", "train.decay_start=2.5"], "train.decay_start: expected an integer, got 2.5"),
        (["train.eval_every=0"], "train.eval_every: must be >= 1, got 0"),
        (["train.decay_strat=3"], "did you mean 'decay_start'?"),
        (["train.lr_schedule=cosine", "train.min_lr=0.1"], "train.min_lr: must be <= train.lr (0.001)"),
        (["train.lr_decay=0"], "train.lr_decay: must be in (0, 1], got 0.0"),
        (["train.lr_decay=1.5"], "train.lr_decay: must be in (0, 1], got 1.5"),
        (["train.warmup_steps=-1"], "train.warmup_steps: must be >= 0, got -1"),
        (["train.lr_step_epochs=0"], "train.lr_step_epochs: must be >= 1, got 0"),
        (["train.lr_shedule=cosine"], "did you mean 'lr_schedule'?"),
    ],
)
def test_bad_schedule_settings_are_refused_with_the_key(sets, message):
    with pytest.raises(DrawError, match=None) as e:
        ts(*sets)
    assert message in str(e.value)


def test_rules_between_keys_hold_for_all_layers_together_and_name_where_the_key_was_given(tmp_path):
    """A later layer may mend what an earlier one alone would break: a run whose decay was set to
    start after epoch 170 is shortened with --epochs 170 and a --set that moves the decay to 140."""
    saved = build_settings(None, None, ["train.lr_schedule=wsd", "train.epochs=200", "train.decay_start=170",
                                        "train.decay_epochs=30"])
    shorter = build_settings(None, {"train": {"epochs": 170}}, ["train.decay_start=140"], base=saved).train
    assert (shorter.epochs, shorter.decay_start, shorter.decay_epochs) == (170, 140, 30)
    # The same flag alone still breaks the rule; the message names the key and the layer that gave it.
    with pytest.raises(DrawError) as e:
        build_settings(None, {"train": {"epochs": 170}}, None, base=saved)
    assert str(e.value).startswith("train.decay_start: the decay (170 + 30 train.decay_epochs) would end after train.epochs (170)")
    config = tmp_path / "c.yaml"
    config.write_text("train: {lr_schedule: wsd, epochs: 20, decay_start: 15}\n")
    with pytest.raises(DrawError) as e:
        build_settings(config, None, None)
    assert str(e.value).startswith(f"{config}: train.decay_start: the decay (15 + 10")
    with pytest.raises(DrawError) as e:
        build_settings(config, None, ["train.decay_start=16"])
    assert str(e.value).startswith("--set train.decay_start: the decay (16 + 10")
    assert build_settings(config, {"train": {"epochs": 25}}, None).train.epochs == 25  # a flag mends the file


def test_the_logged_rate_follows_the_schedule():
    cb = Collect()
    s = tiny_settings("train.epochs=2", "train.lr_schedule=cosine", "train.lr=0.002", "train.min_lr=0.0", "train.log_every=1")
    images = synthetic_images()
    train(s, images, images[:40], torch.device("cpu"), callbacks=[cb])
    got = [r["lr"] for r in cb.logs]
    assert got == pytest.approx([learning_rate(s.train, step, 3) for step in range(6)])
    assert got[0] == pytest.approx(0.002) and got[-1] < got[0] / 10


def test_resume_continues_the_schedule_bit_exactly():
    """Stopped at step 4 of 6 and resumed, a warm-up + cosine run ends with the same weights."""
    images = synthetic_images()
    sets = ("train.epochs=2", "train.lr_schedule=cosine", "train.warmup_steps=2", "train.lr=0.003", "train.min_lr=1e-5")
    whole = train(tiny_settings(*sets), images, images[:40], torch.device("cpu"))
    cb = Collect()
    train(tiny_settings(*sets, "train.max_steps=4"), images, images[:40], torch.device("cpu"), callbacks=[cb])
    ckpt = cb.ckpts[-1][0]
    assert ckpt["step"] == 4
    resumed = train(tiny_settings(*sets), images, images[:40], torch.device("cpu"), resume=ckpt)
    a, b = whole.model.state_dict(), resumed.model.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_wsd_resume_bit_exact_and_a_decay_chosen_on_resume_is_followed_and_recorded(tmp_path, monkeypatch, synthetic_data_dir):
    """Interrupted in the stable phase and resumed, wsd ends with the same weights as one
    uninterrupted call; a resume that sets the decay is recorded as a resume row and followed."""
    images = synthetic_images()
    sets = ("train.epochs=3", "train.lr_schedule=wsd", "train.warmup_steps=2", "train.lr=0.003", "train.min_lr=1e-5",
            "train.decay_start=1", "train.decay_epochs=2")
    whole = train(tiny_settings(*sets), images, images[:40], torch.device("cpu"))
    cb = Collect()
    train(tiny_settings(*sets, "train.max_steps=2"), images, images[:40], torch.device("cpu"), callbacks=[cb])
    resumed = train(tiny_settings(*sets), images, images[:40], torch.device("cpu"), resume=cb.ckpts[-1][0])
    a, b = whole.model.state_dict(), resumed.model.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)

    monkeypatch.chdir(tmp_path)
    env = {"DRAW_DATA_DIR": str(synthetic_data_dir)}
    r = run_cli("train", "--steps", "3", "--hidden", "16", "--embed", "4", "-b", "32", "--epochs", "2", "--device", "cpu",
                "--set", "train.lr_schedule=wsd", "--set", "train.eval_batch_size=50", "--set", "train.log_every=1", env=env)
    assert r.exit_code == 0, r.output
    r = run_cli("train", "--resume", "run1", "--epochs", "4", "--set", "train.decay_start=2", "--set", "train.decay_epochs=2",
                "--set", "train.min_lr=0.0001", env=env)
    assert r.exit_code == 0, r.output
    assert "changed on resume: train.epochs 2 -> 4; train.min_lr 0.0 -> 0.0001; train.decay_start null -> 2" in r.output
    rows = [json.loads(line) for line in (tmp_path / "runs" / "run1" / "metrics.jsonl").read_text().splitlines()]
    resume_rows = [row for row in rows if row["kind"] == "resume"]
    assert len(resume_rows) == 1 and resume_rows[0]["changes"]["train.decay_start"] == [None, 2]
    lrs = {row["step"]: row["lr"] for row in rows if row["kind"] == "train"}
    assert [lrs[s] for s in range(1, 7)] == pytest.approx([1e-3] * 6)  # epochs 1-2: constant (3 steps each)
    assert lrs[7] == pytest.approx(1e-3) and lrs[12] == pytest.approx(1e-4 + 0.9e-3 * 0.5 * (1 + math.cos(math.pi * 5 / 6)))
    decay = [lrs[s] for s in range(7, 13)]
    assert all(x > y for x, y in zip(decay, decay[1:]))


def test_a_resume_may_end_a_run_sooner_by_moving_its_decay_in_the_same_command(tmp_path, monkeypatch, synthetic_data_dir):
    """The long run's case: a decay chosen to start after epoch 3 of 5, stopped inside epoch 3, then
    ended sooner with --epochs 4 and the decay moved to 2. --epochs alone breaks the rule (decay 3 + 2
    after epoch 4) and is refused in one line; with the --set in the same command it is accepted."""
    monkeypatch.chdir(tmp_path)
    env = {"DRAW_DATA_DIR": str(synthetic_data_dir)}
    tiny = ("--glimpses", "3", "--hidden", "16", "--latent", "4", "-b", "32", "--device", "cpu")
    r = run_cli("train", *tiny, "--epochs", "5", "--max-steps", "7", "--set", "train.lr_schedule=wsd",
                "--set", "train.decay_start=3", "--set", "train.decay_epochs=2", "--set", "train.eval_batch_size=50", env=env)
    assert r.exit_code == 0, r.output
    r = run_cli("train", "--resume", "run1", "--epochs", "4", env=env)
    assert r.exit_code != 0 and "train.decay_start: the decay (3 + 2 train.decay_epochs) would end after train.epochs (4)" in r.output
    r = run_cli("train", "--resume", "run1", "--epochs", "4", "--set", "train.decay_start=2", env=env)
    assert r.exit_code == 0, r.output
    assert "changed on resume: train.epochs 5 -> 4; train.decay_start 3 -> 2" in r.output
    rows = [json.loads(line) for line in (tmp_path / "runs" / "run1" / "metrics.jsonl").read_text().splitlines()]
    assert [row["epoch"] for row in rows if row["kind"] == "eval"][-1] == 4
    # Asked for fewer epochs than it has trained: the line says how many it has.
    r = run_cli("train", "--resume", "run1", "--epochs", "3", "--set", "train.decay_start=1", env=env)
    assert r.exit_code == 0 and "nothing to do: run run1 has already trained 4 epochs (--epochs 3)" in r.output, r.output


def test_eval_every_evaluates_every_n_epochs_and_at_the_end_and_best_is_chosen_among_them():
    images = synthetic_images()
    cb = Collect()
    s = tiny_settings("train.epochs=5", "train.eval_every=2")
    result = train(s, images, images[:40], torch.device("cpu"), callbacks=[cb])
    assert [row["epoch"] for row in cb.epochs] == [2, 4, 5]  # every second epoch, and the last
    assert [c["epoch"] for c, _ in cb.ckpts] == [1, 2, 3, 4, 5]  # a checkpoint after every epoch all the same
    for ckpt, is_best in cb.ckpts:
        if ckpt["epoch"] in (1, 3):
            assert ckpt["metrics"] == {} and not is_best
    evaluated = {row["epoch"]: row["loss"] for row in cb.epochs}
    best = [c["epoch"] for c, is_best in cb.ckpts if is_best]
    assert best[0] == 2 and all(evaluated[e] == min(evaluated[k] for k in evaluated if k <= e) for e in best)
    assert result.eval["loss"] == evaluated[5] and result.best_loss == min(evaluated.values())
    # A stop inside an epoch (max_steps) always evaluates.
    cb2 = Collect()
    train(tiny_settings("train.epochs=5", "train.eval_every=3", "train.max_steps=4"), images, images[:40], torch.device("cpu"), callbacks=[cb2])
    assert [row["step"] for row in cb2.epochs] == [4]
