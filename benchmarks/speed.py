"""How fast DRAW trains and samples here, and how close that is to the hardware.

    python benchmarks/speed.py                 # paper config, CPU or CUDA (auto)
    python benchmarks/speed.py --quick         # smoke test: fewer repeats
    python benchmarks/speed.py --device cpu --batch-sizes 64,128 --steps 10 --out my.json

In one process, on one device:
1. the float32 matrix-multiply rate on the model's own GEMM shapes (every distinct shape a
   training step or a sampling step runs, weighted by how often it runs);
2. the model's FLOPs per image, counted from its dimensions (see ``flops_per_image``);
3. training steps (forward, backward, gradient clipping, Adam; after warm-up, median of
   several) and sampling from the prior, for drawcli's DRAW (the engine `draw train` runs here:
   native where its library loads, else python) and for the plain eager baseline: the same
   module with engine="reference" (drawcli/model/draw.py's loops, autograd for every gradient,
   torch's default Adam); images/s, achieved GFLOP/s, the fraction of the measured GEMM rate,
   peak memory, and the speedup over the baseline. Sampling is `draw sample`'s work (final
   canvases); drawcli-every-step is `draw animate`'s (every step's canvas kept). On CPUs with
   oneDNN, drawcli-mm is drawcli with its packed per-step products switched off (torch.mm).
   drawcli-bf16 is drawcli with train.precision bfloat16 (the LSTM products in bfloat16), timed
   where the device multiplies bfloat16 natively (or with --bf16); its GEMM rate is the bfloat16
   rate on the same shapes, and the float32 one for everything else; drawcli-bf16-python is
   drawcli-bf16 with the Python engine;
4. evaluation (`draw evaluate`'s work: forward passes without gradients, with the log ratio of
   the importance-weighted bound, float32, --eval-rows image copies per pass: K = 100 samples of
   8 images at the default 800): the native engine, the Python engine and the baseline, in
   image-passes/s;
5. colour training (sample_configs/colour_quick.yaml's model: 32 x 32 x 3, T = 16, read 4, write
   6, batch 32, in its precision auto): the native engine, the Python engine and the baseline;
6. the model without attention at the paper's config (T 64, LSTM 256, z 100, batch 128; eq 17-18):
   training by the native engine, the Python engine and the baseline, then evaluation by the two
   engines, interleaved (``plain_rows``; --no-plain skips them);
7. with --isa CLASSES (e.g. --isa native,avx512_core,avx2): everything above once per CPU class, each in
   its own process with the instruction set capped (oneDNN's ONEDNN_MAX_CPU_ISA, ATen's
   ATEN_CPU_CAPABILITY, the native library built for that -march and without AMX), the classes
   interleaved round by round (--rounds); one table per class (``isa_mode``);
8. with --threads-mode: training at batch 128 with 1 thread, 2 threads and drawcli's default
   policy (drawcli.core.device.thread_policy), on a quiet machine and with one core kept busy by a
   spinning process, interleaved (see ``threads_mode``).
Results go to a JSON file (default benchmarks/results-<device>.json).

Peak memory. CUDA: torch.cuda.max_memory_allocated (reset before each phase). CPU: the
process's peak resident set size from resource.getrusage (ru_maxrss), which on Linux is reset
before each phase by writing 5 to /proc/self/clear_refs, so each number is the peak RSS of the
whole process (Python, torch, data, model, optimizer, buffers) during that phase. Where that
reset is unavailable the number is the peak since the process started, and the JSON says so.
(tracemalloc does not see torch's allocations, and ru_maxrss differences between phases are
not per-phase peaks.)

CPU timings on a shared machine: other processes stealing a core slow OpenMP-parallel code
far more than their share. Each result records the load average and the ratio of process CPU
time to wall time (about the thread count when the machine was ours); compare runs only at a
similar load.
"""

from __future__ import annotations

import argparse
import ctypes
import copy
import gc
import json
import os
import platform
import resource
import statistics
import sys
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))  # run from a checkout without installing

from drawcli.model import native_build as native  # noqa: E402
from drawcli.core.device import autocast, native_bf16, thread_policy  # noqa: E402
from drawcli.model import DRAW, Engine  # noqa: E402
from drawcli.model import native_loop, python_loop  # noqa: E402
from drawcli.model.packed_gemm import packed_gemm_works  # noqa: E402
from drawcli.training.loop import make_adam  # noqa: E402

PAPER = dict(height=28, width=28, glimpses=64, hidden=256, latent=100, attention=True, read_n=2, write_n=5)
# sample_configs/colour_quick.yaml's model, at its 32 x 32 image size and batch
COLOUR = dict(height=32, width=32, channels=3, glimpses=16, hidden=256, latent=20, attention=True, read_n=4, write_n=6)
COLOUR_BATCH = 32
# the model without attention (Table 2's 87.40-nat row: the paper's config, --T/--hidden/--embed), at batch 128
PLAIN_BATCH = 128
ADAM = dict(lr=1e-3, betas=(0.5, 0.999))  # drawcli's train defaults
GRAD_CLIP = 5.0


# ----------------------------------------------------------------------------- FLOP counting
def step_gemms(cfg: dict, batch: int) -> dict[str, list[tuple[int, int, int, int]]]:
    """The matrix products of one time step, as (m, k, n, count) with FLOPs = 2 m k n count.

    forward: encoder LSTM over [r_t, h^dec_{t-1}, h^enc_{t-1}], q (mu, log sigma) over h^enc_t,
    decoder LSTM over [z_t, h^dec_{t-1}], write head and attention heads over h^dec_t.
    Without attention the read is [x, x_hat] (2 H W inputs to the encoder) and the write
    head emits H W values.
    """
    hd, z = cfg["hidden"], cfg["latent"]
    pixels = cfg["height"] * cfg["width"]
    read = 2 * cfg["read_n"] ** 2 if cfg["attention"] else 2 * pixels
    write = cfg["write_n"] ** 2 if cfg["attention"] else pixels
    heads = write + (10 if cfg["attention"] else 0)
    return {
        "encoder": [(batch, read + 2 * hd, 4 * hd, 1)],
        "q": [(batch, hd, 2 * z, 1)],
        "decoder": [(batch, z + hd, 4 * hd, 1)],
        "heads": [(batch, hd, heads, 1)],
    }


