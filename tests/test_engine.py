"""The engine choice (run.engine, --engine): what the model runs for each setting and device, what
each command prints, the one-line refusals; and the Python engine's steps never make a tensor
from Python data or wait for the device after its first call (issue 27: on a GPU each such
tensor is a blocking host-to-device copy)."""

from __future__ import annotations

from collections import Counter

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from drawcli.core.errors import DrawError
from drawcli.model import DRAW, Engine
from drawcli.model import native_build as native
from drawcli.model.engine import MPS_REASON, EngineError, Resolved, resolve, resolve_for
from drawcli.training.distributed import DistEnv
from drawcli.training.loop import make_adam, train_step

from helpers import run_cli

CPU, MPS = torch.device("cpu"), torch.device("mps")
HAS_COMPILER = native.compiler() is not None


def at(request, work="train", device=CPU, attention=True, window=2, **kw) -> Resolved:
    return resolve(request, attention=attention, window=window, device=device, work=work, **kw)


# ----------------------------------------------------------------------------- one decision: resolve
def test_reference_and_python_run_as_named():
    m = DRAW(height=8, width=8, glimpses=2, hidden=8, latent=2, read_n=2, write_n=2)
    assert at("reference") == Resolved("reference", "engine reference")
    assert at("python", "evaluate") == Resolved("python", "engine python")
    assert at(Engine("python", packed_gemm=False)).packed_gemm is False
    assert at("auto", "record").name == "python"  # records (pictures): never native
    assert at("auto", "sample") == Resolved("python", "auto: sampling has no native loop")
    with pytest.raises(EngineError, match=r"^engine: expected one of auto, native, python, reference, got .fast.$"):
        m(torch.rand(3, 1, 8, 8), engine="fast")
    with pytest.raises(EngineError, match=r"^--engine: expected one of auto, native, python, reference, got 'fast'$"):
        at("fast", flag="--engine")
    assert issubclass(EngineError, DrawError) and issubclass(EngineError, ValueError)  # one line for users, ValueError for code


def test_on_mps_auto_runs_the_reference_loops_and_python_is_refused():
    """issue 27: the Python engine writes with out= into strided views, which some torch releases
    computed wrongly on MPS; without an MPS machine to show otherwise, MPS runs the plain loops."""
    assert at("auto", device=MPS) == Resolved("reference", f"auto: {MPS_REASON}")
    assert at("auto", "sample", device=MPS).name == "reference"
    for setting in ("python", "native"):
        with pytest.raises(EngineError, match=rf"^--engine {setting}: on MPS"):
            at(setting, "evaluate", device=MPS, flag="--engine")


def test_auto_picks_native_for_training_and_evaluation_where_it_loads():
    for work in ("train", "evaluate"):
        choice = at("auto", work)
        if native.load():
            assert choice == Resolved("native", "auto: CPU, library loaded")
            assert at("auto", work, attention=False, window=0).name == "native"  # without attention too
        else:
            assert choice.name == "python" and choice.why.startswith("auto: the native engine is unavailable: ")
    assert at("auto", window=65).line == (
        "engine: python (PyTorch loop); auto: the native engine's windows are at most 64 wide, this model's are 65")
    assert at("auto", attention=False, window=0).name == at("auto").name  # no windows without attention
    assert at("auto", "sample").line == "engine: python (PyTorch loop); auto: sampling has no native loop"
    assert at("reference", flag="--engine").line == "engine: reference (draw.py's plain loops); --engine reference"
    assert at("auto", dtype=torch.float16).why == "auto: the native engine runs float32 and float64 models, not torch.float16"


def test_the_model_and_its_settings_resolve_alike():
    from drawcli.settings import build_settings

    settings = build_settings(None, None, ["model.read_n=3", "model.write_n=4"])
    m = DRAW(height=28, width=28, glimpses=2, hidden=8, latent=2, read_n=3, write_n=4)
    assert resolve_for("auto", settings.model, CPU, "train") == resolve_for("auto", m, CPU, "train")


def test_a_resolved_engine_is_checked_against_each_call():
    """What the commands pass down: resolved once, and a native one is refused where a call cannot run it."""
    m = DRAW(height=8, width=8, glimpses=2, hidden=8, latent=2, read_n=2, write_n=2)
    x = torch.rand(3, 1, 8, 8)
    assert m(x, engine=Resolved("python", "given")).loss.shape == (3,)
    with pytest.raises(EngineError, match="engine native: the native engine does not record canvases"):
        m(x, record=True, engine=Resolved("native", "given"))
    with pytest.raises(EngineError, match="sampling has no native loop"):
        m.generate(2, engine=Resolved("native", "given"))


FRESH = """
import sys, torch
from drawcli.model import DRAW, native_build
from drawcli.model.engine import resolve_for
m = DRAW(height=8, width=8, glimpses=2, hidden=8, latent=2, read_n=2, write_n=2)
if sys.argv[1] == "loaded":
    native_build.load()
before = native_build._STATE["loaded"]
print(before, resolve_for("auto", m, "cpu", "train").name, resolve_for("auto", m, "cpu", "evaluate").name)
"""


def test_auto_is_the_same_in_a_fresh_process_and_after_the_library_is_loaded():
    """No module state: auto does not depend on whether this process has loaded the library yet."""
    import subprocess
    import sys

    outs = [subprocess.run([sys.executable, "-c", FRESH, how], capture_output=True, text=True, timeout=600) for how in ("fresh", "loaded")]
    for out in outs:
        assert out.returncode == 0, out.stderr[-2000:]
    fresh, loaded = (out.stdout.split() for out in outs)
    assert fresh[0] == "None" and loaded[0] == "True"  # the fresh process had not loaded it ...
    assert fresh[1:] == loaded[1:]  # ... and resolves the same engines
    assert fresh[1] == ("native" if HAS_COMPILER and native.load() else "python")


