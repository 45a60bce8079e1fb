"""The learning-rate schedule: its values, its settings, and exact resume through it."""

from __future__ import annotations

import math

import pytest
import torch

from drawcli.errors import DrawError
from drawcli.settings import build_settings
from drawcli.train import learning_rate, train

from helpers import Collect, synthetic_images, tiny_settings


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


@pytest.mark.parametrize(
    "sets, message",
    [
        (["train.lr_schedule=linear"], "train.lr_schedule: expected one of constant, cosine, step, got 'linear'"),
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
