"""How much memory a training step needs, and whether it fits: checked before training starts.

DRAW keeps every glimpse's activations for backpropagation through time, so a step's memory
grows with batch x glimpses: the paper's model (T = 64) keeps about 2 MB per image, the quick
config (T = 16) 0.5 MB, so a batch of 100,000 at T = 16 needs tens of gigabytes. Without a check such a run grows until the
kernel kills it, silently. :func:`step_memory` estimates the bytes from the model's shapes alone
(what backpropagation must keep per image and glimpse, the batch's inputs and losses, and the
parameters with their gradients and Adam state), so it does not depend on either engine's
private buffers; tests/test_memory.py holds it to a measured step within a loose bound.
:func:`available_memory` says what the machine offers: ``DRAW_MEMORY_LIMIT`` when set (e.g.
``8G``), else the free memory of the CUDA device, else Linux's MemAvailable (and the cgroup's
limit, in a container). Never imports torch at module level.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

from drawcli.core.errors import DrawError

LIMIT_ENV = "DRAW_MEMORY_LIMIT"
FLOAT = 4  # bytes: activations are float32 (bfloat16 copies of the products' inputs are counted on top)
_UNITS = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}


@dataclass(frozen=True)
class StepMemory:
    """A training step's memory: ``fixed`` bytes plus ``per_image`` bytes per image of the batch;
    ``bfloat16_per_image`` more per image when the products run in bfloat16 (:meth:`in_precision`)."""

    fixed: int
    per_image: int
    bfloat16_per_image: int = 0

    def in_precision(self, precision: str) -> StepMemory:
        """The step in this training precision: bfloat16 keeps its copies on top of the float32 activations."""
        if precision != "bfloat16":
            return self
        return StepMemory(self.fixed, self.per_image + self.bfloat16_per_image)

    def total(self, batch: int) -> int:
        return self.fixed + self.per_image * batch

    def largest_batch(self, available: int) -> int:
        """The largest batch whose step fits in ``available`` bytes (0 when none does)."""
        return max(0, (available - self.fixed) // self.per_image)


def step_memory(glimpses: int, hidden: int, latent: int, attention: bool, read_n: int, write_n: int,
                height: int, width: int, channels: int = 1, parameters: int = 0) -> StepMemory:
    """Bytes one training step needs (forward, backward, Adam), from the model's shapes.

    Per image and glimpse, backpropagation through time keeps: both LSTMs' inputs, gates, cell
    states and tanh(c) (and their gradients' scratch); the posterior's mean, log sigma, noise and
    their gradients; the heads' outputs and gradients; with attention, the error image x_hat (and x
    beside it), both filterbanks F_X, F_Y with (a - mu) for backward, and the partial products of
    read (F_Y [x | x_hat]) and write (w F_X); without attention the whole image enters the encoder
    and the head writes the whole canvas. In bfloat16 (``bfloat16_per_image``, see
    :meth:`StepMemory.in_precision`) the LSTM products' inputs and gates are also kept in bfloat16. Per image once: the input (uint8, float, binarised), the canvas, the
    loss and their gradients. Fixed: the parameters, their gradients, Adam's two moments and the
    rearranged copies the engines multiply with.
    """
    T, hd, Z, C, H, W = glimpses, hidden, latent, channels, height, width
    pixels = C * H * W
    if attention:
        L = max(H, W)
        reads = 2 * C * read_n * read_n  # r_t = [read(x), read(x_hat)], eq 27
        heads = C * write_n * write_n + 10  # write patch, write window, next read window
        pictures = (2 * pixels  # x_hat_t (and x beside it, as the Python loop keeps them)
                    + 2 * 2 * (read_n + write_n) * L  # F_X and F_Y (2 x N x L) and grid - mu, read and write
                    + 2 * C * read_n * W + C * write_n * W + C * write_n * write_n)  # F_Y [x | x_hat], w F_X, w
    else:
        reads = 2 * pixels
        heads = pixels
        pictures = pixels  # x_hat_t as the encoder's input
    lstm_inputs = (reads + 2 * hd + 8) + (Z + hd + 8)  # [r_t | h_dec | h_enc | 1 | pad], [z_t | h_dec | 1 | pad], eq 5, 7
    lstm_state = 2 * (4 * hd + 2 * hd)  # per LSTM: gates, c_t, tanh(c_t) (h_t is in the inputs)
    per_glimpse = lstm_inputs + lstm_state + pictures + 2 * heads + 5 * Z  # heads and their gradients; mu, log sigma, eps, sigma eps, dq
    per_glimpse += 2 * hd  # h_enc_t and h_dec_t gathered for the weight gradients' (T*B)-row products
    bfloat16_copies = (lstm_inputs + 2 * 4 * hd) // 2  # per glimpse: half a float each
    per_image = T * per_glimpse + 12 * pixels + 2 * T * Z  # input, canvas, loss and gradients; eps (T x Z) drawn per batch
    fixed = 6 * parameters  # weights, gradients, Adam's m and v, rearranged copies (x2)
    return StepMemory(fixed=FLOAT * fixed, per_image=FLOAT * per_image, bfloat16_per_image=FLOAT * T * bfloat16_copies)


def model_step_memory(model_settings, height: int, width: int, channels: int, parameters: int, precision: str) -> StepMemory:
    """:func:`step_memory` for settings.model (ModelSettings) on images of this shape."""
    m = model_settings
    return step_memory(m.glimpses, m.hidden, m.latent, m.attention, m.read_n, m.write_n, height, width, channels,
                       parameters).in_precision(precision)


def parse_size(text: str) -> int:
    """'8G', '512M', '1.5g', '1000000' -> bytes (binary units: K = 1024)."""
    found = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([kmgt]?)i?b?\s*", str(text).lower())
    if not found:
        raise DrawError(f"{LIMIT_ENV}={text!r}: expected a size such as 8G, 512M or 1000000 (bytes)")
    return int(float(found.group(1)) * _UNITS[found.group(2)])


def format_size(n: int) -> str:
    """Bytes for people: 1.2 GB, 340 MB (binary units, as parse_size reads them)."""
    for unit, size in (("TB", 1 << 40), ("GB", 1 << 30), ("MB", 1 << 20), ("KB", 1 << 10)):
        if n >= size:
            value = n / size
            return f"{value:.1f} {unit}" if value < 100 else f"{value:.0f} {unit}"
    return f"{n} bytes"


def _meminfo_available() -> int | None:
    try:
        text = Path("/proc/meminfo").read_text()
    except OSError:
        return None
    found = re.search(r"^MemAvailable:\s+(\d+) kB", text, re.M)
    return int(found.group(1)) * 1024 if found else None


def _cgroup_available() -> int | None:
    """What a cgroup v2 memory limit leaves (containers), or None without one."""
    try:
        limit = Path("/sys/fs/cgroup/memory.max").read_text().strip()
        used = Path("/sys/fs/cgroup/memory.current").read_text().strip()
    except OSError:
        return None
    if limit == "max" or not limit.isdigit() or not used.isdigit():
        return None
    return max(0, int(limit) - int(used))


def available_memory(device=None) -> tuple[int | None, str]:
    """(bytes a training step may use, where the figure comes from); None when unknown."""
    forced = os.environ.get(LIMIT_ENV)
    if forced:
        return parse_size(forced), LIMIT_ENV
    kind = getattr(device, "type", "cpu") if device is not None else "cpu"
    if kind == "cuda":
        import torch

        free, _ = torch.cuda.mem_get_info(device)
        return int(free), f"free on {device}"
    if kind != "cpu":
        return None, "unknown for this device"
    found = [(v, why) for v, why in ((_meminfo_available(), "MemAvailable"), (_cgroup_available(), "the cgroup's limit"))
             if v is not None]
    return min(found) if found else (None, "unknown on this system")


def _round_down(n: int) -> int:
    """n to two significant digits, rounded down: 45871 -> 45000 (a batch size people type)."""
    if n < 100:
        return n
    step = 10 ** (len(str(n)) - 2)
    return n // step * step


def check_step_fits(need: StepMemory, batch: int, available: int | None, source: str, processes: int = 1,
                    world: int = 1) -> None:
    """A DrawError when ``processes`` steps of ``batch`` images each (one process's slice of a global
    batch split over ``world`` processes) cannot fit in ``available`` bytes: it gives the estimate
    and the largest global batch that fits."""
    if available is None:
        return
    total = need.total(batch) * processes
    if total <= available:
        return
    largest = _round_down(need.largest_batch(available // processes) * world)
    largest -= largest % world
    what = f"a training step of batch {batch * world}" + (f" in {processes} processes" if processes > 1 else "")
    where = (f"{format_size(available)} is allowed ({LIMIT_ENV})" if source == LIMIT_ENV
             else f"{format_size(available)} is available ({source})")
    if largest < 1:
        advice = "not even a batch of 1 fits: use a smaller model (fewer --glimpses, a smaller --hidden) or free memory"
    else:
        advice = f"the largest batch that fits is about {largest}: use --batch-size {largest} or less"
    raise DrawError(f"{what} needs about {format_size(total)} (estimated from the model's shapes), but only {where}; {advice}")
