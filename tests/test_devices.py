"""What would break on GPUs and Macs, tested without them; and the same checks on every device
this machine has (``cpu`` always, ``cuda`` and ``mps`` when present), so that one run of the
suite on a GPU machine covers the device paths.

Without a GPU: a dispatch-mode guard fails on any copy that names float64 and a device at once
(MPS has no float64, and such a copy converts on the source device), the launcher's and the
process group's rules run against a patched ``torch.cuda``/``torch.backends.mps``, and the
bfloat16 probe runs against an autocast that switches itself off.
"""

from __future__ import annotations

import copy
import datetime
import re
import sys
import warnings
from pathlib import Path

import pytest
import torch
import typer
from torch.utils._python_dispatch import TorchDispatchMode

from drawcli.core.device import bfloat16_problem, resolve_precision
from drawcli.core.errors import DrawError, RankError
from drawcli.evaluation.bounds import likelihood_bounds
from drawcli.model import DRAW
from drawcli.training import distributed
from drawcli.training.loop import evaluate, train

from helpers import run_cli, synthetic_images, tiny_settings

ROOT = Path(__file__).resolve().parent.parent


def available_devices() -> list[str]:
    found = ["cpu"]
    if torch.cuda.is_available():
        found.append("cuda")
    mps = getattr(torch.backends, "mps", None)
    if mps is not None and mps.is_available():
        found.append("mps")
    return found


DEVICES = available_devices()


class Float64CopyGuard(TorchDispatchMode):
    """Fails on a copy that asks for float64 and a device in one step (``.to("cpu", float64)``,
    ``.to(float64_tensor)``): on MPS the dtype change would run on the MPS side, which has no
    float64. Moving first and widening after (``.cpu().double()``) passes."""

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is torch.ops.aten._to_copy.default and kwargs.get("dtype") is torch.float64 and "device" in kwargs:
            source = args[0]
            if source.dtype is not torch.float64:
                raise AssertionError(f"a {source.dtype} tensor copied to float64 and a device in one step")
        return func(*args, **kwargs)


def test_the_guard_catches_the_one_step_copy_and_passes_the_two_step_one():
    x = torch.ones(3)
    with Float64CopyGuard():
        x.cpu().double()
        x.double()
        with pytest.raises(AssertionError, match="float64 and a device in one step"):
            x.to("cpu", torch.float64)
        with pytest.raises(AssertionError):
            x.to(torch.zeros(1, dtype=torch.float64))


def test_training_evaluation_and_bounds_never_widen_and_move_in_one_copy():
    images = synthetic_images(64)
    with Float64CopyGuard():
        result = train(tiny_settings("train.epochs=1", "train.precision=float32"), images, images[:40], torch.device("cpu"))
        evaluate(result.model, torch.as_tensor(images[:40]), "dynamic", 20)
        likelihood_bounds(result.model, images[:6], "dynamic", 3, batch_size=9)


# ----------------------------------------------------------------------------- the launcher
@pytest.fixture
def two_gpus(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)


@pytest.fixture
def a_mac(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: True)


def one_error_line(result) -> str:
    assert result.exit_code == 1, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    return lines[0]


@pytest.mark.parametrize("device", ["cuda", "auto", "cuda:1"])
def test_more_processes_than_gpus_is_refused_before_launch(two_gpus, monkeypatch, tmp_path, device):
    launched = []
    monkeypatch.setattr(distributed, "launch", lambda *a: launched.append(a))
    monkeypatch.setattr(sys, "argv", ["draw", "train", "--nproc", "2", "--device", device, "--runs-dir", str(tmp_path)])
    r = run_cli("train", "--nproc", "4", "--device", device, "--runs-dir", tmp_path)
    assert "--nproc 4: one process per GPU, and 2 CUDA device(s) are visible; use --nproc 2 or fewer" in one_error_line(r)
    assert not launched
    run_cli("train", "--nproc", "2", "--device", device, "--runs-dir", tmp_path)
    assert len(launched) == 1  # two processes on two GPUs go ahead