def attention_flops(cfg: dict) -> tuple[int, int]:
    """Per image and step: (read, write) batched-matmul FLOPs of eq 27 and eq 29."""
    if not cfg["attention"]:
        return 0, 0
    H, W, nr, nw = cfg["height"], cfg["width"], cfg["read_n"], cfg["write_n"]
    read = 2 * nr * H * (2 * W) + 2 * (2 * nr) * W * nr  # F_Y [x | x_hat], then (.) F_X^T
    write = 2 * H * nw * nw + 2 * H * nw * W  # F_Y^T w, then (.) F_X
    return read, write


def flops_per_image(cfg: dict) -> dict[str, float]:
    """FLOPs per image, counted from the dimensions (multiply-add = 2 FLOPs).

    forward = T x (the step's GEMMs + the attention bmm's); bias adds, nonlinearities, the
    filterbank and the losses are elementwise and not counted (a few % at the paper config).
    training = 3 x forward: backward computes, for every product, the input gradient and the
    weight gradient, each as many FLOPs as the forward product (also for the attention bmm's).
    sampling = T x (decoder LSTM + write head + write attention head + write bmm's).
    These are the model's nominal FLOPs, the same for every implementation. Without attention,
    drawcli computes x's (constant) share of the encoder input once per sequence instead of
    once per step, so it does fewer FLOPs than counted and its "fraction of the GEMM rate"
    overstates the hardware use (with attention the two agree).
    """
    gemms = step_gemms(cfg, 1)
    per_step = {k: sum(2 * m * kk * n * c for m, kk, n, c in v) for k, v in gemms.items()}
    read_bmm, write_bmm = attention_flops(cfg)
    forward = cfg["glimpses"] * (sum(per_step.values()) + read_bmm + write_bmm)
    write = cfg["write_n"] ** 2 if cfg["attention"] else cfg["height"] * cfg["width"]
    sample_heads = 2 * cfg["hidden"] * (write + (5 if cfg["attention"] else 0))
    sampling = cfg["glimpses"] * (per_step["decoder"] + sample_heads + write_bmm)
    return {"forward": float(forward), "training": 3.0 * forward, "sampling": float(sampling),
            "forward_per_step": {k: float(v) for k, v in per_step.items()},
            "attention_bmm_per_step": {"read": float(read_bmm), "write": float(write_bmm)}}


# ----------------------------------------------------------------------------- timing helpers
def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn, device, repeats: int, warmup: int) -> dict:
    """Wall and process-CPU seconds per call: median, min, max over ``repeats`` after ``warmup``."""
    for _ in range(warmup):
        fn()
    sync(device)
    walls, cpus = [], []
    for _ in range(repeats):
        c0, t0 = time.process_time(), time.perf_counter()
        fn()
        sync(device)
        walls.append(time.perf_counter() - t0)
        cpus.append(time.process_time() - c0)
    return {"median_s": statistics.median(walls), "min_s": min(walls), "max_s": max(walls),
            "cpu_over_wall": statistics.median(c / w for c, w in zip(cpus, walls)), "repeats": repeats}


class PeakMemory:
    """Peak memory of a phase: CUDA allocator peak, or process peak RSS on CPU (see module doc)."""

    def __init__(self, device):
        self.device = device
        self.per_phase = True

    def reset(self):
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
            return
        try:
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")  # resets the peak RSS (VmHWM, ru_maxrss) to the current RSS
        except OSError:
            self.per_phase = False

    def peak_mb(self) -> float:
        if self.device.type == "cuda":
            return torch.cuda.max_memory_allocated(self.device) / 2**20
        scale = 1 if sys.platform == "darwin" else 1024  # bytes on macOS, KiB on Linux
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale / 2**20


def best_time(fn, device, repeats: int) -> float:
    """Seconds per call: ``repeats`` bursts of ~30 ms, the fastest burst counts."""
    t = timed(fn, device, 3, 2)["median_s"]
    calls = max(1, min(2000, int(0.03 / max(t, 1e-7))))
    per_call = []
    for _ in range(repeats):
        sync(device)
        t0 = time.perf_counter()
        for _ in range(calls):
            fn()
        sync(device)
        per_call.append((time.perf_counter() - t0) / calls)
    return min(per_call)


def packed_available(device) -> bool:
    return device.type == "cpu" and packed_gemm_works()


def gemm_rate(shapes: list[tuple[int, int, int, int]], device, repeats: int, dtype=torch.float32) -> dict:
    """The rate on exactly these products in ``dtype``, FLOP-weighted: sum(FLOPs) / sum(time).

    Each distinct (m, k, n) runs as an nn.Linear-style product x (m, k) @ W^T (k, n), in
    ``repeats`` bursts of ~30 ms; the fastest burst counts. Two kernels are timed: torch.mm into a
    preallocated output, and on CPU also oneDNN's linear with the weight packed beforehand (what
    drawcli's loop uses for the per-step LSTM products). The machine's rate for a shape is the
    faster of the two. This is the machine's capability (best of several, unlike the model
    timings, which are medians), so interference from other processes lowers the achieved
    fraction rather than raising it."""
    packed = packed_available(device) and packed_gemm_works(dtype)
    total_flops, total_time, mm_time, rows = 0.0, 0.0, 0.0, []
    for m, k, n, count in shapes:
        a = torch.randn(m, k, device=device, dtype=dtype)
        w = torch.randn(n, k, device=device, dtype=dtype)
        out = torch.empty(m, n, device=device, dtype=dtype)
        t_mm = best_time(lambda: torch.mm(a, w.t(), out=out), device, repeats)
        flops = 2.0 * m * k * n
        row = {"m": m, "k": k, "n": n, "count": count, "mm_gflops": flops / t_mm / 1e9}
        t = t_mm
        if packed:
            pw = torch.ops.mkldnn._reorder_linear_weight(w, m)
            t_packed = best_time(lambda: torch.ops.mkldnn._linear_pointwise(a, pw, None, "none", [], ""), device, repeats)
            row["packed_gflops"] = flops / t_packed / 1e9
            t = min(t, t_packed)
        row["gflops"] = flops / t / 1e9
        rows.append(row)
        total_flops += flops * count
        total_time += t * count
        mm_time += t_mm * count
    return {"gflops": total_flops / total_time / 1e9, "mm_gflops": total_flops / mm_time / 1e9, "shapes": rows}


