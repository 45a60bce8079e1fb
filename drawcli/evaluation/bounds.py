"""Bounds on -log p(x) in nats per image, and how a setup compares with the paper's Table 2.

Two bounds, both computed from the same K posterior samples of every image:

* the ELBO of eq 12, L = L^x + L^z, with L^x the Bernoulli NLL of eq 9 and L^z the
  analytic KL of eq 11, each averaged over the K samples (K=1 is the usual estimate);
* the importance-weighted bound (Burda et al., 2016)
      -log p(x) <= -log (1/K) sum_k p(x, z^k) / q(z^k | x),
  where each z^k is a WHOLE sequence z_1..z_T drawn from the DRAW posterior
  (eq 1-2, 6: z_t depends on z_<t through h^dec_{t-1}). One log weight is
      log w_k = log p(x | z^k) + sum_t [log p(z_t^k) - log q(z_t^k | .)] = -(L^x_k + log_ratio_k),
  which ``DRAW.forward(log_ratio=True)`` provides. K=1 gives an unbiased ELBO estimate with
  a sampled instead of analytic KL; the bound tightens towards -log p(x) as K grows.

:func:`likelihood_bounds` is pure (no files, no printing); :func:`iwae_report` is the
helper for ``draw train --eval-samples K``; the `draw evaluate` command is in drawcli/evaluation/evaluate.py.
"""

from __future__ import annotations

import hashlib
import math
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from drawcli.core.errors import DrawError
from drawcli.model import DRAW

# Binarisation on the CPU in fixed blocks, so the sample depends on the seed and the
# images only: not on the device, the batch size or K.
BINARIZE_BLOCK = 10_000

# The paper's Table 2 (binarized MNIST, test set, nats), for the Table 3 MNIST model:
# T = 64 glimpses, 256 LSTM units, z of size 100, 2x2 read and 5x5 write with attention.
# Both numbers are variational bounds (eq 12), so they sit beside our ELBO.
PAPER_DATASET = "binarized-mnist"
PAPER_SPLIT = "test"
PAPER_MODEL = {"height": 28, "width": 28, "glimpses": 64, "hidden": 256, "latent": 100}
PAPER_ATTENTION_WINDOWS = {"read_n": 2, "write_n": 5}
PAPER_TABLE2 = {True: 80.97, False: 87.40}  # keyed by attention
PAPER_APPLIES_TO = ("binarized-mnist", "mnist")  # Table 2's numbers are for binarized MNIST only

CPU_MEMORY_BUDGET = 512 * 2**20
CUDA_MEMORY_BUDGET_MAX = 8 * 2**30


# --------------------------------------------------------------------------- binarisation


def fixed_binarization(images, mode: str, seed: int) -> tuple[torch.Tensor, float, dict]:
    """One fixed set of targets for ``images`` (uint8 0..255, (N, H, W)), on the CPU.

    Returns (targets uint8, scale, info): the model input is ``targets * scale``.
    dynamic: one Bernoulli sample of the grey levels, drawn once from a CPU generator seeded
    with ``seed`` (the same rule as training's ``to_input``, but frozen, so every checkpoint
    and every K sees the same binary images); threshold: pixel >= 0.5; none: as stored
    (binarized-mnist's 0/255 become exactly 0/1). ``info["sha256"]`` fingerprints the targets,
    so two evaluations can be checked to have used the same binary images.
    """
    cpu = torch.as_tensor(np.asarray(images) if not isinstance(images, torch.Tensor) else images).cpu()
    if cpu.dtype != torch.uint8:
        raise DrawError(f"expected uint8 images (0..255), got {cpu.dtype}")
    if mode == "dynamic":
        g = torch.Generator().manual_seed(seed)
        blocks = [
            torch.bernoulli(cpu[i : i + BINARIZE_BLOCK].float().div_(255.0), generator=g).to(torch.uint8)
            for i in range(0, len(cpu), BINARIZE_BLOCK)
        ]
        targets = torch.cat(blocks) if blocks else cpu.clone()
        scale = 1.0
        description = f"one fixed Bernoulli sample of the grey levels (seed {seed})"
    elif mode == "threshold":
        targets, scale = (cpu >= 128).to(torch.uint8), 1.0  # x/255 >= 0.5 <=> x >= 127.5
        description = "threshold at 0.5"
    elif mode == "none":
        targets, scale = cpu, 1.0 / 255.0
        binary = bool(((cpu == 0) | (cpu == 255)).all())
        description = (
            "none: the images are already binary, used as is"
            if binary
            else "none: grey levels as Bernoulli targets (not a likelihood of binary images)"
        )
    else:
        raise DrawError(f"unknown binarisation {mode!r}; expected dynamic, threshold or none")
    digest = hashlib.sha256(targets.contiguous().numpy().tobytes()).hexdigest()[:16]
    info = {"mode": mode, "seed": seed if mode == "dynamic" else None, "sha256": digest, "description": description,
            # grey levels or colours as targets: the loss is a cross-entropy, not a bound on -log p(x)
            "binary": mode != "none" or binary}
    return targets, scale, info