@pytest.mark.parametrize("device", ["mps", "auto"])
def test_nproc_on_a_mac_is_refused_before_launch_and_in_the_process_group(a_mac, monkeypatch, tmp_path, device):
    monkeypatch.setattr(distributed, "launch", lambda *a: pytest.fail("launched"))
    r = run_cli("train", "--nproc", "2", "--device", device, "--runs-dir", tmp_path)
    assert "--nproc 2 cannot run on MPS" in one_error_line(r)
    with pytest.raises(DrawError, match="cannot run on MPS"):
        distributed.init(distributed.DistEnv(rank=0, world=2), device)


def test_a_rank_without_a_gpu_says_so_itself(two_gpus, monkeypatch, capsys):
    with pytest.raises(RankError, match="LOCAL_RANK 2 has no GPU"):
        distributed.init(distributed.DistEnv(rank=2, world=3, local_rank=2), "cuda")
    # In the CLI, rank 2 prints its own error (rank 0 never sees it); a shared error stays with rank 0.
    from drawcli.cli import _user_errors

    monkeypatch.setenv("WORLD_SIZE", "3")
    monkeypatch.setenv("RANK", "2")
    for error, shown in ((RankError("LOCAL_RANK 2 has no GPU"), "error: rank 2: LOCAL_RANK 2 has no GPU"), (DrawError("bad"), "")):
        def fail(error=error):
            raise error

        with pytest.raises(typer.Exit):
            _user_errors(fail)()
        assert capsys.readouterr().err.strip() == shown


def test_the_process_group_waits_longer_than_ncclss_ten_minutes(monkeypatch):
    seen = {}
    monkeypatch.setattr(torch.distributed, "is_initialized", lambda: False)
    monkeypatch.setattr(torch.distributed, "init_process_group", lambda **kw: seen.update(kw))
    distributed.init(distributed.DistEnv(rank=0, world=2), "cpu")
    assert seen["backend"] == "gloo" and seen["timeout"] == datetime.timedelta(hours=3)
    monkeypatch.setenv("DRAWCLI_DIST_TIMEOUT", "7200")
    distributed.init(distributed.DistEnv(rank=0, world=2), "cpu")
    assert seen["timeout"] == datetime.timedelta(hours=2)
    monkeypatch.setenv("DRAWCLI_DIST_TIMEOUT", "soon")
    with pytest.raises(DrawError, match="DRAWCLI_DIST_TIMEOUT must be a positive number of seconds, got 'soon'"):
        distributed.init(distributed.DistEnv(rank=0, world=2), "cpu")


# ----------------------------------------------------------------------------- precision on GPUs
def test_auto_precision_on_mps_is_float32():
    precision, why = resolve_precision("auto", torch.device("mps"))
    assert precision == "float32" and "no native bfloat16" in why


def test_bfloat16_that_autocast_switches_off_is_refused_not_reported(monkeypatch):
    class SwitchesItselfOff:
        def __init__(self, *args, **kwargs):
            warnings.warn("In MPS autocast, but the target dtype is not supported. Disabling autocast.", stacklevel=2)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return False

    monkeypatch.setattr(torch, "autocast", SwitchesItselfOff)
    problem = bfloat16_problem(torch.device("meta"))
    assert problem == "autocast gave float32 products (In MPS autocast, but the target dtype is not supported. Disabling autocast.)"
    monkeypatch.undo()
    assert resolve_precision("bfloat16", torch.device("cpu")) == ("bfloat16", "as set")
    monkeypatch.setattr("drawcli.core.device.bfloat16_problem", lambda device: "bf16 needs macOS 14")
    with pytest.raises(DrawError, match="precision bfloat16 cannot run on mps: bf16 needs macOS 14; use --precision float32"):
        resolve_precision("bfloat16", torch.device("mps"))


def test_a_device_that_raises_under_bfloat16_autocast_is_named():
    # meta tensors under a real CPU-less autocast: torch.autocast("meta") is refused by torch itself.
    assert bfloat16_problem(torch.device("meta"))