def training_gemms(cfg: dict, batch: int) -> list[tuple[int, int, int, int]]:
    """Every product of one training step: per time step the forward products, the input-
    gradient products (same FLOPs), and the weight gradients as one (T * batch)-row product
    each (as the fast path computes them)."""
    T, out = cfg["glimpses"], []
    for (m, k, n, _), in step_gemms(cfg, batch).values():
        out.append((m, k, n, T))  # forward
        out.append((m, n, k, T))  # gradient w.r.t. the inputs
        out.append((n, T * m, k, 1))  # weight gradient, one long product
    return out


def sampling_gemms(cfg: dict, n: int) -> list[tuple[int, int, int, int]]:
    (m, k, nn, _), = step_gemms(cfg, n)["decoder"]
    write = cfg["write_n"] ** 2 if cfg["attention"] else cfg["height"] * cfg["width"]
    return [(m, k, nn, cfg["glimpses"]), (n, cfg["hidden"], write + (5 if cfg["attention"] else 0), cfg["glimpses"])]


# ----------------------------------------------------------------------------- the runs
def make_models(cfg, device, seed=0):
    """drawcli's model and a copy with the same weights for the baseline (engine "reference")."""
    torch.manual_seed(seed)
    fast = DRAW(**cfg).to(device)
    return fast, copy.deepcopy(fast)


def engine_of(impl: str, device) -> Engine:
    """The engine each implementation runs: the baseline draw.py's loops; -python the Python
    engine; -mm drawcli's engine without oneDNN's packed products; the others what `draw train`
    runs here (native where the library loaded and the device is the CPU)."""
    if impl == "baseline":
        return Engine("reference")
    fast = "native" if device.type == "cpu" and native.load() else "python"
    if impl.endswith("-python"):
        return Engine("python")
    return Engine(fast, packed_gemm=not impl.endswith("-mm"))


def images(cfg, batch, device, seed):
    g = torch.Generator().manual_seed(seed)
    shape = (batch, cfg.get("channels", 1), cfg["height"], cfg["width"]) if cfg.get("channels", 1) > 1 else (
        batch, cfg["height"], cfg["width"])
    return torch.rand(*shape, generator=g).bernoulli().to(device)


def train_step_fn(model, cfg, batch, device, precision="float32", engine: Engine = Engine()):
    """One training step as drawcli's train loop runs it: forward (in ``precision``, by
    ``engine``), backward, clip, Adam (drawcli's make_adam: the fused kernel where torch has one;
    the baseline: torch's default Adam)."""
    x = images(cfg, batch, device, batch)
    if engine.name != "reference":
        opt = make_adam(model.parameters(), **ADAM)
    else:
        opt = torch.optim.Adam(model.parameters(), **ADAM)
    params = list(model.parameters())

    def step():
        with autocast(device, precision):
            out = model(x, engine=engine)
        loss = out.loss.mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, GRAD_CLIP)
        opt.step()

    return step


def sample_fn(model, n, device, every_step=False, precision="float32", engine: Engine = Engine()):
    """`draw sample`'s work: n samples, final canvases only (every_step=True: `draw animate`'s,
    every step's canvas kept)."""
    g = torch.Generator(device=device).manual_seed(n)
    engine = Engine("python", engine.packed_gemm) if engine.name == "native" else engine  # no native sampling

    def call():
        with autocast(device, precision):
            return model.generate(n, generator=g, every_step=every_step, engine=engine)

    return call


def evaluate_fn(model, cfg, rows, device, precision="float32", engine: Engine = Engine()):
    """`draw evaluate`'s work: a forward pass without gradients over ``rows`` image copies, with
    the log ratio of the importance-weighted bound."""
    x = images(cfg, rows, device, rows)
    g = torch.Generator(device=device).manual_seed(rows)

    @torch.no_grad()
    def call():
        with autocast(device, precision):
            return model(x, log_ratio=True, generator=g, engine=engine)

    return call


def release_memory(models):
    """Drop drawcli's reusable step buffers and hand freed heap back to the OS, so the next
    phase's peak RSS is its own."""
    for m in models:
        for store in (python_loop.TRAINING, python_loop.EVALUATION, native_loop.TRAINING, native_loop.EVALUATION):
            store.pop(m, None)
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def measure(fns: dict, device, repeats: dict, warmup: int, mem: PeakMemory, models) -> dict:
    """Per implementation: a memory phase alone (warm-up calls, peak memory), then all
    implementations timed interleaved, call by call, so that load from other processes hits
    them alike and the speedup ratio stays fair."""
    out = {}
    for name, fn in fns.items():
        release_memory(models)
        mem.reset()
        for _ in range(max(1, warmup)):
            fn()
        sync(device)
        out[name] = {"peak_memory_mb": mem.peak_mb(), "walls": [], "cpus": []}
    for name, fn in fns.items():  # the memory phases dropped drawcli's buffers: rebuild them untimed
        fn()
    for i in range(max(repeats.values())):
        for name, fn in fns.items():
            if i >= repeats[name]:
                continue
            sync(device)
            c0, t0 = time.process_time(), time.perf_counter()
            fn()
            sync(device)
            out[name]["walls"].append(time.perf_counter() - t0)
            out[name]["cpus"].append(time.process_time() - c0)
    for r in out.values():
        walls, cpus = r.pop("walls"), r.pop("cpus")
        r.update(median_s=statistics.median(walls), min_s=min(walls), max_s=max(walls), repeats=len(walls),
                 cpu_over_wall=statistics.median(c / w for c, w in zip(cpus, walls)))
    return out


def summarise(r: dict, images: int, flops_per_img: float, rate: float) -> dict:
    ips = images / r["median_s"]
    gflops = ips * flops_per_img / 1e9
    return dict(r, images_per_s=ips, gflops=gflops, fraction_of_gemm_rate=gflops / rate)


