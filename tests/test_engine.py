"""The engine choice (run.engine, --engine): what the model runs for each setting and device, what
each command prints, the one-line refusals; and the Python engine's steps never make a tensor
from Python data or wait for the device after its first call (issue 27: on a GPU each such
tensor is a blocking host-to-device copy)."""

from __future__ import annotations

import types
from collections import Counter

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from drawcli.core.errors import DrawError
from drawcli.model import DRAW, Engine
from drawcli.model import native_build as native
from drawcli.model.choice import choose_engine
from drawcli.model.engine import MPS_REASON, forward_engine, sampling_engine
from drawcli.training.distributed import DistEnv
from drawcli.training.loop import make_adam, train_step

from helpers import run_cli

CPU, MPS = torch.device("cpu"), torch.device("mps")
HAS_COMPILER = native.compiler() is not None


# ----------------------------------------------------------------------------- the model's choice
def test_reference_and_python_run_as_named_and_auto_never_needs_the_library():
    m = DRAW(height=8, width=8, steps=2, hidden=8, embed=2, read_n=2, write_n=2)
    x = torch.rand(3, 1, 8, 8)
    assert forward_engine(Engine("reference"), m, x, False, None) == "reference"
    assert forward_engine(Engine("python"), m, x, True, None) == "python"
    assert forward_engine(Engine("auto"), m, x, True, None) == "python"  # records: never native
    assert sampling_engine(Engine("auto"), CPU) == "python"
    with pytest.raises(ValueError, match="engine must be one of auto, native, python, reference"):
        m(x, engine="fast")


def test_on_mps_auto_runs_the_reference_loops_and_python_is_refused():
    """issue 27: the fused engine writes with out= into strided views, which some torch releases
    computed wrongly on MPS; without an MPS machine to show otherwise, MPS runs the plain loops."""
    m = DRAW(height=8, width=8, steps=2, hidden=8, embed=2, read_n=2, write_n=2)
    x = types.SimpleNamespace(device=MPS, dtype=torch.float32)  # what forward_engine reads of the input
    assert forward_engine(Engine("auto"), m, x, False, None) == "reference"
    assert sampling_engine(Engine("auto"), MPS) == "reference"
    with pytest.raises(ValueError, match="strided views"):
        forward_engine(Engine("python"), m, x, False, None)
    with pytest.raises(ValueError, match="the native engine cannot run this forward"):
        forward_engine(Engine("native"), m, x, False, None)
    assert choose_engine("auto", MPS, True, "train").engine == "reference"
    assert MPS_REASON in choose_engine("auto", MPS, True, "sample").why
    for setting in ("python", "native"):
        with pytest.raises(DrawError, match=rf"^--engine {setting}: on MPS"):
            choose_engine(setting, MPS, True, "evaluate")


# ----------------------------------------------------------------------------- the command's choice
def test_auto_picks_native_for_training_and_evaluation_where_it_loads():
    for work in ("train", "evaluate"):
        choice = choose_engine("auto", CPU, True, work)
        if native.load():
            assert choice.engine == "native" and choice.why == "auto: CPU, library loaded"
            assert choose_engine("auto", CPU, False, work).engine == "native"  # without attention too
        else:
            assert choice.engine == "python" and choice.why.startswith("auto: the native engine is unavailable: ")
    assert choose_engine("auto", CPU, True, "train", window=65).line == (
        "engine: python (fused PyTorch loop); auto: the native engine's windows are at most 64 wide, this model's are 65")
    assert choose_engine("auto", CPU, False, "train", window=65).engine == choose_engine("auto", CPU, False, "train").engine
    assert choose_engine("auto", CPU, True, "sample").line == "engine: python (fused PyTorch loop); auto: draw sample has no native loop"
    assert choose_engine("reference", CPU, True, "train").line == "engine: reference (draw.py's plain loops); --engine reference"


def test_switched_off_by_the_environment(monkeypatch):
    monkeypatch.setenv("DRAWCLI_NATIVE", "0")
    choice = choose_engine("auto", CPU, True, "train")
    assert (choice.engine, choice.why) == ("python", "auto: DRAWCLI_NATIVE=0")


def test_native_where_it_cannot_run_is_one_clear_line():
    for args, why in ((("auto", CPU, True, "sample"), "draw sample has no native loop"),
                      (("auto", torch.device("cuda"), True, "train"), "the native engine runs on the CPU, this is cuda")):
        with pytest.raises(DrawError) as e:
            choose_engine("native", *args[1:])
        assert str(e.value) == f"--engine native: {why}; use --engine auto or python"
    with pytest.raises(DrawError, match=r"^--engine native: the native engine's windows are at most 64 wide, this model's are 70; use"):
        choose_engine("native", CPU, True, "train", window=70)
    with pytest.raises(DrawError, match=r"^--engine: expected one of auto, native, python, reference, got 'fast'$"):
        choose_engine("fast", CPU, True, "train")


def test_train_and_evaluate_print_the_engine_they_ran(tmp_path, synthetic_data_dir):
    runs = tmp_path / "runs"
    common = ["--runs-dir", runs]
    r = run_cli("train", "--glimpses", 3, "--hidden", 16, "--latent", 4, "--batch-size", 32, "--max-steps", 2, "--epochs", 1,
                "--data-dir", synthetic_data_dir, "--device", "cpu", "--threads", 1, "--name", "e", "--no-tensorboard", *common)
    assert r.exit_code == 0, r.output
    native_line = "engine: native (C++ loop); auto: CPU, library loaded"
    auto = native_line if native.load() else "engine: python (fused PyTorch loop); auto: the native engine is unavailable"
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
    assert r.output.strip().splitlines()[-1] == "error: --engine native: draw sample has no native loop; use --engine auto or python"
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
    m = DRAW(height=10, width=9, steps=3, hidden=16, embed=4, channels=channels, attention=attention, read_n=2, write_n=3)
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