def test_switched_off_by_the_environment(monkeypatch):
    monkeypatch.setenv("DRAWCLI_NATIVE", "0")
    assert at("auto") == Resolved("python", "auto: DRAWCLI_NATIVE=0")


def test_native_where_it_cannot_run_is_one_clear_line():
    for work, device, why in (("sample", CPU, "sampling has no native loop"),
                              ("animate", CPU, "draw animate has no native loop"),
                              ("train", torch.device("cuda"), "the native engine runs on the CPU only, not cuda")):
        with pytest.raises(DrawError) as e:
            at("native", work, device=device, flag="--engine")
        assert str(e.value) == f"--engine native: {why}; use --engine auto or python"
    with pytest.raises(DrawError, match=r"^--engine native: the native engine's windows are at most 64 wide, this model's are 70; use"):
        at("native", window=70, flag="--engine")


def test_train_and_evaluate_print_the_engine_they_ran(tmp_path, synthetic_data_dir):
    runs = tmp_path / "runs"
    common = ["--runs-dir", runs]
    r = run_cli("train", "--glimpses", 3, "--hidden", 16, "--latent", 4, "--batch-size", 32, "--max-steps", 2, "--epochs", 1,
                "--data-dir", synthetic_data_dir, "--device", "cpu", "--threads", 1, "--name", "e", "--no-tensorboard", *common)
    assert r.exit_code == 0, r.output
    native_line = "engine: native (C++ loop); auto: CPU, library loaded"
    auto = native_line if native.load() else "engine: python (PyTorch loop); auto: the native engine is unavailable"
    assert auto in r.output
    r = run_cli("evaluate", "e", "--samples", 2, "--limit", 8, "--data-dir", synthetic_data_dir, "--device", "cpu",
                "-o", tmp_path / "e.json", *common)
    assert r.exit_code == 0, r.output
    assert auto in r.output
    # The picture commands draw the same whatever the engine: no engine line (issue 37).
    r = run_cli("sample", "e", "-n", 4, "-o", tmp_path / "s.png", "--device", "cpu", *common)
    assert r.exit_code == 0 and "engine" not in r.output, r.output
    r = run_cli("animate", "e", "-n", 4, "-o", tmp_path / "a.gif", "--device", "cpu", *common)
    assert r.exit_code == 0 and "engine" not in r.output, r.output
    r = run_cli("inspect-attention", "e", "-n", 2, "-o", tmp_path / "i.gif", "--device", "cpu", "--data-dir",
                synthetic_data_dir, *common)
    assert r.exit_code == 0 and "engine" not in r.output, r.output
    r = run_cli("sample", "e", "-n", 4, "-o", tmp_path / "r.png", "--device", "cpu", "--engine", "reference", *common)
    assert r.exit_code == 0 and "engine" not in r.output, r.output
    r = run_cli("sample", "e", "-n", 4, "--device", "cpu", "--engine", "native", *common)
    assert r.exit_code == 1
    assert r.output.strip().splitlines()[-1] == "error: --engine native: sampling has no native loop; use --engine auto or python"
    r = run_cli("train", "--no-attention", "--glimpses", 2, "--hidden", 8, "--latent", 2, "--max-steps", 1, "--batch-size", 32,
                "--data-dir", synthetic_data_dir, "--device", "cpu", "--name", "f", *common)
    assert r.exit_code == 0, r.output
    assert auto in r.output  # the model without attention runs natively too


# ----------------------------------------------------------------------------- issue 27: no host data per step
class HostData(TorchDispatchMode):
    """Counts what blocks a GPU step: tensors made from Python data (torch.tensor, new_tensor,
    indexing with a list, assigning a Python number into a slice), reads of a device value
    (.item()), and copies from the host to another device."""

    def __init__(self):
        super().__init__()
        self.seen = Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        name = func.overloadpacket.__name__
        if name in ("lift_fresh", "lift_fresh_copy", "_local_scalar_dense"):
            self.seen[name] += 1
        elif name == "_to_copy" and args[0].device.type == "cpu" and torch.device(kwargs.get("device") or "cpu").type != "cpu":
            self.seen["host to device"] += 1
        elif name == "copy_" and args[1].device.type == "cpu" and args[0].device.type != "cpu":
            self.seen["host to device"] += 1
        return func(*args, **kwargs)


def test_the_spy_sees_host_data():
    x = torch.zeros(3)
    with HostData() as spy:
        x.new_tensor([1.0])
        x[[0, 1]] = 2.0
        x[0].item()
    assert spy.seen == {"lift_fresh": 3, "_local_scalar_dense": 1}


@pytest.mark.parametrize("channels", [1, 3])
@pytest.mark.parametrize("attention", [True, False])
def test_python_engine_steps_after_the_first_make_no_tensor_from_host_data(channels, attention):
    """A training step (forward, backward, clipping, Adam), an evaluation forward and sampling:
    once their buffers and constants exist (first call), nothing is made from Python data."""
    torch.manual_seed(0)
    m = DRAW(height=10, width=9, glimpses=3, hidden=16, latent=4, channels=channels, attention=attention, read_n=2, write_n=3)
    opt = make_adam(m.parameters(), 1e-3, (0.5, 0.999))
    x, eps = torch.rand(40, channels, 10, 9), torch.randn(3, 40, 4)

    def work():
        train_step(m, opt, list(m.parameters()), x, eps, 1e-3, 5.0, "float32", DistEnv(), "python")
        with torch.no_grad():
            m(x, log_ratio=True, engine="python")
        m.generate(5, engine="python", every_step=False)

    work()
    with HostData() as spy:
        work()
    assert not spy.seen, dict(spy.seen)