def check_equal(cfg, device) -> float:
    """Sanity check before timing: both implementations give the same loss (float32)."""
    fast, base = make_models(dict(cfg), device, seed=1)
    x = torch.rand(4, cfg["height"], cfg["width"], generator=torch.Generator().manual_seed(0)).bernoulli().to(device)
    with torch.no_grad():
        a = fast(x, generator=torch.Generator(device=device).manual_seed(0), engine=engine_of("drawcli", device)).loss
        b = base(x, generator=torch.Generator(device=device).manual_seed(0), engine="reference").loss
    return float(((a - b).abs() / b.abs()).max())


def resolve_device(spec: str) -> torch.device:
    if spec == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if spec == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: CUDA is not available")
    return torch.device(spec)


def device_name(device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip() + f" ({os.cpu_count()} logical CPUs)"
    except OSError:
        pass
    return platform.processor() or "cpu"


def busy_core():
    """A process that keeps one core busy (a spin loop) until killed: the 'busy machine'."""
    import subprocess

    return subprocess.Popen([sys.executable, "-c", "while True: pass"])


def threads_mode(cfg, device, batch: int, steps: int, say) -> dict:
    """Training img/s at one batch size with 1 thread, 2 threads and drawcli's default policy,
    first on the machine as it is, then with one core kept busy by a spinning process; within each
    condition the three are timed interleaved, step by step. The default is what `draw train`
    would pick at that moment (thread_policy measures the idle cores itself)."""
    out = {}
    precision = "bfloat16" if native_bf16(device) else "float32"
    for condition in ("as is", "one core busy"):
        spinner = busy_core() if condition == "one core busy" else None
        try:
            time.sleep(1.0 if spinner else 0.0)
            default, why = thread_policy(None, device)
            counts = {"threads 1": 1, "threads 2": 2, "default": default or torch.get_num_threads()}
            fast, _ = make_models(cfg, device)
            step = train_step_fn(fast, cfg, batch, device, precision, engine_of("drawcli", device))

            def with_threads(n):
                def call():
                    torch.set_num_threads(n)
                    step()
                return call

            fns = {name: with_threads(n) for name, n in counts.items()}
            r = measure(fns, device, {k: steps for k in fns}, 1, PeakMemory(device), [fast])
            row = {name: {"threads": counts[name], "images_per_s": batch / v["median_s"]} for name, v in r.items()}
            row["default_reason"] = why
            best = max(row["threads 1"]["images_per_s"], row["threads 2"]["images_per_s"])
            row["default_over_best"] = row["default"]["images_per_s"] / best
            out[condition] = row
            say(f"threads ({condition}, {precision}, B={batch}): " + ", ".join(
                f"{k} {v['images_per_s']:.0f} img/s" for k, v in row.items() if isinstance(v, dict))
                + f"; default = {counts['default']} thread(s) ({why}), {100 * row['default_over_best']:.0f}% of the better")
        finally:
            if spinner is not None:
                spinner.kill()
                spinner.wait()
    return out


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    ap.add_argument("--batch-sizes", default="64,128,256", help="training and sampling batch sizes")
    ap.add_argument("--sample-sizes", default="1000", help="extra sampling batch sizes")
    ap.add_argument("--steps", type=int, default=10, help="timed training steps per batch size (after warm-up)")
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--baseline-steps", type=int, default=None, help="default: steps // 2, at least 2")
    ap.add_argument("--no-baseline", action="store_true", help="skip the baseline (no speedup ratios)")
    ap.add_argument("--bf16", action=argparse.BooleanOptionalAction, default=None,
                    help="time drawcli-bf16 too (default: where the device multiplies bfloat16 natively)")
    ap.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's choice)")
    ap.add_argument("--threads-mode", action="store_true",
                    help="only measure the thread policy: 1 vs 2 threads vs the default, quiet and with one core busy")
    ap.add_argument("--quick", action="store_true", help="smoke test: 2 timed steps, 1 warm-up")
    for key, flag in (("glimpses", "--T"), ("hidden", "--hidden"), ("latent", "--embed"), ("read_n", "--read-n"), ("write_n", "--write-n")):
        ap.add_argument(flag, dest="cfg_" + key, type=int, default=PAPER[key])
    ap.add_argument("--no-attention", action="store_true")
    ap.add_argument("--eval-rows", type=int, default=800, help="image copies per evaluation pass (0: no evaluation rows)")
    ap.add_argument("--no-colour", action="store_true", help="skip the colour training rows")
    ap.add_argument("--no-plain", action="store_true", help="skip the rows of the model without attention")
    ap.add_argument("--only-plain", action="store_true", help="only the rows of the model without attention")
    ap.add_argument("--isa", default=None, help=f"CPU classes to emulate, comma-separated: {', '.join(ISA_CLASSES)}")
    ap.add_argument("--rounds", type=int, default=2, help="with --isa: interleaved rounds of every class")
    ap.add_argument("--out", default=None, help="JSON path (default benchmarks/results-<device>.json)")
    args = ap.parse_args(argv)
    if args.isa:
        return isa_mode(args, list(sys.argv[1:] if argv is None else argv))

    device = resolve_device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.quick:
        args.steps, args.warmup = 2, 1
    base_steps = args.baseline_steps or max(2, args.steps // 2)
    cfg = dict(PAPER, **{k[4:]: v for k, v in vars(args).items() if k.startswith("cfg_")})
    cfg["attention"] = not args.no_attention
    batches = [int(b) for b in args.batch_sizes.split(",") if b]
    samples = batches + [int(b) for b in args.sample_sizes.split(",") if b and int(b) not in batches]
    gemm_repeats = 3 if args.quick else 5
    flops = flops_per_image(cfg)
    mem = PeakMemory(device)
    bf16 = args.bf16 if args.bf16 is not None else bool(native_bf16(device))
    args.low_precision = bf16  # the precision auto of the colour and no-attention rows

    def say(*a):
        print(*a, flush=True)

    result = {
        "device": str(device), "device_name": device_name(device), "cpu_flags": cpu_flags(), "torch": torch.__version__,
        "threads": torch.get_num_threads() if device.type == "cpu" else None,
        "native_bf16": native_bf16(device),
        "config": cfg, "adam": ADAM, "grad_clip": GRAD_CLIP, "load_average_start": list(os.getloadavg()),
        "env": {k: os.environ[k] for k in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "THP_MEM_ALLOC_ENABLE") if k in os.environ},
        "flops_per_image": flops, "argv": sys.argv[1:],
    }
    say(f"device {device} ({result['device_name']}), torch {torch.__version__}, threads {result['threads']}, "
        f"load {result['load_average_start'][0]:.2f}")
    say(f"CPU flags for matrix units: {result['cpu_flags'] or 'none'}; native bfloat16: {result['native_bf16'] or 'no'}")
    loaded = device.type == "cpu" and native.load(say=say)
    result["native_loop"] = {"used": loaded, "why_not": native.unavailable_reason()}
    say("drawcli's engine: " + ("native (drawcli/model/csrc/draw_loop.cpp)" if loaded else
                                f"python ({native.unavailable_reason() or device.type})"))
    if args.threads_mode:
        b = batches[0] if len(batches) == 1 else 128
        result["threads_mode"] = threads_mode(cfg, device, b, args.steps, say)
        return write_result(result, args, device, say)
    if args.only_plain:
        result["no_attention"] = plain_rows(dict(cfg, attention=False), device, args, mem, loaded, say)
        return write_result(result, args, device, say)
    say(f"config {cfg}")
    say(f"FLOPs per image: training {flops['training'] / 1e6:.1f} M (3 x forward {flops['forward'] / 1e6:.1f} M), "
        f"sampling {flops['sampling'] / 1e6:.1f} M")
    err = check_equal(cfg, device)
    result["baseline_max_relative_loss_difference"] = err
    say(f"fast path vs baseline, same weights and noise: max relative loss difference {err:.1e}")

    # 1. matrix-multiply rate on the model's own shapes
    big = gemm_rate([(2048, 2048, 2048, 1)], device, gemm_repeats)["gflops"]
    result["gemm"] = {"square_2048_gflops": big, "training": {}, "sampling": {}}
    for b in batches:
        result["gemm"]["training"][b] = gemm_rate(training_gemms(cfg, b), device, gemm_repeats)
    for n in samples:
        result["gemm"]["sampling"][n] = gemm_rate(sampling_gemms(cfg, n), device, gemm_repeats)

    def rates(r):
        return f"{r['gflops']:.0f}" + (f" (torch.mm {r['mm_gflops']:.0f})" if r["gflops"] != r["mm_gflops"] else "")

    say(f"float32 GEMM: 2048^3 {big:.0f} GFLOP/s; model shapes, best kernel per shape, training " +
        ", ".join(f"B={b}: {rates(result['gemm']['training'][b])}" for b in batches) + "; sampling " +
        ", ".join(f"n={n}: {rates(result['gemm']['sampling'][n])}" for n in samples) + " GFLOP/s")
    if bf16:
        big16 = gemm_rate([(2048, 2048, 2048, 1)], device, gemm_repeats, torch.bfloat16)["gflops"]
        g16 = result["gemm"]["bfloat16"] = {"square_2048_gflops": big16, "training": {}, "sampling": {}}
        for b in batches:
            g16["training"][b] = mixed_rate(cfg, b, device, gemm_repeats, result["gemm"]["training"][b], "training")
        for n in samples:
            g16["sampling"][n] = mixed_rate(cfg, n, device, gemm_repeats, result["gemm"]["sampling"][n], "sampling")
        say(f"bfloat16 GEMM: 2048^3 {big16:.0f} GFLOP/s; model shapes with the LSTM products in bfloat16 and the rest "
            "in float32 (what drawcli-bf16 runs), training " +
            ", ".join(f"B={b}: {g16['training'][b]['gflops']:.0f}" for b in batches) + "; sampling " +
            ", ".join(f"n={n}: {g16['sampling'][n]['gflops']:.0f}" for n in samples) + " GFLOP/s")

    # 2. training and sampling: drawcli's DRAW and the baseline, interleaved
    result["training"], result["sampling"] = {}, {}
    # drawcli-mm: drawcli with its oneDNN packed products off (torch.mm), on CPUs that have them.
    # drawcli-bf16-python: drawcli-bf16 with the native training loop off (the Python engine).
    variants = ((["drawcli-bf16"] + (["drawcli-bf16-python"] if loaded else [])) if bf16 else []) + (
        ["drawcli-mm"] if packed_available(device) else [])
    impls = ["drawcli", *variants] + ([] if args.no_baseline else ["baseline"])
    steps = {"drawcli": args.steps, "drawcli-bf16": args.steps, "drawcli-mm": base_steps, "baseline": base_steps,
             "drawcli-bf16-python": base_steps}

    def report(kind, impl, size, r):
        say(f"{kind:6s} {impl:18s} {'B' if kind == 'train' else 'n'}={size:<5d} {r['images_per_s']:7.1f} img/s  "
            f"{r['gflops']:6.1f} GFLOP/s  {100 * r['fraction_of_gemm_rate']:5.1f}% of GEMM rate  "
            f"peak {r['peak_memory_mb']:.0f} MB  (median of {r['repeats']}, best {size / r['min_s']:.0f} img/s, "
            f"cpu/wall {r['cpu_over_wall']:.2f})")

    def gemm_of(impl, kind, size):
        table = result["gemm"]["bfloat16"] if "-bf16" in impl else result["gemm"]
        return table[kind][size]["gflops"]

    def make_fns(make, models, **kw):
        """One model per implementation, all with the same weights: each keeps its own step buffers
        (the fast engines keep one set per model, made for its precision and loop), as a training
        process would; sharing one model would rebuild them at every interleaved call."""
        fns = {}
        for i in impls:
            if i not in models:
                models[i] = copy.deepcopy(models["drawcli"])
            fns[i] = make(models[i], precision="bfloat16" if "-bf16" in i else "float32", engine=engine_of(i, device), **kw)
        return fns

    for b in batches:
        fast, base = make_models(cfg, device)
        models = {"drawcli": fast, "baseline": base}
        fns = make_fns(lambda m, precision, engine: train_step_fn(m, cfg, b, device, precision, engine), models)
        drawcli_models = [m for name, m in models.items() if name != "baseline"]
        for impl, r in measure(fns, device, steps, args.warmup, mem, drawcli_models).items():
            r = summarise(r, b, flops["training"], gemm_of(impl, "training", b))
            result["training"].setdefault(impl, {})[b] = r
            report("train", impl, b, r)
        del fast, base, fns, models, drawcli_models
    fast, base = make_models(cfg, device)
    for n in samples:
        fns = make_fns(lambda m, precision, engine: sample_fn(m, n, device, precision=precision, engine=engine),
                       {"drawcli": fast, "baseline": base})
        fns["drawcli-every-step"] = sample_fn(fast, n, device, every_step=True, engine=engine_of("drawcli", device))
        reps = {"drawcli": 3 if args.quick else 7, "drawcli-bf16": 3 if args.quick else 7, "baseline": 2 if args.quick else 3}
        reps.update({v: reps["baseline"] for v in fns if v not in reps})
        for impl, r in measure(fns, device, reps, 1, mem, [fast]).items():
            r = summarise(r, n, flops["sampling"], gemm_of(impl, "sampling", n))
            result["sampling"].setdefault(impl, {})[n] = r
            report("sample", impl, n, r)
    del fast, base, fns
    if args.eval_rows:
        result["evaluation"] = evaluation_rows(cfg, device, args.eval_rows, args, mem, loaded, say)
    if not args.no_colour:
        result["colour"] = colour_rows(device, args, mem, loaded, say)
    if not args.no_plain:
        result["no_attention"] = plain_rows(dict(cfg, attention=False), device, args, mem, loaded, say)

    def ratio(kind, a, b):
        return {size: result[kind][a][size]["images_per_s"] / result[kind][b][size]["images_per_s"]
                for size in result[kind][a]}

    result["speedup"] = {}
    pairs = [("drawcli", "baseline"), ("drawcli-bf16", "drawcli"), ("drawcli-bf16", "baseline"),
             ("drawcli-bf16", "drawcli-bf16-python")]
    for a, b in pairs:
        if a in impls and b in impls:
            key = f"{a} over {b}"
            result["speedup"][key] = {"training": ratio("training", a, b), "sampling": ratio("sampling", a, b)}
            say(f"speedup {key}: training " + ", ".join(f"B={s} {v:.2f}x" for s, v in result["speedup"][key]["training"].items())
                + "; sampling " + ", ".join(f"n={s} {v:.2f}x" for s, v in result["speedup"][key]["sampling"].items()))
    if "baseline" in impls:
        result["budget"] = budget(result, impls, flops["training"], gemm_of, say)
    result["memory_note"] = (
        "CUDA: torch.cuda.max_memory_allocated per phase" if device.type == "cuda" else
        "CPU: peak RSS of the whole process (resource.getrusage ru_maxrss) "
        + ("reset per phase via /proc/self/clear_refs" if mem.per_phase else "since process start (no per-phase reset)"))
    return write_result(result, args, device, say)


def evaluation_rows(cfg, device, rows: int, args, mem, loaded: bool, say) -> dict:
    """`draw evaluate`'s forward passes (float32, no gradients, with the log ratio) by the native
    engine, the Python engine and the baseline, interleaved: image-passes/s and the ratios."""
    impls = engine_models(cfg, device, loaded, args)
    fns = {name: evaluate_fn(m, cfg, rows, device, engine=e) for name, (m, e) in impls.items()}
    reps = {name: (2 if args.quick else 5) if name == "baseline" else (3 if args.quick else 9) for name in fns}
    out = {}
    for name, r in measure(fns, device, reps, 1, mem, [m for m, _ in impls.values()]).items():
        r["image_passes_per_s"] = rows / r["median_s"]
        out[name] = r
        say(f"evaluate {name:16s} rows={rows:<5d} {r['image_passes_per_s']:7.1f} image-passes/s  peak {r['peak_memory_mb']:.0f} MB  "
            f"(median of {r['repeats']}, cpu/wall {r['cpu_over_wall']:.2f})")
    out["speedup"] = engine_speedups(out, "image_passes_per_s", "evaluate", say)
    return out


def engine_models(cfg, device, loaded: bool, args) -> dict:
    """Each implementation with its own copy of one model: the Python engine, the native engine
    (when its library loaded) and the plain baseline (unless --no-baseline)."""
    fast, base = make_models(cfg, device)
    impls = {"drawcli-python": (copy.deepcopy(fast), Engine("python"))}
    if loaded:
        impls["drawcli-native"] = (fast, Engine("native"))
    if not args.no_baseline:
        impls["baseline"] = (base, Engine("reference"))
    return impls


def engine_speedups(out: dict, rate: str, what: str, say) -> dict:
    """Native over Python, and each over the baseline, by ``rate``; each said in one line."""
    pairs = (("drawcli-native", "drawcli-python"), ("drawcli-native", "baseline"), ("drawcli-python", "baseline"))
    speedups = {f"{a} over {b}": out[a][rate] / out[b][rate] for a, b in pairs if a in out and b in out}
    for key, v in speedups.items():
        say(f"speedup {what} {key}: {v:.2f}x")
    return speedups


def colour_rows(device, args, mem, loaded: bool, say) -> dict:
    """Training steps of sample_configs/colour_quick.yaml's model at its batch and precision
    (auto: bfloat16 where the device multiplies it natively, or as --bf16 says) by the native engine,
    the Python engine and the baseline, interleaved."""
    precision = "bfloat16" if args.low_precision else "float32"
    impls = engine_models(COLOUR, device, loaded, args)
    fns = {name: train_step_fn(m, COLOUR, COLOUR_BATCH, device, precision, e) for name, (m, e) in impls.items()}
    reps = {name: max(2, args.steps // 2) if name == "baseline" else args.steps for name in fns}
    out = {"config": dict(COLOUR, batch=COLOUR_BATCH), "precision": precision}
    for name, r in measure(fns, device, reps, args.warmup, mem, [m for m, _ in impls.values()]).items():
        r["images_per_s"] = COLOUR_BATCH / r["median_s"]
        out[name] = r
        say(f"colour {name:16s} B={COLOUR_BATCH:<5d} {r['images_per_s']:7.1f} img/s ({precision})  peak {r['peak_memory_mb']:.0f} MB  "
            f"(median of {r['repeats']}, cpu/wall {r['cpu_over_wall']:.2f})")
    out["speedup"] = engine_speedups(out, "images_per_s", "colour training", say)
    return out


def plain_rows(plain: dict, device, args, mem, loaded: bool, say) -> dict:
    """Training steps of the model without attention (``plain``: the paper's at the defaults) at batch 128 in precision auto, by the
    native engine, the Python engine and the baseline, interleaved; then evaluation (float32, the
    log ratio, --eval-rows copies) by the two engines."""
    precision = "bfloat16" if args.low_precision else "float32"
    impls = engine_models(plain, device, loaded, args)
    fns = {name: train_step_fn(m, plain, PLAIN_BATCH, device, precision, e) for name, (m, e) in impls.items()}
    reps = {name: max(2, args.steps // 2) if name == "baseline" else args.steps for name in fns}
    flops = flops_per_image(plain)["training"]
    out = {"config": dict(plain, batch=PLAIN_BATCH), "precision": precision, "flops_per_image": flops}
    for name, r in measure(fns, device, reps, args.warmup, mem, [m for m, _ in impls.values()]).items():
        r["images_per_s"] = PLAIN_BATCH / r["median_s"]
        r["gflops"] = r["images_per_s"] * flops / 1e9
        out[name] = r
        say(f"no-attention {name:16s} B={PLAIN_BATCH:<5d} {r['images_per_s']:7.1f} img/s ({precision}, {r['gflops']:.0f} GFLOP/s)  "
            f"peak {r['peak_memory_mb']:.0f} MB  (median of {r['repeats']}, cpu/wall {r['cpu_over_wall']:.2f})")
    out["speedup"] = engine_speedups(out, "images_per_s", "no-attention training", say)
    if args.eval_rows:
        fns = {name: evaluate_fn(m, plain, args.eval_rows, device, engine=e) for name, (m, e) in impls.items() if name != "baseline"}
        ev = {}
        for name, r in measure(fns, device, {n: 3 if args.quick else 7 for n in fns}, 1, mem, [m for m, _ in impls.values()]).items():
            r["image_passes_per_s"] = args.eval_rows / r["median_s"]
            ev[name] = r
            say(f"no-attention evaluate {name:16s} rows={args.eval_rows:<5d} {r['image_passes_per_s']:7.1f} image-passes/s  "
                f"(median of {r['repeats']}, cpu/wall {r['cpu_over_wall']:.2f})")
        ev["speedup"] = engine_speedups(ev, "image_passes_per_s", "no-attention evaluate", say)
        out["evaluation"] = ev
    return out


# CPU classes for --isa: the environment of each class's process, and whether its rows run bfloat16
# products (None: where this CPU multiplies them natively). Caps only lower the instruction set: on a
# CPU without AVX512-BF16, avx512_core_bf16 runs as avx512_core (the JSON records the CPU's flags).
# MKL_ENABLE_INSTRUCTIONS caps MKL, whose sgemm runs torch.mm on x86 (oneDNN's cap does not reach it).
ISA_CLASSES = {
    "native": ({}, None),
    "avx512_core_bf16": ({"ONEDNN_MAX_CPU_ISA": "AVX512_CORE_BF16", "ATEN_CPU_CAPABILITY": "avx512", "MKL_ENABLE_INSTRUCTIONS": "AVX512",
                          "DRAWCLI_AMX": "0"}, None),
    "avx512_core": ({"ONEDNN_MAX_CPU_ISA": "AVX512_CORE", "ATEN_CPU_CAPABILITY": "avx512", "MKL_ENABLE_INSTRUCTIONS": "AVX512",
                     "DRAWCLI_AMX": "0", "DRAWCLI_NATIVE_ARCH": "x86-64-v4"}, False),
    "avx2": ({"ONEDNN_MAX_CPU_ISA": "AVX2", "ATEN_CPU_CAPABILITY": "avx2", "MKL_ENABLE_INSTRUCTIONS": "AVX2", "DRAWCLI_AMX": "0",
              "DRAWCLI_NATIVE_ARCH": "x86-64-v3"}, False),
}


def isa_rates(r: dict) -> dict[str, float]:
    """One result's rates by row: training (img/s per implementation and batch), evaluation
    (image-passes/s), colour and no-attention training (img/s)."""
    out = {}
    for impl, by_size in r.get("training", {}).items():
        for size, row in by_size.items():
            out[f"train {impl} B={size}"] = row["images_per_s"]
    for section, rate in (("evaluation", "image_passes_per_s"), ("colour", "images_per_s"), ("no_attention", "images_per_s")):
        for name, row in r.get(section, {}).items():
            if isinstance(row, dict) and rate in row:
                out[f"{section} {name}"] = row[rate]
        ev = r.get(section, {}).get("evaluation") if section == "no_attention" else None
        for name, row in (ev or {}).items():
            if isinstance(row, dict) and "image_passes_per_s" in row:
                out[f"no_attention evaluation {name}"] = row["image_passes_per_s"]
    return out


def isa_mode(args, argv: list[str]) -> dict:
    """Every row once per CPU class of --isa, each class in its own process (the caps must be set
    before oneDNN and ATen start), round by round so that the classes are interleaved; then one
    table per class: each row's median over the rounds, and the ratios the issues ask for."""
    import subprocess
    import tempfile

    classes = [c.strip() for c in args.isa.split(",") if c.strip()]
    unknown = [c for c in classes if c not in ISA_CLASSES]
    if unknown:
        raise SystemExit(f"--isa: unknown class {unknown[0]!r}; choose from {', '.join(ISA_CLASSES)}")
    child = []
    skip = {"--isa", "--rounds", "--out"}
    it = iter(argv)
    for a in it:
        name = a.split("=", 1)[0]
        if name in skip:
            if "=" not in a:
                next(it, None)
            continue
        child.append(a)
    runs: dict[str, list[dict]] = {c: [] for c in classes}
    with tempfile.TemporaryDirectory() as tmp:
        for rnd in range(args.rounds):
            for c in classes:
                env_extra, bf16 = ISA_CLASSES[c]
                out = Path(tmp) / f"{c}-{rnd}.json"
                cmd = [sys.executable, str(Path(__file__).resolve()), *child, "--out", str(out)]
                if bf16 is False:
                    cmd.append("--no-bf16")
                print(f"=== round {rnd + 1}/{args.rounds}, class {c}: {' '.join(f'{k}={v}' for k, v in env_extra.items()) or 'no caps'}",
                      flush=True)
                done = subprocess.run(cmd, env=dict(os.environ, **env_extra), text=True, capture_output=True)
                for line in done.stdout.splitlines():
                    print(f"  [{c}] {line}", flush=True)
                if done.returncode != 0:
                    raise SystemExit(f"class {c} failed:\n{done.stderr[-3000:]}")
                runs[c].append(json.loads(out.read_text()))
    result = {"isa_classes": {c: {"env": ISA_CLASSES[c][0], "runs": runs[c]} for c in classes}, "argv": argv,
              "cpu_flags": cpu_flags(), "device_name": device_name(torch.device("cpu")), "torch": torch.__version__}
    for c in classes:
        rates = [isa_rates(r) for r in runs[c]]
        table = {row: statistics.median(r[row] for r in rates if row in r) for row in rates[0]}
        result["isa_classes"][c]["median"] = table
        ratios = {}
        for a, b in (("train drawcli", "train baseline"), ("evaluation drawcli-native", "evaluation drawcli-python"),
                     ("colour drawcli-native", "colour drawcli-python"),
                     ("no_attention drawcli-native", "no_attention drawcli-python"),
                     ("no_attention evaluation drawcli-native", "no_attention evaluation drawcli-python")):
            for row in table:
                if row.startswith(a + " ") or row == a:
                    other = b + row[len(a):]
                    if other in table:
                        ratios[f"{row} over {other}"] = [r[row] / r[other] for r in rates if row in r and other in r]
        result["isa_classes"][c]["ratios"] = ratios
        print(f"\n{c} ({' '.join(f'{k}={v}' for k, v in ISA_CLASSES[c][0].items()) or 'no caps'}); median of {len(rates)} rounds:")
        for row, v in table.items():
            print(f"  {row:48s} {v:8.1f}")
        for key, vals in ratios.items():
            print(f"  {key}: " + ", ".join(f"{v:.2f}x" for v in vals))
    out = Path(args.out) if args.out else HERE / "results-isa.json"
    out.write_text(json.dumps(result, indent=1, default=str))
    print(f"wrote {out}")
    return result


def write_result(result: dict, args, device, say) -> dict:
    result["load_average_end"] = list(os.getloadavg())
    say(f"load average at the end {result['load_average_end'][0]:.2f}")
    out = Path(args.out) if args.out else HERE / f"results-{device.type}.json"
    out.write_text(json.dumps(result, indent=1, default=str))
    say(f"wrote {out}")
    return result


def budget(result: dict, impls: list[str], flops_per_img: float, gemm_of, say, bar: float = 3.5) -> dict:
    """Where a training step's time goes, against a speedup bar over the baseline (issue #14's 3.5x).

    The products alone, at the GEMM rate measured on the model's own shapes, take
    images x FLOPs / rate: no implementation doing the model's FLOPs with these kernels can be
    faster, so baseline time / that time is the ceiling of the speedup. The rest of a measured
    step (everything that is not a matrix product: elementwise ops, casts, Python and dispatch)
    is the step time minus that, and ``bar`` leaves (baseline time / bar) - product time for it.
    """
    out = {}
    for impl in (i for i in ("drawcli", "drawcli-bf16", "drawcli-bf16-python") if i in impls):
        for size, r in result["training"][impl].items():
            base_s = size / result["training"]["baseline"][size]["images_per_s"]
            gemm_s = size * flops_per_img / (gemm_of(impl, "training", size) * 1e9)
            step_s = size / r["images_per_s"]
            row = dict(step_ms=1e3 * step_s, products_ms=1e3 * gemm_s, rest_ms=1e3 * (step_s - gemm_s),
                       ceiling_over_baseline=base_s / gemm_s, bar=bar, rest_ms_at_bar=1e3 * (base_s / bar - gemm_s))
            out.setdefault(impl, {})[size] = row
            say(f"budget {impl:12s} B={size:<4d} step {row['step_ms']:.0f} ms = products {row['products_ms']:.0f} ms "
                f"(at the measured GEMM rate) + the rest {row['rest_ms']:.0f} ms; the products alone would be "
                f"{row['ceiling_over_baseline']:.2f}x the baseline; {bar}x leaves {row['rest_ms_at_bar']:.0f} ms for the rest")
    return out


def mixed_rate(cfg, size: int, device, repeats: int, f32: dict, kind: str) -> dict:
    """The GEMM rate drawcli-bf16 can reach: the LSTM products (and their gradients) at the
    bfloat16 rate, the other products at the float32 rate already measured (``f32``)."""
    lstm = step_gemms(cfg, size)["encoder"] + step_gemms(cfg, size)["decoder"]
    lstm_shapes = set()
    for m, k, n, _ in lstm:
        lstm_shapes |= {(m, k, n), (m, n, k), (n, cfg["glimpses"] * m, k)}
    shapes = training_gemms(cfg, size) if kind == "training" else sampling_gemms(cfg, size)
    low = [s for s in shapes if s[:3] in lstm_shapes]
    r16 = gemm_rate(low, device, repeats, torch.bfloat16)
    by_shape = {(r["m"], r["k"], r["n"]): r["gflops"] for r in r16["shapes"]}
    by_shape_32 = {(r["m"], r["k"], r["n"]): r["gflops"] for r in f32["shapes"]}
    flops = t = 0.0
    for m, k, n, count in shapes:
        f = 2.0 * m * k * n * count
        rate = by_shape.get((m, k, n)) or by_shape_32[(m, k, n)]
        flops += f
        t += f / (rate * 1e9)
    return {"gflops": flops / t / 1e9, "lstm_bf16_gflops": r16["gflops"], "shapes": r16["shapes"]}


def cpu_flags() -> list[str]:
    """The CPU's matrix-unit flags (AMX, AVX512-BF16/VNNI/FP16) from /proc/cpuinfo."""
    wanted = ("amx_bf16", "amx_tile", "amx_int8", "avx512_bf16", "avx512_vnni", "avx512_fp16", "avx512f")
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("flags"):
                have = set(line.split(":", 1)[1].split())
                return [f for f in wanted if f in have]
    except OSError:
        pass
    return []


if __name__ == "__main__":
    main()
