"""benchmarks/speed.py keeps working: its FLOP count and a tiny end-to-end run (numbers are
printed, never asserted: speed lives in benchmarks/, not in tests)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
import speed  # noqa: E402


def test_flops_per_image_at_the_paper_config_by_hand():
    f = speed.flops_per_image(speed.PAPER)
    # Per step, multiply-add = 2 FLOPs: encoder 2*(8+512)*1024, q 2*256*200, decoder 2*(100+256)*1024,
    # heads 2*256*(25+10), read bmm's 2*2*28*56 + 2*4*28*2, write bmm's 2*28*5*5 + 2*28*5*28.
    per_step = 2 * 520 * 1024 + 2 * 256 * 200 + 2 * 356 * 1024 + 2 * 256 * 35 + (2 * 2 * 28 * 56 + 2 * 4 * 28 * 2) + (
        2 * 28 * 25 + 2 * 28 * 5 * 28)
    assert f["forward"] == 64 * per_step
    assert f["training"] == 3 * f["forward"]
    assert round(f["training"] / 1e6, 1) == 370.6
    assert f["sampling"] == 64 * (2 * 356 * 1024 + 2 * 256 * 30 + 2 * 28 * 25 + 2 * 28 * 5 * 28)


def test_a_tiny_benchmark_run_writes_every_section(tmp_path):
    out = tmp_path / "r.json"
    cmd = [sys.executable, str(ROOT / "benchmarks" / "speed.py"), "--device", "cpu", "--quick", "--batch-sizes", "4",
           "--sample-sizes", "40", "--T", "2", "--hidden", "16", "--embed", "4", "--out", str(out)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    r = json.loads(out.read_text())
    assert r["config"]["glimpses"] == 2 and r["config"]["hidden"] == 16 and r["config"]["latent"] == 4
    assert r["baseline_max_relative_loss_difference"] < 1e-4
    assert set(r["training"]["drawcli"]) == {"4"} and set(r["training"]["baseline"]) == {"4"}
    assert {"drawcli", "baseline", "drawcli-every-step"} <= set(r["sampling"])
    assert set(r["sampling"]["drawcli"]) == {"4", "40"}
    for row in (r["training"]["drawcli"]["4"], r["sampling"]["drawcli"]["40"]):
        assert row["images_per_s"] > 0 and 0 < row["fraction_of_gemm_rate"] and row["peak_memory_mb"] > 0
    assert r["gemm"]["square_2048_gflops"] > 0
    assert all(s["gflops"] >= s["mm_gflops"] for s in r["gemm"]["training"]["4"]["shapes"])
    assert r["speedup"]["drawcli over baseline"]["training"]["4"] > 0
    assert "train  drawcli" in proc.stdout and "wrote" in proc.stdout
    b = r["budget"]["drawcli"]["4"]  # the step split into products (at the GEMM rate) and the rest
    assert b["products_ms"] > 0 and abs(b["products_ms"] + b["rest_ms"] - b["step_ms"]) < 1e-6 * b["step_ms"]
    base_ms = 4e3 / r["training"]["baseline"]["4"]["images_per_s"]
    assert abs(b["ceiling_over_baseline"] - base_ms / b["products_ms"]) < 1e-9 * b["ceiling_over_baseline"]
    assert abs(b["rest_ms_at_bar"] - (base_ms / 3.5 - b["products_ms"])) < 1e-6 * base_ms
    assert "budget drawcli" in proc.stdout
    plain = r["no_attention"]  # the model without attention: its engines side by side
    assert plain["config"]["attention"] is False and plain["config"]["batch"] == 128
    assert plain["drawcli-python"]["images_per_s"] > 0 and plain["baseline"]["images_per_s"] > 0
    assert "no-attention drawcli-python" in proc.stdout
    if "drawcli-native" in plain:
        assert plain["speedup"]["drawcli-native over drawcli-python"] > 0
        assert plain["evaluation"]["speedup"]["drawcli-native over drawcli-python"] > 0
    if r["native_bf16"]:  # bfloat16 is timed where the CPU multiplies it natively
        assert set(r["training"]["drawcli-bf16"]) == {"4"} and r["gemm"]["bfloat16"]["training"]["4"]["gflops"] > 0
        assert r["speedup"]["drawcli-bf16 over drawcli"]["sampling"]["40"] > 0


def test_threads_mode_measures_one_two_and_the_default_quiet_and_busy(tmp_path):
    out = tmp_path / "t.json"
    cmd = [sys.executable, str(ROOT / "benchmarks" / "speed.py"), "--device", "cpu", "--threads-mode", "--steps", "2",
           "--batch-sizes", "8", "--T", "2", "--hidden", "16", "--embed", "4", "--out", str(out)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    r = json.loads(out.read_text())["threads_mode"]
    assert set(r) == {"as is", "one core busy"}
    for row in r.values():
        assert {row[k]["threads"] for k in ("threads 1", "threads 2")} == {1, 2}
        assert row["default"]["threads"] >= 1 and row["default_over_best"] > 0 and row["default_reason"]


def test_isa_mode_runs_each_class_in_its_own_process_and_tabulates_them(tmp_path):
    """--isa: every row once per CPU class, in a child process with the caps in its environment; the
    parent keeps each round and the medians (numbers printed, never asserted)."""
    out = tmp_path / "isa.json"
    cmd = [sys.executable, str(ROOT / "benchmarks" / "speed.py"), "--device", "cpu", "--quick", "--batch-sizes", "4",
           "--sample-sizes", "", "--T", "2", "--hidden", "16", "--embed", "4", "--eval-rows", "16", "--no-colour",
           "--isa", "native", "--rounds", "1", "--out", str(out)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    r = json.loads(out.read_text())["isa_classes"]
    assert list(r) == ["native"] and r["native"]["env"] == {} and len(r["native"]["runs"]) == 1
    assert r["native"]["median"]["train drawcli B=4"] > 0 and "no_attention drawcli-python" in r["native"]["median"]
    assert "=== round 1/1, class native: no caps" in proc.stdout and "[native]" in proc.stdout
    bad = subprocess.run([*cmd[:-4], "--isa", "pentium", "--out", str(out)], capture_output=True, text=True, timeout=60)
    assert bad.returncode != 0 and "unknown class 'pentium'" in bad.stderr