# ----------------------------------------------------------------------------- library use
def test_train_takes_tensors_as_they_are(monkeypatch):
    """A CUDA tensor cannot go through numpy: tensors must reach .to(device) directly."""
    import drawcli.training.loop as train_module

    real = train_module.np.asarray

    def no_tensors(a, *args, **kwargs):
        assert not isinstance(a, torch.Tensor), "a tensor went through numpy"
        return real(a, *args, **kwargs)

    monkeypatch.setattr(train_module.np, "asarray", no_tensors)
    images = torch.as_tensor(synthetic_images(64))
    train(tiny_settings("train.max_steps=1"), images, images[:40], torch.device("cpu"))


def test_a_users_float16_autocast_keeps_the_fast_engines_products_in_float32():
    from drawcli.model.fast import low_precision

    x = torch.zeros(2, 3)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert low_precision(x) == torch.bfloat16
    with torch.autocast("cpu", dtype=torch.float16):
        assert low_precision(x) is None
    assert low_precision(x) is None


# ----------------------------------------------------------------------------- the declared torch
# APIs the package relies on, and the torch release that introduced each.
NEEDS = {
    r"get_autocast_dtype\(": (2, 4),
    r"device_id=": (2, 3),
    r"torch\.library\.(opcheck|register_fake|custom_op)": (2, 4),
}


def test_the_declared_torch_minimum_covers_the_apis_used():
    text = (ROOT / "pyproject.toml").read_text()
    declared = tuple(int(v) for v in re.search(r'"torch>=(\d+)\.(\d+)', text).groups())
    source = "\n".join(p.read_text() for p in (ROOT / "drawcli").rglob("*.py"))
    needed = [version for pattern, version in NEEDS.items() if re.search(pattern, source)]
    needed.append((2, 5))  # torch.autocast("mps", ...): the device may be a Mac's
    assert declared >= max(needed), f"pyproject says torch>={declared}, the code needs {max(needed)}"


# ----------------------------------------------------------------------------- every device here
@pytest.mark.parametrize("device", DEVICES)
def test_fast_path_matches_the_plain_loop_on(device):
    torch.manual_seed(0)
    fast = DRAW(height=12, width=10, glimpses=3, hidden=16, latent=4, attention=True, read_n=2, write_n=3).to(device)
    plain = copy.deepcopy(fast)
    plain.fused = False
    x = torch.rand(5, 12, 10, device=device)
    eps = torch.randn(3, 5, 4, device=device)
    a, b = fast(x, eps=eps), plain(x, eps=eps)
    a.loss.sum().backward()
    b.loss.sum().backward()
    assert torch.allclose(a.loss, b.loss, rtol=1e-4, atol=1e-3)
    for (name, p), q in zip(fast.named_parameters(), plain.parameters()):
        assert torch.allclose(p.grad, q.grad, rtol=1e-3, atol=1e-4), name


@pytest.mark.parametrize("device", DEVICES)
def test_short_training_sampling_and_evaluation_on(device):
    images = synthetic_images(64)
    result = train(tiny_settings("train.epochs=1", "train.precision=float32"), images, images[:40], torch.device(device))
    assert all(p.device.type == device for p in result.model.parameters())
    assert result.eval["loss"] == pytest.approx(result.eval["lx"] + result.eval["lz"]) and result.eval["loss"] > 0
    canvases, writes = result.model.generate(4, generator=torch.Generator(device=device).manual_seed(0))
    assert canvases.shape == (3, 4, 28, 28) and torch.isfinite(canvases).all()
    bounds = likelihood_bounds(result.model, images[:5], "dynamic", 4, batch_size=8)
    assert bounds.iwae.shape == (5,) and bool((bounds.iwae <= bounds.elbo + 1e-6).all())



def test_environment_sets_and_restores_variables(monkeypatch):
    """The one scoped environment change behind the native build (CXX, PATH) and --nproc's threads."""
    import os

    from drawcli.core.files import environment

    monkeypatch.setenv("DRAW_T_SET", "before")
    monkeypatch.delenv("DRAW_T_UNSET", raising=False)
    with pytest.raises(RuntimeError):
        with environment(DRAW_T_SET="inside", DRAW_T_UNSET="new"):
            assert (os.environ["DRAW_T_SET"], os.environ["DRAW_T_UNSET"]) == ("inside", "new")
            raise RuntimeError  # restored however the block ends
    assert os.environ["DRAW_T_SET"] == "before" and "DRAW_T_UNSET" not in os.environ
