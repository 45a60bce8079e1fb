"""The parameters as both fast loops read them (python_loop.py and the native one), and the small
constant tensors they use, made once per shape and device.

Parameters and state_dict keys stay as draw.py declares them; ``loop_weights`` builds, once per
forward and differentiably (autograd maps the gradients back), one layout shared by both loops:

- each LSTM as [W | b | 0...] in LSTMCell's gate order (i, f, g, o): the loops' inputs hold a
  constant 1 column, so no bias is added per step and the bias gradient comes out of the
  weight-gradient product; zero columns pad the inner dimension to a multiple of 8 (MKL runs
  K = 357 about 10% slower than 360);
- one head over h^dec_t: [write w_t | write attention_t | read attention_{t+1}] (all three read
  the same state: one matrix product instead of three), with the affine parts of eq 22-24
  folded into the attention rows (folded_attention);
- with C > 1 channels the write head's rows, and without attention the encoder's x_hat columns,
  in (A, C, B) order instead of the parameters' (C, A, B): the Python loop keeps images as
  (B, H, C, W), rows of C channels side by side, so that one bmm applies a filterbank to every
  channel; the native loop indexes the patch the same way.

Constants (index vectors, the folding's scales, the pixel grid, 0-dim numbers) come from
``constant``: built on the model's device the first time a shape asks for them and kept, so
that a step on a GPU never copies a freshly made host tensor to the device (issue 27).
"""

from __future__ import annotations

import math
from typing import Callable, NamedTuple

import torch
import torch.nn as nn

from drawcli.model.parts import FILTER_EPS, LSTMCell

_CONSTANTS: dict = {}


def constant(key: tuple, make: Callable[[], torch.Tensor]) -> torch.Tensor:
    """The tensor ``make()`` gave for ``key`` (which names its shape, device and dtype), made once.

    Made outside inference mode and without gradient, so that a tensor first asked for under
    torch.inference_mode can later be used where autograd records."""
    t = _CONSTANTS.get(key)
    if t is None:
        with torch.inference_mode(False), torch.no_grad():
            t = _CONSTANTS[key] = make()
    return t


class Numbers(NamedTuple):
    """0-dim tensors for the Python loop's constants: a Python number makes each op convert it
    first (about 1.5 us per op on the CPU)."""

    one: torch.Tensor
    two: torch.Tensor
    neg_half: torch.Tensor
    filter_eps: torch.Tensor


def numbers(device: torch.device, dtype: torch.dtype) -> Numbers:
    return Numbers(*(constant(("number", value, device, dtype), lambda v=value: torch.full((), v, device=device, dtype=dtype))
                     for value in (1.0, 2.0, -0.5, FILTER_EPS)))


class LoopWeights(NamedTuple):
    """The parameters in the loops' layout (module doc); a tuple, so autograd.Function takes it as is."""

    enc_w: torch.Tensor  # (4H, inputs + 1 + pad): eq 5's [W | b | 0...], gates (i, f, g, o)
    dec_w: torch.Tensor  # (4H, Z + H + 1 + pad): eq 7's
    q_w: torch.Tensor  # (2Z, H): eq 1-2, [mu | log sigma]
    q_b: torch.Tensor
    heads_w: torch.Tensor  # (C N^2 + 10, H) with attention: [w | write window | read window]
    heads_b: torch.Tensor


def loop_weights(m) -> LoopWeights:
    """Model m's parameters in the loops' layout, differentiably."""
    return LoopWeights(gates_weight(m, m.encoder), gates_weight(m, m.decoder), m.q.weight, m.q.bias,
                       *heads_weight(m, read=True))


def channels_last_rows(m) -> torch.Tensor | None:
    """Index that reorders a (C, A, B)-ordered vector to (A, C, B) order, or None when C = 1.

    A x B is the write patch (N x N) with attention and the image (H x W) without."""
    c = m.channels
    if c == 1:
        return None
    a, b = (m.write_n, m.write_n) if m.attention else (m.height, m.width)
    dev = m.grid_x.device
    return constant(("channels_last", c, a, b, dev),
                    lambda: torch.arange(c * a * b, device=dev).view(c, a, b).transpose(0, 1).flatten())


def gates_weight(m, cell: LSTMCell) -> torch.Tensor:
    """[W | b | zeros] of an LSTM, rows in LSTMCell's gate order (i, f, g, o)."""
    lin = cell.linear
    pad = -(lin.in_features + 1) % 8
    weight = lin.weight
    idx = channels_last_rows(m)
    if cell is m.encoder and idx is not None and not m.attention:  # x_hat's columns, (C, H, W) -> (H, C, W)
        v = idx.numel()
        weight = torch.cat([weight[:, :v], weight[:, v : 2 * v][:, idx], weight[:, 2 * v :]], 1)
    return torch.cat([weight, lin.bias[:, None], lin.weight.new_zeros(lin.out_features, pad)], 1)


def heads_weight(m, read: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """[write head | write attention (| read attention)] weight and bias (read=False: sampling)."""
    idx = channels_last_rows(m)
    heads = [(m.write_head.weight, m.write_head.bias) if idx is None else (m.write_head.weight[idx], m.write_head.bias[idx])]
    if m.attention:
        heads.append(folded_attention(m, m.write_attention, m.write_n))
        if read:
            heads.append(folded_attention(m, m.read_attention, m.read_n))
    return torch.cat([w for w, _ in heads]), torch.cat([b for _, b in heads])


def folded_attention(m, head: nn.Linear, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """An attention head whose outputs are (g_X, g_Y, log delta, log sigma^2, log gamma).

    eq 22-23 are affine in the head's output and eq 24 is delta = k exp(log delta~) =
    exp(log delta~ + log k), so scaling rows and shifting biases folds them into the head:
    the loop then applies one exp per step (ATTENTION_FIELDS order) and nothing else.
    """
    A, B = m.width, m.height
    k = (max(A, B) - 1) / max(n - 1, 1)
    w = head.weight
    scale, shift = (constant(("fold", which, A, B, n, w.device, w.dtype),
                             lambda v=values: torch.tensor(v, dtype=w.dtype).to(w.device))
                    for which, values in (("scale", [(A + 1) / 2, (B + 1) / 2, 1.0, 1.0, 1.0]),
                                          ("shift", [(A + 1) / 2, (B + 1) / 2, math.log(k), 0.0, 0.0])))
    # raw rows are (g~_X, g~_Y, log sigma^2, log delta~, log gamma), eq 21
    order = constant(("fold_order", w.device), lambda: torch.tensor([0, 1, 3, 2, 4]).to(w.device))
    return w[order] * scale[:, None], head.bias[order] * scale + shift


def pixel_grid(m, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Pixel coordinates of both axes as one (2, L) tensor, L = max(A, B): one filterbank
    computation covers F_X and F_Y; the mask (None when A = B) zeroes the padding."""
    A, B = m.width, m.height
    dev = m.grid_x.device

    def make():
        grid = torch.zeros(2, max(A, B), device=dev, dtype=dtype)
        grid[0, :A], grid[1, :B] = m.grid_x, m.grid_y
        return grid

    grid = constant(("grid", A, B, dev, dtype), make)
    return grid, (None if A == B else constant(("grid_mask", A, B, dev, dtype), lambda: (grid > 0).to(dtype)))


def offsets(m, n: int, dtype: torch.dtype) -> torch.Tensor:
    """eq 19-20's (i - N/2 - 0.5), i = 1..N, in dtype on the model's device."""
    base = m.read_offsets if n == m.read_n else m.write_offsets
    return base if base.dtype == dtype else constant(("offsets", n, base.device, dtype), lambda: base.to(dtype))