# --------------------------------------------------------------------------- batching


def bytes_per_row(model: DRAW) -> int:
    """Rough peak memory of one image copy in a no-grad forward pass with log_ratio.

    forward keeps eps, the lists of mu and log sigma and their stacked copies (5 T Z floats),
    and the KL and log-ratio terms make about 5 T Z more in temporaries; the image-sized
    tensors (x, canvas, x_hat, sigmoid, BCE, filterbanks) are about a dozen H W; the LSTM
    states and gates a few dozen `hidden`. Doubled for allocator slack and what this misses.
    """
    tz = model.steps * model.embed
    pixels = model.height * model.width
    encoder_in = model.encoder.linear.in_features
    floats = 10 * tz + 12 * pixels + 24 * model.hidden + 2 * encoder_in
    return 2 * 4 * floats


def memory_budget(device: torch.device) -> int:
    """Bytes one forward pass may use: a quarter of free CUDA memory (at most 8 GiB), else 512 MiB.

    On the CPU larger passes stop paying off long before memory runs out.
    """
    if device.type == "cuda":
        free, _total = torch.cuda.mem_get_info(device)
        return int(min(free // 4, CUDA_MEMORY_BUDGET_MAX))
    return CPU_MEMORY_BUDGET


def rows_per_pass(model: DRAW, device: torch.device, budget: int | None = None) -> int:
    """Image copies per forward pass that fit in ``budget`` bytes (default :func:`memory_budget`)."""
    budget = memory_budget(device) if budget is None else budget
    return max(1, int(budget // bytes_per_row(model)))


# --------------------------------------------------------------------------- the bounds


def _stderr(values: torch.Tensor) -> float | None:
    """Standard error of the mean over images: sample std (n-1) / sqrt(n); None for one image."""
    n = values.numel()
    if n < 2:
        return None
    return float(values.std(unbiased=True) / math.sqrt(n))


@dataclass
class Bounds:
    """Per-image results in nats, float64 on the CPU, shape (N,): positive NLLs."""

    lx: torch.Tensor  # L^x (eq 9) averaged over the K posterior samples
    lz: torch.Tensor  # L^z (eq 11, analytic KL) averaged over the same samples
    iwae: torch.Tensor  # -log (1/K) sum_k w_k
    samples: int
    binarization: dict
    rows_per_pass: int

    @property
    def elbo(self) -> torch.Tensor:
        """-ELBO per image: L = L^x + L^z (eq 12)."""
        return self.lx + self.lz

    def summary(self) -> dict:
        """Means over images with standard errors, under the keys the eval-*.json files use.

        ``elbo_minus_iwae`` is the paired per-image difference: its standard error is far
        smaller than either bound's, so it shows whether the K samples tightened the bound.
        """
        out: dict = {"images": int(self.lx.numel()), "samples": self.samples}
        for key, values in (
            ("elbo", self.elbo),
            ("elbo_lx", self.lx),
            ("elbo_lz", self.lz),
            ("iwae", self.iwae),
            ("elbo_minus_iwae", self.elbo - self.iwae),
        ):
            out[key] = float(values.mean())
            out[f"{key}_stderr"] = _stderr(values)
        return out


@dataclass
class Partial:
    """An evaluation stopped part-way: the first ``done`` images' results, and what continuing
    needs to give exactly what an uninterrupted evaluation gives (the noise generator's state
    after those images, and the pass layout). Plain types and tensors, for ``torch.save``."""

    done: int
    lx: torch.Tensor  # (images,) float64; entries from ``done`` on are not filled yet
    lz: torch.Tensor
    iwae: torch.Tensor
    noise: torch.Tensor  # torch.Generator.get_state() after the first ``done`` images
    per_block: int
    per_pass: int
    images: int
    samples: int

    def to_dict(self) -> dict:
        return {k: getattr(self, k) for k in self.__dataclass_fields__}

    @classmethod
    def from_dict(cls, d: dict) -> Partial:
        return cls(**{k: d[k] for k in cls.__dataclass_fields__})

    def check(self, images: int, samples: int) -> None:
        if (self.images, self.samples) != (images, samples) or not 0 <= self.done <= images:
            raise DrawError(f"the partial evaluation is of {self.images} images with K={self.samples}, "
                            f"not {images} with K={samples}")


@dataclass(frozen=True)
class Continuation:
    """An evaluation that survives an interruption, so that hours of K = 1000 are not lost.

    ``keep`` is called with the work finished so far (a :class:`Partial`) at most every
    ``keep_every`` seconds, and once more when the loop is interrupted (KeyboardInterrupt or any
    error). ``resume`` continues from such a Partial: the same images, K and seed give
    bit-identical results to an uninterrupted evaluation, because the Partial carries the noise
    generator's state and the pass layout.
    """

    resume: Partial | None = None
    keep: Callable[[Partial], None] | None = None
    keep_every: float = 60.0


@torch.no_grad()
def likelihood_bounds(
    model: DRAW,
    images,
    binarize: str,
    samples: int,
    *,
    seed: int = 0,
    batch_size: int | None = None,
    budget: int | None = None,
    progress: Callable[[int], None] | None = None,
    engine: str = "auto",
    continuation: Continuation | None = None,
) -> Bounds:
    """ELBO parts and the K-sample importance-weighted bound for every image.

    images: uint8 0..255 (N, H, W), numpy or torch on any device; the model's device is used.
    binarize: dynamic | threshold | none, applied once (see :func:`fixed_binarization`, seed
    ``seed``); the posterior noise comes from a generator on the device seeded ``seed + 1``.
    batch_size: image copies per forward pass (default from a memory budget). Every image is
    repeated K times in a pass when that fits; otherwise its K samples are split over passes.
    progress: called with the number of images finished so far.
    engine: the engine every forward pass runs (DRAW.forward's argument).
    continuation: where an interruptible evaluation keeps its finished work and continues from
    (a :class:`Continuation`); None: neither.
    """
    c = continuation or Continuation()
    resume, keep = c.resume, c.keep
    if samples < 1:
        raise DrawError(f"--samples must be >= 1, got {samples}")
    if batch_size is not None and batch_size < 1:
        raise DrawError(f"--batch-size must be >= 1, got {batch_size}")
    device = next(model.parameters()).device
    targets, scale, info = fixed_binarization(images, binarize, seed)
    n = len(targets)
    if n == 0:
        raise DrawError("no images to evaluate")
    expected = (model.height, model.width) if model.channels == 1 else (model.channels, model.height, model.width)
    if tuple(targets.shape[1:]) != expected:
        raise DrawError(f"images are {tuple(targets.shape[1:])}, the model expects {expected}")
    noise = torch.Generator(device=device).manual_seed(seed + 1)
    if resume is None:
        rows = batch_size or rows_per_pass(model, device, budget)
        per_block = max(1, rows // samples)  # images per pass when all K copies fit
        per_pass = min(samples, max(1, rows // per_block))  # else K is split over passes
        state = Partial(done=0, lx=torch.empty(n, dtype=torch.float64), lz=torch.empty(n, dtype=torch.float64),
                        iwae=torch.empty(n, dtype=torch.float64), noise=noise.get_state(),
                        per_block=per_block, per_pass=per_pass, images=n, samples=samples)
    else:
        resume.check(n, samples)
        per_block, per_pass = resume.per_block, resume.per_pass
        noise.set_state(resume.noise)
        state = resume
    lx_all, lz_all, iwae_all = state.lx, state.lz, state.iwae
    log_k = math.log(samples)
    last_kept = time.monotonic()
    was_training = model.training
    model.eval()
    try:
        for start in range(state.done, n, per_block):
            x = targets[start : start + per_block].to(device).float().mul_(scale)
            m = len(x)
            lx, lz, log_w = [], [], []
            for k0 in range(0, samples, per_pass):
                k = min(per_pass, samples - k0)
                out = model(x.repeat_interleave(k, dim=0), log_ratio=True, generator=noise, engine=engine)
                # The model sums pixels and latents in float32; everything after is float64 on
                # the CPU. Moved first, then widened: MPS has no float64, and one copy that
                # changes both would do the dtype change on the MPS side.
                lx_k = out.lx.reshape(m, k).cpu().double()
                ratio_k = out.log_ratio.reshape(m, k).cpu().double()
                lx.append(lx_k)
                lz.append(out.lz.reshape(m, k).cpu().double())
                log_w.append(-(lx_k + ratio_k))
            lx_m, lz_m, log_w_m = torch.cat(lx, 1), torch.cat(lz, 1), torch.cat(log_w, 1)
            lx_all[start : start + m] = lx_m.mean(1)
            lz_all[start : start + m] = lz_m.mean(1)
            # log (1/K) sum_k exp(log w_k), stably: logsumexp subtracts the largest log w.
            iwae_all[start : start + m] = -(torch.logsumexp(log_w_m, dim=1) - log_k)
            state.done, state.noise = start + m, noise.get_state()
            if keep is not None and start + m < n and time.monotonic() - last_kept >= c.keep_every:
                keep(state)
                last_kept = time.monotonic()
            if progress is not None:
                progress(start + m)
    except BaseException:
        if keep is not None and 0 < state.done < n:
            keep(state)  # the blocks finished before the interruption
        raise
    finally:
        model.train(was_training)
    return Bounds(lx=lx_all, lz=lz_all, iwae=iwae_all, samples=samples, binarization=info, rows_per_pass=per_block * per_pass)


def iwae_report(
    model: DRAW,
    images,
    binarize: str,
    samples: int,
    *,
    seed: int = 0,
    batch_size: int | None = None,
    progress: Callable[[int], None] | None = None,
    engine: str = "auto",
) -> dict:
    """Summary of :func:`likelihood_bounds` for ``draw train --eval-samples K``.

    Returns the eval-*.json number keys (elbo, elbo_lx, elbo_lz, iwae, elbo_minus_iwae, each
    with ``*_stderr``; images, samples) plus ``binarization`` (a dict) and ``seconds``.
    """
    t0 = time.perf_counter()
    bounds = likelihood_bounds(model, images, binarize, samples, seed=seed, batch_size=batch_size, progress=progress,
                               engine=engine)
    report = bounds.summary()
    check_finite(report)
    report["binarization"] = bounds.binarization
    report["seconds"] = time.perf_counter() - t0
    return report


def report_line(report: dict, split: str = "test") -> str:
    """One plain line for a log: the IWAE bound and the ELBO with their standard errors."""

    def pm(key: str) -> str:
        se = report.get(f"{key}_stderr")
        return f"{report[key]:.2f}" + (f" ± {se:.2f}" if se is not None else "")

    return (
        f"{split} NLL bounds over {report['images']} images: IWAE (K={report['samples']}) {pm('iwae')} nats, "
        f"ELBO {pm('elbo')} (L_x {report['elbo_lx']:.2f}, L_z {report['elbo_lz']:.2f}); "
        f"binarisation: {report['binarization']['description']}"
    )


def check_finite(report: dict) -> None:
    """A one-line DrawError when a bound is NaN or infinite."""
    for key in ("elbo", "elbo_lx", "elbo_lz", "iwae"):
        if not math.isfinite(report[key]):
            raise DrawError(f"the model's {key} bound is not finite on these images (a diverged checkpoint?)")


# --------------------------------------------------------------------------- the paper


def paper_comparison(
    model_config: dict, dataset: str, split: str, images: int, total: int, trained_on: str | None = None
) -> dict:
    """The Table 2 number for the model's attention setting, and every way our setup differs.

    ``comparable`` is True only for the Table 3 architecture, trained on binarized MNIST
    (``trained_on``; None: not known, not checked) and evaluated on its full test set.
    ``applies`` is False where Table 2 has nothing to say: data sets other than MNIST's two
    binary forms, or images other than 28 x 28 grey (two-digit MNIST, SVHN, CIFAR-10, folders).
    """
    attention = bool(model_config.get("attention", True))
    applies = (dataset in PAPER_APPLIES_TO and model_config.get("height") == 28 and model_config.get("width") == 28
               and model_config.get("channels", 1) == 1)
    differences = []
    from drawcli.model.draw import canonical_config

    model_config = canonical_config(model_config)  # a JSON of an older version may say steps and embed
    names = {"height": "image height", "width": "image width", "glimpses": "T", "hidden": "LSTM units", "latent": "z size"}
    wanted = dict(PAPER_MODEL, **(PAPER_ATTENTION_WINDOWS if attention else {}))
    names.update({"read_n": "read N", "write_n": "write N"})
    for key, value in wanted.items():
        if model_config.get(key) != value:
            differences.append(f"{names[key]} {model_config.get(key)} (paper {value})")
    if trained_on is not None and trained_on != PAPER_DATASET:
        differences.append(f"trained on {trained_on} (paper {PAPER_DATASET})")
    if dataset != PAPER_DATASET:
        differences.append(f"data set {dataset} (paper {PAPER_DATASET}, Larochelle & Murray's fixed binarisation)")
    if split != PAPER_SPLIT:
        differences.append(f"split {split} (paper {PAPER_SPLIT})")
    if images != total:
        differences.append(f"first {images} of {total} images (paper: all)")
    return {
        "table2": PAPER_TABLE2[attention],
        "row": "DRAW" if attention else "DRAW without attention",
        "comparable": applies and not differences,
        "applies": applies,
        "differences": differences,
    }
