"""A long evaluation (K = 1000 on 10k images takes hours) survives an interruption: the work
finished is kept, and continuing gives exactly what an uninterrupted evaluation gives."""

from __future__ import annotations

import copy
import dataclasses

import pytest
import torch

from drawcli.evaluation.bounds import Continuation, Partial, likelihood_bounds
from drawcli.model import DRAW

pytestmark = pytest.mark.usefixtures("one_thread")


def small_model() -> DRAW:
    torch.manual_seed(0)
    return DRAW(height=8, width=8, glimpses=3, hidden=16, latent=4, read_n=2, write_n=3, attention=True)


def images(n: int = 11) -> torch.Tensor:
    return torch.randint(0, 256, (n, 8, 8), generator=torch.Generator().manual_seed(1), dtype=torch.uint8)


class Stop(Exception):
    pass


@pytest.mark.parametrize("batch_size", [6, 2])  # 3 images per pass; or K split over two passes
@pytest.mark.parametrize("engine", ["python", "reference"])
def test_interrupted_and_resumed_equals_uninterrupted(batch_size, engine):
    model, x = small_model(), images()
    whole = likelihood_bounds(model, x, "dynamic", 2, seed=5, batch_size=batch_size, engine=engine)

    kept: list[dict] = []

    def stop_after_two_blocks(done: int) -> None:
        if done >= 2 * max(1, batch_size // 2):
            raise Stop

    with pytest.raises(Stop):
        likelihood_bounds(model, x, "dynamic", 2, seed=5, batch_size=batch_size, engine=engine,
                          progress=stop_after_two_blocks, continuation=Continuation(keep=lambda p: kept.append(copy.deepcopy(p.to_dict()))))
    assert len(kept) == 1  # kept once, when it was interrupted
    partial = Partial.from_dict(kept[0])
    assert 0 < partial.done < len(x)
    assert torch.equal(partial.iwae[: partial.done], whole.iwae[: partial.done])

    # A batch size given now is ignored: the pass layout is the partial's.
    resumed = likelihood_bounds(model, x, "dynamic", 2, seed=5, batch_size=7, engine=engine, continuation=Continuation(resume=partial))
    for name in ("lx", "lz", "iwae"):
        assert torch.equal(getattr(resumed, name), getattr(whole, name)), name
    assert resumed.rows_per_pass == whole.rows_per_pass


def test_kept_every_interval_and_not_after_the_last_block():
    model, x = small_model(), images(5)
    kept: list[int] = []
    likelihood_bounds(model, x, "none", 3, seed=0, batch_size=3, continuation=Continuation(keep=lambda p: kept.append(p.done), keep_every=0.0))
    assert kept == [1, 2, 3, 4]  # after every block but the last (the finished result is the caller's to write)


def test_a_partial_of_other_work_is_refused():
    model, x = small_model(), images(5)
    kept: list[Partial] = []

    def interrupt_at_two(done: int) -> None:
        if done == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        likelihood_bounds(model, x, "none", 3, seed=0, batch_size=3, continuation=Continuation(keep=kept.append), progress=interrupt_at_two)
    from drawcli.core.errors import DrawError

    with pytest.raises(DrawError, match="partial evaluation is of 5 images with K=3, not 4 with K=3"):
        likelihood_bounds(model, x[:4], "none", 3, seed=0, continuation=Continuation(resume=kept[0]))


# --------------------------------------------------------------------------- draw evaluate


def test_draw_evaluate_continues_an_interrupted_evaluation(tmp_path, monkeypatch):
    import io
    import json

    import numpy as np
    from rich.console import Console
    from test_evaluate import TINY, make_run, write_idx

    from drawcli.commands import evaluate as command
    from drawcli.commands.options import EvaluateOptions
    from drawcli.evaluation import bounds

    data_dir = tmp_path / "data"
    (data_dir / "mnist").mkdir(parents=True)
    g = np.random.default_rng(1)
    write_idx(data_dir / "mnist" / "train-images-idx3-ubyte", g.integers(0, 256, (64, 28, 28), dtype=np.uint8))
    write_idx(data_dir / "mnist" / "t10k-images-idx3-ubyte", g.integers(0, 256, (30, 28, 28), dtype=np.uint8))
    make_run(tmp_path / "runs", "tiny", TINY, data_dir)
    out = io.StringIO()
    common = dict(runs_dir=tmp_path / "runs", samples=3, batch_size=6, device="cpu")
    console = Console(file=out, width=200)

    whole = command.evaluate_command(EvaluateOptions("tiny", output=tmp_path / "whole.json", **common), console)

    real = bounds.likelihood_bounds

    def interrupted(*args, progress=None, continuation=None, **kwargs):
        def stop(done):
            if done >= 8:
                raise KeyboardInterrupt

        return real(*args, progress=stop, continuation=dataclasses.replace(continuation, keep_every=0.0), **kwargs)

    monkeypatch.setattr(bounds, "likelihood_bounds", interrupted)
    target = tmp_path / "again.json"
    with pytest.raises(KeyboardInterrupt):
        command.evaluate_command(EvaluateOptions("tiny", output=target, **common), console)
    kept = target.with_name("again.json.partial")
    assert kept.exists() and not target.exists()
    assert "the same command continues from there" in out.getvalue()
    assert torch.load(kept, weights_only=True)["partial"]["done"] == 8

    monkeypatch.setattr(bounds, "likelihood_bounds", real)
    again = command.evaluate_command(EvaluateOptions("tiny", output=target, **common), console)
    assert "continuing from" in out.getvalue() and "8 of 30 images were done" in out.getvalue()
    assert not kept.exists()  # finished: the partial file is gone
    for key in ("elbo", "elbo_lx", "elbo_lz", "iwae", "iwae_stderr", "images"):
        assert again[key] == whole[key], key
    assert json.loads(target.read_text())["iwae"] == whole["iwae"]


def test_a_kept_evaluation_of_other_work_is_not_continued(tmp_path):
    from drawcli.evaluation.bounds import Partial
    from drawcli.evaluation.evaluate import partial_key, read_partial, write_partial

    ckpt = tmp_path / "m.pt"
    ckpt.write_bytes(b"x")
    key = partial_key("run", ckpt, split="test", samples=1000, seed=0)
    p = Partial(done=4, lx=torch.zeros(9, dtype=torch.float64), lz=torch.zeros(9, dtype=torch.float64),
                iwae=torch.zeros(9, dtype=torch.float64), noise=torch.Generator().get_state(),
                per_block=2, per_pass=1000, images=9, samples=1000)
    write_partial(tmp_path / "e.json.partial", key, p, 12.5)
    got, seconds, note = read_partial(tmp_path / "e.json.partial", key)
    assert got.done == 4 and seconds == 12.5 and "4 of 9 images were done" in note
    other, _, why = read_partial(tmp_path / "e.json.partial", partial_key("run", ckpt, split="test", samples=100, seed=0))
    assert other is None and "another samples" in why
    ckpt.write_bytes(b"xy")  # the checkpoint was replaced (another epoch)
    other, _, why = read_partial(tmp_path / "e.json.partial", partial_key("run", ckpt, split="test", samples=1000, seed=0))
    assert other is None and "another checkpoint" in why
    (tmp_path / "bad.partial").write_bytes(b"not a torch file")
    other, _, why = read_partial(tmp_path / "bad.partial", key)
    assert other is None and "unreadable" in why
    assert read_partial(tmp_path / "none.partial", key) == (None, 0.0, None)
