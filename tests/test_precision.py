"""Mixed precision (train.precision) and the CPU thread policy (run.threads)."""

from __future__ import annotations

import pytest
import torch

from drawcli.core.device import autocast, native_bf16, resolve_precision, thread_policy
from drawcli.core.errors import DrawError
from drawcli.model import DRAW, python_backward, python_loop
from drawcli.training.loop import train

from helpers import Collect, synthetic_images, tiny_settings

CPU = torch.device("cpu")


def relative(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm().clamp_min(1e-12))


def paper_like(seed=0, **over):
    torch.manual_seed(seed)
    cfg = dict(height=28, width=28, glimpses=8, hidden=64, latent=10, attention=True, read_n=2, write_n=5)
    cfg.update(over)
    return DRAW(**cfg)


@pytest.mark.parametrize("attention", [True, False])
def test_bf16_loss_and_gradients_agree_with_float32(attention):
    """bf16 LSTM products with float32 accumulation: loss within 0.2%, every gradient within 2%
    (relative L2), for a batch large enough to take the packed oneDNN path (>= 32 rows)."""
    m = paper_like(attention=attention)
    x = torch.rand(40, 28, 28, generator=torch.Generator().manual_seed(0)).bernoulli()
    eps = torch.randn(8, 40, 10, generator=torch.Generator().manual_seed(1))
    results = []
    for precision in ("float32", "bfloat16"):
        m.zero_grad(set_to_none=True)
        with autocast(CPU, precision):
            out = m(x, eps=eps)
        out.loss.mean().backward()
        assert out.loss.dtype == torch.float32
        results.append((out.loss.detach(), {n: p.grad.clone() for n, p in m.named_parameters()}))
    (l32, g32), (l16, g16) = results
    assert relative(l16, l32) < 2e-3
    assert not torch.equal(l16, l32)  # the products really ran in bf16
    for name in g32:
        assert relative(g16[name], g32[name]) < 2e-2, name


def test_bf16_runs_the_lstm_products_in_bf16_and_nothing_else(monkeypatch):
    """Under autocast the Python engine passes bfloat16 to the LSTM products only; the reference
    loops follow autocast's own rules and agree up to rounding."""
    seen = []
    for module in (python_loop, python_backward):
        real = module.step_matmul
        monkeypatch.setattr(module, "step_matmul", lambda w, rows, dt=None, packed=True, real=real: seen.append(dt) or real(w, rows, dt, packed))
    m = paper_like()
    x = torch.rand(33, 28, 28, generator=torch.Generator().manual_seed(0)).bernoulli()
    eps = torch.randn(8, 33, 10, generator=torch.Generator().manual_seed(1))
    with autocast(CPU, "bfloat16"):
        fast = m(x, eps=eps, engine="python")
        plain = m(x, eps=eps, engine="reference")
    fast.loss.sum().backward()
    assert seen == [torch.bfloat16] * 4  # encoder and decoder, forward and backward
    assert relative(fast.loss.detach(), plain.loss.detach()) < 5e-3
    with autocast(CPU, "float32"):
        m(x, eps=eps, engine="python")
    assert seen[-2:] == [None, None]


def test_bf16_sampling_is_close_to_float32():
    m = paper_like()
    c32, w32 = m.generate(40, generator=torch.Generator().manual_seed(3))
    with autocast(CPU, "bfloat16"):
        c16, w16 = m.generate(40, generator=torch.Generator().manual_seed(3))
    assert c16.dtype == torch.float32
    assert (torch.sigmoid(c16) - torch.sigmoid(c32)).abs().max() < 0.05
    assert relative(w16, w32) < 1e-2


def test_auto_resolves_from_this_machines_hardware():
    """auto picks bfloat16 exactly where native_bf16 finds AMX or AVX512-BF16 (CUDA: sm_80+)."""
    got, why = resolve_precision("auto", CPU)
    native = native_bf16(CPU)
    assert got == ("bfloat16" if native else "float32")
    assert why.startswith("auto:") and (native or "no native") in why
    assert resolve_precision("float32", CPU) == ("float32", "as set")
    assert resolve_precision("bfloat16", CPU) == ("bfloat16", "as set")
    with pytest.raises(DrawError, match="precision: expected one of float32, bfloat16, auto"):
        resolve_precision("fp16", CPU)


def test_auto_is_float32_without_native_bf16(monkeypatch):
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: False, raising=False)
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: False, raising=False)
    assert native_bf16(CPU) is None
    assert resolve_precision("auto", CPU)[0] == "float32"


