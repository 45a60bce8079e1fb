"""A long evaluation (K = 1000 on 10k images takes hours) survives an interruption: the work
finished is kept, and continuing gives exactly what an uninterrupted evaluation gives."""

from __future__ import annotations

import pytest
import torch

from drawcli.evaluation.bounds import Partial, likelihood_bounds
from drawcli.model import DRAW


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def small_model() -> DRAW:
    torch.manual_seed(0)
    return DRAW(height=8, width=8, steps=3, hidden=16, embed=4, read_n=2, write_n=3, attention=True)


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
                          progress=stop_after_two_blocks, keep=lambda p: kept.append(torch.utils._pytree.tree_map(
                              lambda t: t.clone() if isinstance(t, torch.Tensor) else t, p.to_dict())))
    assert len(kept) == 1  # kept once, when it was interrupted
    partial = Partial.from_dict(kept[0])
    assert 0 < partial.done < len(x)
    assert torch.equal(partial.iwae[: partial.done], whole.iwae[: partial.done])

    # A batch size given now is ignored: the pass layout is the partial's.
    resumed = likelihood_bounds(model, x, "dynamic", 2, seed=5, batch_size=7, engine=engine, resume=partial)
    for name in ("lx", "lz", "iwae"):
        assert torch.equal(getattr(resumed, name), getattr(whole, name)), name
    assert resumed.rows_per_pass == whole.rows_per_pass


def test_kept_every_interval_and_not_after_the_last_block():
    model, x = small_model(), images(5)
    kept: list[int] = []
    likelihood_bounds(model, x, "none", 3, seed=0, batch_size=3, keep=lambda p: kept.append(p.done), keep_every=0.0)
    assert kept == [1, 2, 3, 4]  # after every block but the last (the finished result is the caller's to write)


def test_a_partial_of_other_work_is_refused():
    model, x = small_model(), images(5)
    kept: list[Partial] = []
    with pytest.raises(KeyboardInterrupt):
        likelihood_bounds(model, x, "none", 3, seed=0, batch_size=3, keep=kept.append,
                          progress=lambda done: (_ for _ in ()).throw(KeyboardInterrupt) if done == 2 else None)
    from drawcli.core.errors import DrawError

    with pytest.raises(DrawError, match="partial evaluation is of 5 images with K=3, not 4 with K=3"):
        likelihood_bounds(model, x[:4], "none", 3, seed=0, resume=kept[0])