def test_bf16_training_resumes_bit_exactly_and_its_checkpoint_is_float32():
    images = synthetic_images()
    sets = ("train.epochs=2", "train.precision=bfloat16", "train.batch_size=48")
    whole = train(tiny_settings(*sets), images, images[:40], CPU)
    cb = Collect()
    train(tiny_settings(*sets, "train.max_steps=3"), images, images[:40], CPU, callbacks=[cb])
    ckpt = cb.ckpts[-1][0]
    assert all(t.dtype == torch.float32 for t in ckpt["model"].values())
    resumed = train(tiny_settings(*sets), images, images[:40], CPU, resume=ckpt)
    a, b = whole.model.state_dict(), resumed.model.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    f32 = train(tiny_settings("train.epochs=2", "train.batch_size=48", "train.precision=float32"), images, images[:40], CPU)
    assert not all(torch.equal(a[k], f32.model.state_dict()[k]) for k in a)  # bf16 really changed the numbers


def test_a_bf16_checkpoint_samples_in_float32(tmp_path):
    """A bf16-trained run's checkpoint is ordinary float32 weights: draw sample loads it."""
    from drawcli.runs.checkpoint import atomic_save, load, model_from_checkpoint

    cb = Collect()
    images = synthetic_images()
    train(tiny_settings("train.max_steps=2", "train.precision=bfloat16", "train.batch_size=48"), images, images[:40],
          CPU, callbacks=[cb])
    path = tmp_path / "c.pt"
    atomic_save(cb.ckpts[-1][0], path)
    model = model_from_checkpoint(load(path), CPU)
    canvases, _ = model.generate(4, generator=torch.Generator().manual_seed(0))
    assert canvases.dtype == torch.float32 and torch.isfinite(canvases).all()


def test_training_logs_the_precision_it_used():
    from drawcli.training.loop import train as run

    seen = {}

    class Info:
        def on_start(self, info):
            seen.update(info)

    images = synthetic_images()
    run(tiny_settings("train.max_steps=1", "train.precision=auto"), images, images[:40], CPU, callbacks=[Info()])
    assert seen["precision"] == resolve_precision("auto", CPU)[0]
    assert seen["precision_reason"].startswith("auto:")


def test_thread_policy(monkeypatch):
    assert thread_policy(3, CPU) == (3, "as set")
    assert thread_policy(None, torch.device("meta"))[0] is None  # only CPUs get a thread count
    default = torch.get_num_threads()
    monkeypatch.setattr("drawcli.core.device.idle_cores", lambda: 0.2)  # a busy machine
    assert thread_policy(None, CPU) == (1, f"0.2 of {default} cores idle at start")
    monkeypatch.setattr("drawcli.core.device.idle_cores", lambda: 64.0)  # more idle than torch's default
    assert thread_policy(None, CPU)[0] == default
    assert thread_policy(None, CPU, processes=2)[0] == max(1, default // 2)
    monkeypatch.setattr("drawcli.core.device.idle_cores", lambda: None)
    assert thread_policy(None, CPU)[1] == "no load information"


def test_idle_cores_reads_the_machine():
    from drawcli.core.device import idle_cores

    idle = idle_cores(0.05)
    if idle is None:
        pytest.skip("no /proc/stat here")
    import os

    assert 0 <= idle <= (os.cpu_count() or 1) + 0.5


def test_draw_train_applies_threads_and_the_flag_overrides(tmp_path, synthetic_data_dir):
    """--threads sets torch's thread count for the run and says so; the precision is printed."""
    import subprocess
    import sys

    code = (
        "import sys, torch\n"
        "from drawcli.cli import app\n"
        "try:\n    app(sys.argv[1:], prog_name='draw')\n"
        "except SystemExit as e:\n    assert e.code in (0, None), e.code\n"
        "print('THREADS', torch.get_num_threads())\n"
    )
    args = ["train", "--steps", "2", "--hidden", "16", "--embed", "4", "-b", "32", "--max-steps", "1", "--device", "cpu",
            "--data-dir", str(synthetic_data_dir), "--set", "train.eval_batch_size=50", "--set", f"run.runs_dir={tmp_path}",
            "--precision", "bfloat16"]
    out = subprocess.run([sys.executable, "-c", code, *args, "--threads", "1"], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert "threads: 1 per process (as set)" in out.stdout and "THREADS 1" in out.stdout
    assert "precision bfloat16" in out.stdout


def test_more_threads_than_cores_is_one_warning(monkeypatch):
    from drawcli.core.device import thread_warning

    monkeypatch.setattr("drawcli.core.device.usable_cores", lambda: 2)
    assert thread_warning(2) is None and thread_warning(1, processes=2) is None
    assert thread_warning(4) == ("warning: --threads 4 is more than the 2 CPU cores this process may use; "
                                 "the threads beyond them wait for each other (slower, not faster)")
    assert thread_warning(2, processes=2).startswith("warning: --threads 2 x 2 processes is more than the 2 CPU cores")
