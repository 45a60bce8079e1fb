"""DRAW: A Recurrent Neural Network For Image Generation (Gregor et al., 2015).

One module, paper names, equation numbers from arXiv 1502.04623v2. No I/O here.

Shapes: B batch, T glimpses, H x W image (the paper's B x A), Z latent size,
N glimpse side. Images are float tensors in [0, 1] of shape (B, H, W).
"""

from __future__ import annotations

import math
import weakref
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

# Column order of every attention-parameter tensor this module returns.
ATTENTION_FIELDS = ("g_x", "g_y", "delta", "sigma2", "gamma")

FILTER_EPS = 1e-8  # guards the filterbank normalisation (eq 25, 26) when all weights underflow

# Step buffers of each model's last finished training step, reused by its next one (see DRAW._loop).
# Kept outside the module so that state_dict, deepcopy and pickling never see them.
_WORKSPACES: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()

# The LSTM products of one step are (B x 528) @ (528 x 1024)-sized: too short for MKL's sgemm,
# which re-packs the weight on every call and reaches ~75% of its large-matrix rate here. oneDNN's
# linear with a weight packed once per loop (the T steps reuse it) runs them 25-40% faster on
# x86 CPUs (benchmarks/speed.py measures both). These are the private ops PyTorch's own compiler
# uses for CPU linear layers, so they are probed once and torch.mm is the fallback.
_PACKED = {"enabled": True, "works": None}


def set_packed_gemm(enabled: bool) -> None:
    """Use oneDNN's packed-weight products on CPU (default) or plain torch.mm everywhere."""
    _PACKED["enabled"] = bool(enabled)


def _packed_gemm_works() -> bool:
    if _PACKED["works"] is None:
        try:
            g = torch.Generator().manual_seed(0)
            a, w = torch.randn(3, 40, generator=g), torch.randn(24, 40, generator=g)
            packed = torch.ops.mkldnn._reorder_linear_weight(w, 3)
            y = torch.ops.mkldnn._linear_pointwise(a, packed, None, "none", [], "")
            _PACKED["works"] = bool(torch.allclose(y, a @ w.t(), rtol=1e-4, atol=1e-4))
        except Exception:  # op missing in this build, or refusing this CPU: torch.mm it is
            _PACKED["works"] = False
    return _PACKED["works"]


def _step_matmul(w: torch.Tensor, rows: int):
    """A function x, out -> x @ w.t() for a weight that every step of one loop reuses.

    With oneDNN the weight is packed once here and the product comes back as a new tensor;
    otherwise it is torch.mm into ``out``. Either way, use the returned tensor.
    """
    # Below ~32 rows the packing and oneDNN's per-call overhead cost what the faster kernel saves.
    if (_PACKED["enabled"] and rows >= 32 and w.device.type == "cpu" and w.dtype == torch.float32
            and _packed_gemm_works()):
        packed = torch.ops.mkldnn._reorder_linear_weight(w.detach().contiguous(), rows)
        linear = torch.ops.mkldnn._linear_pointwise.default
        return lambda x, out=None: linear(x, packed, None, "none", [], "")
    wt = w.t()
    return lambda x, out=None: torch.mm(x, wt, out=out)


class LSTMCell(nn.Module):
    """A standard LSTM cell with one GEMM per step: W [x, h] + b.

    Concatenating input and hidden state halves the number of matrix products
    per step compared with torch.nn.LSTMCell's two, which matters for DRAW's
    long, narrow time loop.
    """

    def __init__(self, input_size: int, hidden_size: int):
        super().__init__()
        self.hidden_size = hidden_size
        self.linear = nn.Linear(input_size + hidden_size, 4 * hidden_size)
        with torch.no_grad():
            # Forget-gate bias 1 (Gers et al.): keeps early gradients flowing through c.
            self.linear.bias[hidden_size : 2 * hidden_size].fill_(1.0)

    def forward(self, x: torch.Tensor, state: tuple[torch.Tensor, torch.Tensor]):
        h, c = state
        gates = self.linear(torch.cat([x, h], dim=1))
        i, f, g, o = gates.chunk(4, dim=1)
        c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
        h = torch.sigmoid(o) * torch.tanh(c)
        return h, c


@dataclass
class DrawOutput:
    """Losses in nats per image, shape (B,). Optional per-step records when asked for."""

    lx: torch.Tensor  # L^x = -log D(x | c_T), eq 9
    lz: torch.Tensor  # L^z, eq 10-11 (analytic KL, summed over t and z dims)
    log_ratio: torch.Tensor | None = None  # sum_t log q(z_t|.) - log p(z_t) at the sampled z
    canvases: torch.Tensor | None = None  # (T, B, H, W) canvas logits c_1..c_T
    read: torch.Tensor | None = None  # (T, B, 5) read attention, ATTENTION_FIELDS
    write: torch.Tensor | None = None  # (T, B, 5) write attention, ATTENTION_FIELDS

    @property
    def loss(self) -> torch.Tensor:
        """L = L^x + L^z per image (eq 12)."""
        return self.lx + self.lz


class DRAW(nn.Module):
    def __init__(
        self,
        height: int = 28,
        width: int = 28,
        steps: int = 64,
        hidden: int = 256,
        embed: int = 100,
        attention: bool = True,
        read_n: int = 2,
        write_n: int = 5,
    ):
        super().__init__()
        self.height, self.width = height, width
        self.steps, self.hidden, self.embed = steps, hidden, embed
        self.attention = attention
        self.read_n, self.write_n = read_n, write_n

        pixels = height * width
        read_size = 2 * read_n * read_n if attention else 2 * pixels
        write_size = write_n * write_n if attention else pixels
        self.encoder = LSTMCell(read_size + hidden, hidden)  # eq 5: input [r_t, h^dec_{t-1}]
        self.decoder = LSTMCell(embed, hidden)  # eq 7
        self.q = nn.Linear(hidden, 2 * embed)  # eq 1-2: mu_t and log sigma_t from h^enc_t
        self.write_head = nn.Linear(hidden, write_size)  # eq 18 / 28: w_t = W(h^dec_t)
        if attention:
            # eq 21: (g~_X, g~_Y, log sigma^2, log delta~, log gamma) = W(h^dec); separate heads.
            self.read_attention = nn.Linear(hidden, 5)
            self.write_attention = nn.Linear(hidden, 5)
            self._init_attention(self.read_attention, read_n)
            self._init_attention(self.write_attention, write_n, write=True)

        # Index vectors hoisted out of the time loop. Pixel coordinates a, b are 1-based,
        # so g~ = 0 puts the grid centre at (A+1)/2, the image centre (eq 22-23).
        self.register_buffer("grid_x", torch.arange(1, width + 1, dtype=torch.float32), persistent=False)
        self.register_buffer("grid_y", torch.arange(1, height + 1, dtype=torch.float32), persistent=False)
        # eq 19-20 with the paper's 1-based i: offsets (i - N/2 - 0.5), i = 1..N, symmetric about 0.
        for name, n in (("read_offsets", read_n), ("write_offsets", write_n)):
            self.register_buffer(name, torch.arange(1, n + 1, dtype=torch.float32) - n / 2 - 0.5, persistent=False)

    # ----------------------------------------------------------------- configuration
    def config(self) -> dict:
        """Plain-typed constructor arguments (stored in checkpoints)."""
        return dict(
            height=self.height,
            width=self.width,
            steps=self.steps,
            hidden=self.hidden,
            embed=self.embed,
            attention=self.attention,
            read_n=self.read_n,
            write_n=self.write_n,
        )

    # ----------------------------------------------------------------- attention
    def _init_attention(self, head: nn.Linear, n: int, write: bool = False) -> None:
        """Start with the N x N grid tiling the whole image with overlapping filters.

        The paper does not give an initialisation. With zero biases, eq 24 gives
        delta = (max(A,B)-1)/(N-1): for N = 2 the two centres sit on the image's
        outermost pixels (1 and A), which are blank in MNIST, so the read sees
        nothing of the digit and training stalls in posterior collapse. Here the
        centred grid has spacing delta = max(A,B)/N (one cell per filter) and
        sigma = delta/2, so every pixel is read from the first step.

        For the write head, gamma starts at 1/delta^2: the normalised filters spread
        each patch value over about delta^2 pixels, so (1/gamma) F_Y^T w F_X then adds
        about w to each pixel, the same scale as the non-attention write (eq 18).
        Without it the canvas moves ~delta^2 times slower and training stalls early.
        """
        side = max(self.width, self.height)
        delta = side / n
        with torch.no_grad():
            head.bias.zero_()
            head.bias[2] = math.log((delta / 2) ** 2)  # log sigma^2
            head.bias[3] = math.log(delta * max(n - 1, 1) / (side - 1))  # log delta~ from eq 24
            if write:
                head.bias[4] = -2 * math.log(delta)  # log gamma
            head.weight.mul_(0.1)  # start near the tiling for every decoder state

    def attention_params(self, h: torch.Tensor, head: nn.Linear, n: int) -> torch.Tensor:
        """Map a decoder state to (B, 5) [g_x, g_y, delta, sigma^2, gamma] (eq 21-24)."""
        gx_, gy_, log_sigma2, log_delta_, log_gamma = head(h).unbind(-1)
        A, B = self.width, self.height
        gx = (A + 1) / 2 * (gx_ + 1)  # eq 22
        gy = (B + 1) / 2 * (gy_ + 1)  # eq 23
        # eq 24; for N = 1 the single centre sits at g and delta only sets the window's drawn size.
        delta = (max(A, B) - 1) / max(n - 1, 1) * torch.exp(log_delta_)
        return torch.stack([gx, gy, delta, torch.exp(log_sigma2), torch.exp(log_gamma)], dim=-1)

    def filterbank(self, params: torch.Tensor, offsets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Gaussian filterbanks F_X (B, N, A) and F_Y (B, N, B) (eq 19-20, 25-26)."""
        gx, gy, delta, sigma2 = params[:, 0:1], params[:, 1:2], params[:, 2:3], params[:, 3:4]
        mu_x = gx + offsets * delta  # eq 19: (B, N)
        mu_y = gy + offsets * delta  # eq 20
        two_s2 = (2 * sigma2).unsqueeze(-1)
        fx = torch.exp(-((self.grid_x - mu_x.unsqueeze(-1)) ** 2) / two_s2)  # eq 25
        fy = torch.exp(-((self.grid_y - mu_y.unsqueeze(-1)) ** 2) / two_s2)  # eq 26
        fx = fx / (fx.sum(-1, keepdim=True) + FILTER_EPS)  # Z_X: each row sums to 1
        fy = fy / (fy.sum(-1, keepdim=True) + FILTER_EPS)  # Z_Y
        return fx, fy

    def read_glimpse(self, x: torch.Tensor, x_hat: torch.Tensor, params: torch.Tensor) -> torch.Tensor:
        """eq 27: gamma [F_Y x F_X^T, F_Y x_hat F_X^T], flattened to (B, 2 N^2)."""
        fx, fy = self.filterbank(params, self.read_offsets)
        b, n = x.shape[0], self.read_n
        both = torch.stack([x, x_hat], dim=1).reshape(b, 2 * self.height, self.width)
        right = torch.bmm(both, fx.transpose(1, 2))  # (B, 2H, N): [x F_X^T ; x_hat F_X^T]
        right = right.reshape(b, 2, self.height, n).transpose(1, 2).reshape(b, self.height, 2 * n)
        glimpse = torch.bmm(fy, right)  # (B, N, 2N): F_Y x F_X^T next to F_Y x_hat F_X^T
        return params[:, 4:5] * glimpse.reshape(b, 2 * n * n)

    def write_patch(self, w: torch.Tensor, params: torch.Tensor) -> torch.Tensor:
        """eq 29: (1 / gamma) F_Y^T w F_X for a patch w of shape (B, N, N)."""
        fx, fy = self.filterbank(params, self.write_offsets)
        out = torch.bmm(torch.bmm(fy.transpose(1, 2), w), fx)  # (B, H, W)
        return out / params[:, 4].reshape(-1, 1, 1)

    def read(self, x, x_hat, h_dec):
        """eq 17 (no attention) or eq 27; returns (r_t, attention params or None)."""
        if not self.attention:
            return torch.cat([x.flatten(1), x_hat.flatten(1)], dim=1), None
        params = self.attention_params(h_dec, self.read_attention, self.read_n)
        return self.read_glimpse(x, x_hat, params), params

    def write(self, h_dec):
        """eq 18 (no attention) or eq 28-29; returns (canvas update, attention params or None)."""
        w = self.write_head(h_dec)
        if not self.attention:
            return w.reshape(-1, self.height, self.width), None
        params = self.attention_params(h_dec, self.write_attention, self.write_n)
        return self.write_patch(w.reshape(-1, self.write_n, self.write_n), params), params

    # ----------------------------------------------------------------- the model
    #
    # forward() and generate() run eq 3-8 in one lean loop (_loop) with a hand-written
    # backward (_loop_backward), joined by the autograd Function _DrawLoop below. Why: per
    # step the matrix products are small (batch x 520 x 1024), so eager autograd spends
    # more time on per-op bookkeeping than on arithmetic, and T small weight-gradient
    # products run far below the machine's rate. The loop writes every step's inputs into
    # preallocated (T, B, .) buffers and forms each weight gradient as ONE (T*B)-row product
    # after the backward recurrence, as cuDNN does for RNNs. filterbank/read/write above are
    # the readable reference; tests/test_fastpath.py checks that forward and gradients equal
    # a straightforward autograd implementation (benchmarks/baseline.py) to 1e-6 in float64.

    def _fused_weights(self) -> tuple[torch.Tensor, ...]:
        """The parameters rearranged for the loop, differentiably (autograd maps gradients back).

        Parameters and state_dict keys stay as declared in __init__; this only builds views/copies:
        - LSTM weights as [W | b | 0...] (the loop's inputs hold a constant 1 column): no bias copy
          per step, and the bias gradient comes out of the weight-gradient product for free. Zero
          columns pad the inner dimension to a multiple of 8 (MKL runs K = 357 ~10% slower than 360).
        - LSTM gate rows reordered (i, f, g, o) -> (i, f, o, g): one sigmoid covers three gates.
        - One head over h^dec_t: [write w_t | write attention_t | read attention_{t+1}] (all three
          read the same state: one matrix product instead of three).
        """
        return (self._gates_weight(self.encoder), self._gates_weight(self.decoder), self.q.weight, self.q.bias,
                *self._heads_weight(read=True))

    def _gates_weight(self, cell: LSTMCell) -> torch.Tensor:
        """[W | b | zeros] of an LSTM, rows in gate order (i, f, o, g)."""
        lin, hd = cell.linear, self.hidden
        dev = lin.weight.device
        perm = torch.cat([torch.arange(0, 2 * hd, device=dev), torch.arange(3 * hd, 4 * hd, device=dev),
                          torch.arange(2 * hd, 3 * hd, device=dev)])
        pad = -(lin.in_features + 1) % 8
        return torch.cat([lin.weight, lin.bias[:, None], lin.weight.new_zeros(4 * hd, pad)], 1)[perm]

    def _heads_weight(self, read: bool) -> tuple[torch.Tensor, torch.Tensor]:
        """[write head | write attention (| read attention)] weight and bias (read=False: sampling)."""
        heads = [(self.write_head.weight, self.write_head.bias)]
        if self.attention:
            heads.append(self._folded_attention(self.write_attention, self.write_n))
            if read:
                heads.append(self._folded_attention(self.read_attention, self.read_n))
        return torch.cat([w for w, _ in heads]), torch.cat([b for _, b in heads])

    def _folded_attention(self, head: nn.Linear, n: int) -> tuple[torch.Tensor, torch.Tensor]:
        """An attention head whose outputs are (g_X, g_Y, log delta, log sigma^2, log gamma).

        eq 22-23 are affine in the head's output and eq 24 is delta = k exp(log delta~) =
        exp(log delta~ + log k), so scaling rows and shifting biases folds them into the head:
        the loop then applies one exp per step (ATTENTION_FIELDS order) and nothing else.
        """
        A, B = self.width, self.height
        k = (max(A, B) - 1) / max(n - 1, 1)
        scale = head.weight.new_tensor([(A + 1) / 2, (B + 1) / 2, 1.0, 1.0, 1.0])
        shift = head.weight.new_tensor([(A + 1) / 2, (B + 1) / 2, math.log(k), 0.0, 0.0])
        order = [0, 1, 3, 2, 4]  # raw rows are (g~_X, g~_Y, log sigma^2, log delta~, log gamma), eq 21
        return head.weight[order] * scale[:, None], head.bias[order] * scale + shift

    def _grid(self, dtype) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Pixel coordinates of both axes as one (2, L) tensor, L = max(A, B): one filterbank
        computation covers F_X and F_Y; the mask zeroes the padding when A != B."""
        A, B = self.width, self.height
        grid = self.grid_x.new_zeros(2, max(A, B), dtype=dtype)
        grid[0, :A], grid[1, :B] = self.grid_x, self.grid_y
        return grid, (None if A == B else (grid > 0).to(dtype))

    def _filters(self, p, offsets, grid, mask, f=None, d=None):
        """F_X, F_Y stacked as (B, 2, N, L) from p = (B, 5) ATTENTION_FIELDS; also grid - mu.
        f, d: optional preallocated outputs (fresh MB-sized temporaries each step page-fault)."""
        mu = torch.addcmul(p[:, :2, None], p[:, 2:3, None], offsets)  # eq 19-20: (B, 2, N)
        d = torch.sub(grid[:, None, :], mu[..., None], out=d)  # a - mu_i, b - mu_j: (B, 2, N, L)
        f = torch.mul(d, d, out=f)
        f.mul_((-0.5 / p[:, 3]).view(-1, 1, 1, 1)).exp_()  # eq 25-26 before normalising
        if mask is not None:
            f.mul_(mask[:, None, :])
        f.div_(f.sum(-1, keepdim=True).add_(FILTER_EPS))  # Z_X, Z_Y
        return f, d

    @staticmethod
    def _mu_map(offsets: torch.Tensor) -> torch.Tensor:
        """(2N, 3) matrix taking dL/dmu (axis, i) to dL/d(g_X, g_Y, delta) (eq 19-20: mu = g + offset delta)."""
        n = len(offsets)
        m = offsets.new_zeros(2, n, 3)
        m[0, :, 0], m[1, :, 1], m[:, :, 2] = 1, 1, offsets
        return m.view(2 * n, 3)

    def _filters_backward(self, p, f, d, dfx, dfy, mu_map, out):
        """dL/d(g_X, g_Y, log delta, log sigma^2) into out[:, :4] (the folded head's outputs);
        the caller has written dL/d log gamma into out[:, 4]."""
        b, _, n, L = f.shape
        if self.width == self.height:
            df = torch.stack([dfx, dfy], 1)
        else:
            df = f.new_zeros(b, 2, n, L)
            df[:, 0, :, : self.width], df[:, 1, :, : self.height] = dfx, dfy
        de = df.sub_((df * f).sum(-1, keepdim=True)).mul_(f)  # through Z and exp: dL/d(exponent)
        m = de.mul_(d)  # times d exponent / d mu = (a - mu) / sigma^2, sigma^2 applied below
        torch.mm(m.sum(-1).view(b, 2 * n), mu_map, out=out[:, :3])
        torch.sum(m.mul_(d), (1, 2, 3), out=out[:, 3]).mul_(0.5)  # dL/d log sigma^2, times sigma^2
        out[:, :4].div_(p[:, 3:4])
        out[:, 2].mul_(p[:, 2])  # the head emits log delta: dL/d log delta = delta dL/d delta

    @staticmethod
    def _lstm(pre, a, c_prev, c, tc, h):
        """One LSTM step on pre-activations pre (B, 4H) in gate order (i, f, o, g).

        Writes the activated gates into a (pre itself is fine), c_t into c, tanh(c_t) into tc
        (both kept for backward) and h_t into h (a view into the next step's input buffer, so
        no torch.cat is needed).
        """
        hd = c.shape[1]
        torch.sigmoid(pre[:, : 3 * hd], out=a[:, : 3 * hd])  # i, f, o: one op thanks to the gate order
        torch.mul(pre[:, 3 * hd :], 2, out=a[:, 3 * hd :]).sigmoid_().mul_(2).sub_(1)  # g = tanh, as in _tanh_
        torch.mul(a[:, hd : 2 * hd], c_prev, out=c)
        c.addcmul_(a[:, :hd], a[:, 3 * hd :])  # c_t = f c_{t-1} + i g
        torch.mul(c, 2, out=tc).sigmoid_().mul_(2).sub_(1)  # tanh(c_t), as in _tanh_
        torch.mul(a[:, 2 * hd : 3 * hd], tc, out=h)  # h_t = o tanh(c_t)

    @staticmethod
    def _lstm_backward(a, c_prev, tc, dh, dc):
        """Backward of _lstm: overwrites a (activated gates) with dL/d(pre-activations) and
        turns dc (dL/dc_t from later steps) into dL/dc_{t-1}. Reusing a saves a (T, B, 4H) buffer."""
        hd = dc.shape[1]
        i, f, o, g = a.split(hd, 1)
        dc.add_(_aten.tanh_backward(dh * o, tc))  # dL/dc_t, also through h_t = o tanh(c_t)
        da = torch.empty_like(a)
        di, df, do, dg = da.split(hd, 1)
        torch.mul(dc, g, out=di)
        torch.mul(dc, c_prev, out=df)
        torch.mul(dh, tc, out=do)
        torch.mul(dc, i, out=dg)
        dc.mul_(f)  # dL/dc_{t-1}
        # ATen's fused derivative kernels (one op each instead of three): s (1 - s) and 1 - g^2.
        _aten.sigmoid_backward.grad_input(da[:, : 3 * hd], a[:, : 3 * hd], grad_input=a[:, : 3 * hd])
        _aten.tanh_backward.grad_input(dg, g, grad_input=g)
        return a

    def _loop(self, x, eps, weights, save: bool, record: bool):
        """eq 3-8 for t = 1..T. Returns (c_T, [mu | log sigma] as (T, B, 2Z), records, saved).

        save=True keeps every step's inputs and activations for _loop_backward; save=False
        (no gradient needed: evaluation) keeps two slots and reuses them, so memory does
        not grow with T.
        """
        enc_w, dec_w, q_w, q_b, heads_w, heads_b = weights
        T, hd, Z, att = self.steps, self.hidden, self.embed, self.attention
        b, Hi, Wi = x.shape
        n = self.read_n
        kw = self.write_n**2 if att else Hi * Wi  # write size
        R = 2 * n * n if att else Hi * Wi  # encoder input that changes with t (r_t, or x_hat_t)
        lead = 0 if att else Hi * Wi  # encoder input that does not (x, in r_t = [x, x_hat_t], eq 17)
        ke, kd = enc_w.shape[1] - lead, dec_w.shape[1]  # widths of [W | b | 0...] from _fused_weights
        slots, steps = (T + 1, T) if save else (2, 1)
        slot = (lambda t: t) if save else (lambda t: t % 2)
        gslot = (lambda t: t) if save else (lambda t: 0)

        # Step buffers. Training reuses the previous step's set once its backward is done (page
        # faults on ~300 MB of fresh memory per step cost several percent on CPU).
        ws = self._take_workspace((b, x.dtype, x.device)) if save else None
        if ws is None:
            ws = dict(key=(b, x.dtype, x.device))
            # Inputs of every step's products, laid out so that no torch.cat is needed; the final
            # column of ones multiplies the bias column of [W | b].
            ws["enc_in"] = x.new_zeros(slots, b, ke)  # [r_t | h^dec_{t-1} | h^enc_{t-1} | 1 | 0...], eq 5
            ws["dec_in"] = x.new_zeros(slots, b, kd)  # [z_t | h^dec_{t-1} | 1 | 0...], eq 7
            ws["enc_in"][:, :, R + 2 * hd] = 1
            ws["dec_in"][:, :, Z + hd] = 1
            for name, rows, width in (("c_enc", slots, hd), ("c_dec", slots, hd), ("g_enc", steps, 4 * hd),
                                      ("g_dec", steps, 4 * hd), ("tc_enc", steps, hd), ("tc_dec", steps, hd),
                                      ("se", steps, Z), ("heads", slots, heads_w.shape[0])):
                ws[name] = x.new_empty(rows, b, width)
            if att:  # [x | x_hat_t] side by side per row: one bmm applies F_Y to both images (eq 27)
                ws["xb"] = x.new_empty(steps, b, Hi, 2, Wi)
                L = max(Hi, Wi)
                for name, nn_ in (("r", n), ("w", self.write_n)):  # filterbanks and grid - mu
                    ws["f_" + name], ws["d_" + name] = x.new_empty(2, steps, b, 2, nn_, L).unbind(0)
        enc_in, dec_in, c_enc, c_dec, heads = ws["enc_in"], ws["dec_in"], ws["c_enc"], ws["c_dec"], ws["heads"]
        g_enc, g_dec, tc_enc, tc_dec, se = ws["g_enc"], ws["g_dec"], ws["tc_enc"], ws["tc_dec"], ws["se"]
        enc_in[0, :, R : R + 2 * hd] = 0  # h_0 = 0 (both LSTMs), c_0 = 0
        dec_in[0, :, Z : Z + hd] = 0
        c_enc[0], c_dec[0] = 0, 0
        mu_ls = x.new_empty(T, b, 2 * Z)  # q's output [mu_t | log sigma_t], eq 1-2
        heads[0] = heads_b  # h^dec_0 = 0: the first read window is the bias alone
        # x's part of the encoder input is the same at every step: one product outside the loop.
        base = None if not lead else x.reshape(b, lead) @ enc_w[:, :lead].t()
        enc_mm = _step_matmul(enc_w[:, lead:], b)  # eq 5's product, weight packed once for all T steps
        dec_mm = _step_matmul(dec_w, b)  # eq 7's
        canvas, sig = x.new_zeros(b, Hi, Wi), x.new_empty(b, Hi, Wi)  # c_0 = 0
        reads, writes = [], []
        if att:
            grid, mask = self._grid(x.dtype)
            heads[0, :, kw:].view(b, 2, 5)[:, :, 2:].exp_()  # delta, sigma^2, gamma from their logs
            xb = ws["xb"]
            xb[:, :, :, 0] = x
        if record:
            canvases = x.new_empty(T, b, Hi, Wi)
            rec_read, rec_write = (x.new_empty(T, b, 5), x.new_empty(T, b, 5)) if att else (None, None)

        for t in range(T):
            s, s1, gs = slot(t), slot(t + 1), gslot(t)
            ei, ei1 = enc_in[s], enc_in[s1]
            torch.sigmoid(canvas, out=sig)
            if att:
                xbt = xb[t if save else 0]
                torch.sub(x, sig, out=xbt[:, :, 1])  # eq 3: x_hat = x - sigmoid(c_{t-1})
                p = heads[s][:, kw + 5 :]  # read window from h^dec_{t-1}, eq 21-24
                f, d = self._filters(p, self.read_offsets, grid, mask, ws["f_r"][gs], ws["d_r"][gs])
                fx, fy = f[:, 0, :, :Wi], f[:, 1, :, :Hi]
                left = torch.bmm(fy, xbt.view(b, Hi, 2 * Wi))  # (B, N, 2W): F_Y x | F_Y x_hat
                glimpse = torch.bmm(left.view(b, 2 * n, Wi), fx.transpose(1, 2))  # rows (i, image)
                torch.mul(glimpse.view(b, R), p[:, 4:5], out=ei[:, :R])  # eq 27, read_glimpse's layout
                if save:
                    reads.append((f, d, left))
                if record:
                    rec_read[t] = p
            else:
                torch.sub(x, sig, out=ei[:, :R].view(b, Hi, Wi))  # eq 3 (r_t = [x, x_hat], eq 17)
            ge = enc_mm(ei, out=g_enc[gs])  # eq 5
            if lead:
                ge.add_(base)
            h_enc = ei1[:, R + hd : R + 2 * hd]
            self._lstm(ge, g_enc[gs], c_enc[s], c_enc[s1], tc_enc[gs], h_enc)
            q = torch.addmm(q_b, h_enc, q_w.t(), out=mu_ls[t])  # eq 1-2
            sigma_eps = torch.exp(q[:, Z:], out=se[gs]).mul_(eps[t])
            di = dec_in[s]
            torch.add(q[:, :Z], sigma_eps, out=di[:, :Z])  # eq 6: z_t = mu_t + sigma_t eps_t
            gd = dec_mm(di, out=g_dec[gs])  # eq 7
            h_dec = ei1[:, R : R + hd]
            self._lstm(gd, g_dec[gs], c_dec[s], c_dec[s1], tc_dec[gs], h_dec)
            dec_in[s1][:, Z : Z + hd] = h_dec
            hh = torch.addmm(heads_b, h_dec, heads_w.t(), out=heads[s1])  # eq 18/28 and 21
            if att:
                hh[:, kw:].view(b, 2, 5)[:, :, 2:].exp_()
                p = hh[:, kw : kw + 5]
                f, d = self._filters(p, self.write_offsets, grid, mask, ws["f_w"][gs], ws["d_w"][gs])
                fx, fy = f[:, 0, :, :Wi], f[:, 1, :, :Hi]
                # eq 29 with 1/gamma applied to the N x N patch instead of the H x W image.
                w = torch.div(hh[:, :kw], p[:, 4:5]).view(b, self.write_n, self.write_n)
                u = torch.bmm(w, fx)  # w F_X / gamma first: (B, N, W) products are ~2x faster than (B, H, N)
                canvas.baddbmm_(fy.transpose(1, 2), u)  # eq 8: c_t = c_{t-1} + F_Y^T w F_X / gamma, in place
                if save:
                    writes.append((f, d, u, w))
                if record:
                    rec_write[t] = p
            else:
                canvas.add_(hh.view(b, Hi, Wi))  # eq 8, 18
            if record:
                canvases[t] = canvas

        records = ()
        if record:
            records = (canvases, rec_read, rec_write) if att else (canvases,)
        saved = None
        if save:
            saved = dict(ws, x=x, weights=weights, reads=reads, writes=writes, workspace=ws)
        return canvas, mu_ls, records, saved

    def _loop_backward(self, sv, d_canvas, d_mu_ls, d_lz, mu_ls, need_x: bool):
        """Backpropagation through time for _loop: (dx or None, gradients of the fused weights)."""
        x = sv["x"]
        enc_w, dec_w, q_w, q_b, heads_w, heads_b = sv["weights"]
        enc_in, dec_in, heads, g_enc, g_dec = sv["enc_in"], sv["dec_in"], sv["heads"], sv["g_enc"], sv["g_dec"]
        T, hd, Z, att = self.steps, self.hidden, self.embed, self.attention
        b, Hi, Wi = x.shape
        n = self.read_n
        kw = self.write_n**2 if att else Hi * Wi
        R = 2 * n * n if att else Hi * Wi
        lead = 0 if att else Hi * Wi
        ke, kd = enc_in.shape[2], dec_in.shape[2]
        # Input gradients of each step's products: only the columns of real inputs (not the ones or
        # padding columns), with the weights packed once for all T steps.
        enc_mm_t = _step_matmul(enc_w[:, lead : lead + R + 2 * hd].t(), b)
        dec_mm_t = _step_matmul(dec_w[:, : Z + hd].t(), b)

        d_canvas = x.new_zeros(b, Hi, Wi) if d_canvas is None else d_canvas.clone()  # dL/dc_t
        dq = x.new_zeros(T, b, 2 * Z)  # dL/d[mu_t | log sigma_t]
        if d_lz is not None:  # eq 11: dL^z/dmu = mu, dL^z/dlog sigma = sigma^2 - 1, in bulk
            mu, log_sigma = mu_ls.split(Z, -1)
            torch.mul(mu, d_lz.view(1, b, 1), out=dq[..., :Z])
            torch.mul(log_sigma, 2, out=dq[..., Z:]).exp_().sub_(1).mul_(d_lz.view(1, b, 1))
        if d_mu_ls is not None:
            dq += d_mu_ls
        d_heads = x.new_zeros(T + 1, b, heads_w.shape[0])  # slot t: heads over h^dec_{t-1}
        dc_enc, dc_dec = x.new_zeros(b, hd), x.new_zeros(b, hd)
        d_ei_next, d_di_next = x.new_zeros(b, ke), x.new_zeros(b, kd)  # step t+1's input gradients
        dx = torch.zeros_like(x) if need_x else None
        if att:
            map_r, map_w = self._mu_map(self.read_offsets.to(x.dtype)), self._mu_map(self.write_offsets.to(x.dtype))

        for t in reversed(range(T)):
            hh, dhh = heads[t + 1], d_heads[t + 1]
            # write at step t (eq 8, 29; eq 18): every update receives dL/dc_t
            if att:
                f, d, u, w = sv["writes"][t]  # update = F_Y^T u, u = (w / gamma) F_X
                fx, fy = f[:, 0, :, :Wi], f[:, 1, :, :Hi]
                p = hh[:, kw : kw + 5]
                du = torch.bmm(fy, d_canvas)  # (B, N, W)
                dfy = torch.bmm(u, d_canvas.transpose(1, 2))  # (B, N, H)
                dw = torch.bmm(du, fx.transpose(1, 2))  # dL/d(w / gamma): (B, N, N)
                dfx = torch.bmm(w.transpose(1, 2), du)  # (B, N, W)
                torch.sum(dw * w, (1, 2), out=dhh[:, kw + 4]).neg_()  # dL/d log gamma
                torch.div(dw.view(b, kw), p[:, 4:5], out=dhh[:, :kw])
                self._filters_backward(p, f, d, dfx, dfy, map_w, dhh[:, kw : kw + 5])
            else:
                dhh[:, :kw] = d_canvas.view(b, kw)
            # h^dec_t feeds the heads and step t+1's encoder and decoder (eq 5, 7)
            dh = torch.add(d_ei_next[:, R : R + hd], d_di_next[:, Z : Z + hd]).addmm_(dhh, heads_w)
            gd = self._lstm_backward(g_dec[t], sv["c_dec"][t], sv["tc_dec"][t], dh, dc_dec)
            d_di = dec_mm_t(gd)  # [dz_t | dh^dec_{t-1}]
            dz = d_di[:, :Z]
            dq[t, :, :Z] += dz  # eq 6: z = mu + sigma eps
            dq[t, :, Z:].addcmul_(dz, sv["se"][t])  # d/d log sigma = sigma eps dz
            dh = torch.addmm(d_ei_next[:, R + hd : R + 2 * hd], dq[t], q_w)  # h^enc_t feeds q and step t+1's encoder
            ge = self._lstm_backward(g_enc[t], sv["c_enc"][t], sv["tc_enc"][t], dh, dc_enc)
            d_ei = enc_mm_t(ge)  # [dr_t | dh^dec_{t-1} | dh^enc_{t-1}]
            # read at step t (eq 27; eq 17)
            if att:
                f, d, left = sv["reads"][t]
                fx, fy = f[:, 0, :, :Wi], f[:, 1, :, :Hi]
                p = heads[t][:, kw + 5 :]
                dr = d_ei[:, :R]
                dhr = d_heads[t][:, kw + 5 :]
                torch.sum(dr * enc_in[t][:, :R], 1, out=dhr[:, 4])  # dL/d log gamma (r = gamma G)
                dg = (dr * p[:, 4:5]).view(b, 2 * n, n)
                dleft = torch.bmm(dg, fx)  # (B, 2N, W)
                dfx = torch.bmm(dg.transpose(1, 2), left.view(b, 2 * n, Wi))
                dleft = dleft.view(b, n, 2 * Wi)
                xbt = sv["xb"][t].view(b, Hi, 2 * Wi)
                dfy = torch.bmm(dleft, xbt.transpose(1, 2))
                dxb = torch.bmm(fy.transpose(1, 2), dleft).view(b, Hi, 2, Wi)
                self._filters_backward(p, f, d, dfx, dfy, map_r, dhr)
                d_xhat, x_hat = dxb[:, :, 1], sv["xb"][t][:, :, 1]
                if need_x:
                    dx += dxb[:, :, 0]
            else:
                d_xhat, x_hat = d_ei[:, :R].view(b, Hi, Wi), enc_in[t][:, :R].view(b, Hi, Wi)
            if need_x:
                dx += d_xhat
            d_canvas.sub_(_aten.sigmoid_backward(d_xhat, x - x_hat))  # dL/dc_{t-1}; x - x_hat = sigmoid(c_{t-1})
            d_ei_next, d_di_next = d_ei, d_di

        # Weight gradients: one (T*B)-row product each instead of T small ones (bias included: the
        # inputs' column of ones).
        rows = T * b
        ge_all, gd_all = g_enc.view(rows, 4 * hd), g_dec.view(rows, 4 * hd)
        d_enc_w = ge_all.t() @ enc_in[:T].view(rows, ke)
        if lead:
            g_sum = g_enc.sum(0)  # x's input is the same at every step
            d_enc_w = torch.cat([g_sum.t() @ x.reshape(b, lead), d_enc_w], 1)
            if need_x:
                dx += (g_sum @ enc_w[:, :lead]).view(b, Hi, Wi)
        d_dec_w = gd_all.t() @ dec_in[:T].view(rows, kd)
        dq_all = dq.view(rows, 2 * Z)
        d_q_w = dq_all.t() @ enc_in[1:, :, R + hd : R + 2 * hd].reshape(rows, hd)  # h^enc_1..T
        d_heads_w = d_heads[1:].view(rows, -1).t() @ enc_in[1:, :, R : R + hd].reshape(rows, hd)  # h^dec_1..T
        grads = (d_enc_w, d_dec_w, d_q_w, dq_all.sum(0), d_heads_w, d_heads.sum((0, 1)))
        _WORKSPACES[self] = sv["workspace"]  # this forward's buffers are free for the next one
        return dx, grads

    def _take_workspace(self, key):
        """The step buffers of the last finished training step, if they fit (else None)."""
        ws = _WORKSPACES.pop(self, None)
        return ws if ws is not None and ws["key"] == key else None

    def forward(
        self,
        x: torch.Tensor,
        record: bool = False,
        log_ratio: bool = False,
        generator: torch.Generator | None = None,
        eps: torch.Tensor | None = None,
    ) -> DrawOutput:
        """Encode and reconstruct ``x`` (B, H, W) in [0, 1]; losses in nats per image.

        eps: the standard-normal noise of every step, (T, B, Z); drawn here (from
        ``generator``) when not given. Distributed training passes slices of one
        global draw so that any number of processes sees the same noise.

        record: also return every canvas and attention window (for pictures; these carry
        no gradient).
        log_ratio: also return sum_t log q(z_t | x, z_<t) - log p(z_t) at the sampled
        z, needed for importance-weighted bounds.
        """
        x = x.contiguous()
        b = x.shape[0]
        # Fresh noise for every step and image, drawn at once outside the loop.
        if eps is None:
            eps = torch.randn(self.steps, b, self.embed, device=x.device, dtype=x.dtype, generator=generator)
        weights = self._fused_weights()
        # The loop writes into preallocated buffers of x's dtype: keep autocast out of it.
        with torch.autocast(x.device.type, enabled=False):
            if torch.is_grad_enabled() and (x.requires_grad or any(w.requires_grad for w in weights)):
                canvas, mu_ls, lz, *records = _DrawLoop.apply(self, record, x, eps, *weights)
            else:  # evaluation: no buffers kept for backward
                canvas, mu_ls, records, _ = self._loop(x, eps, weights, save=False, record=record)
                lz = kl_per_image(*mu_ls.split(self.embed, -1))
        mu, log_sigma = mu_ls.chunk(2, dim=-1)  # (T, B, Z) each

        # eq 9: Bernoulli NLL of x under sigmoid(c_T), summed over pixels (logits: safe under autocast).
        lx = F.binary_cross_entropy_with_logits(canvas, x, reduction="none").flatten(1).sum(1)
        out = DrawOutput(lx=lx, lz=lz)  # L^z = kl_per_image(mu, log_sigma), eq 10-11
        if log_ratio:
            # log N(z; mu, sigma) - log N(z; 0, 1) with z = mu + sigma eps, summed over t and Z.
            z = mu + torch.exp(log_sigma) * eps
            out.log_ratio = (0.5 * z.pow(2) - 0.5 * eps.pow(2) - log_sigma).sum((0, 2))
        if record:
            out.canvases = records[0]
            if self.attention:
                out.read, out.write = records[1], records[2]
        return out

    @torch.no_grad()
    def generate(
        self,
        n: int,
        generator: torch.Generator | None = None,
        device: torch.device | str | None = None,
        every_step: bool = True,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Sample from the prior: z_t ~ N(0, I), decode, write (Section 2.3).

        Returns canvas logits of every step, (T, n, H, W) (apply sigmoid for pixel
        means), and the write attention (T, n, 5) or None without attention.
        every_step=False: only the final step's, (1, n, H, W) and (1, n, 5), from the same
        noise; it skips storing T canvases (200 MB for 1000 MNIST samples at T=64).
        """
        device = device if device is not None else self.grid_x.device
        ref = self.grid_x.new_empty(0).to(device)
        z_all = torch.randn(self.steps, n, self.embed, device=device, dtype=ref.dtype, generator=generator)
        with torch.autocast(ref.device.type, enabled=False):  # the loop writes into buffers of the model's dtype
            return self._decode_prior(z_all, every_step)

    def _decode_prior(self, z_all: torch.Tensor, every_step: bool = True) -> tuple[torch.Tensor, torch.Tensor | None]:
        """generate()'s loop for noise z_all (T, n, Z): decoder, write head and write attention only."""
        T, n, Z = z_all.shape
        hd, Hi, Wi = self.hidden, self.height, self.width
        ref = z_all
        dec_w, (heads_w, heads_b) = self._gates_weight(self.decoder), self._heads_weight(read=False)
        kw = self.write_n**2 if self.attention else Hi * Wi
        dec_mm = _step_matmul(dec_w, n)  # eq 7's product, weight packed once for all T steps
        dec_in = ref.new_zeros(n, dec_w.shape[1])  # [z_t | h^dec_{t-1} | 1 | 0...]: one product per step
        dec_in[:, Z + hd] = 1
        h = dec_in[:, Z : Z + hd]  # h^dec_0 = 0; the LSTM writes h_t here for the next step
        gates, c, tc = ref.new_empty(n, 4 * hd), ref.new_zeros(2, n, hd), ref.new_empty(n, hd)
        kept = T if every_step else 1  # steps whose canvas and window are returned
        heads = ref.new_empty(kept, n, heads_w.shape[0])  # [w_t | write attention_t]
        canvases = ref.new_empty(T, n, Hi, Wi) if every_step else ref.new_zeros(1, n, Hi, Wi)
        prev = ref.new_zeros(n, Hi, Wi) if every_step else canvases[0]  # c_0 = 0; updated in place when kept == 1
        if self.attention:
            grid, mask = self._grid(ref.dtype)
            f, d = ref.new_empty(2, n, 2, self.write_n, max(Hi, Wi)).unbind(0)
        for t in range(T):
            k = t if every_step else 0
            dec_in[:, :Z] = z_all[t]
            pre = dec_mm(dec_in, out=gates)  # eq 7
            self._lstm(pre, gates, c[t % 2], c[(t + 1) % 2], tc, h)
            hh = torch.addmm(heads_b, h, heads_w.t(), out=heads[k])  # eq 18/28 and 21
            if self.attention:
                hh[:, kw + 2 :].exp_()
                p = hh[:, kw:]
                self._filters(p, self.write_offsets, grid, mask, f, d)
                w = torch.div(hh[:, :kw], p[:, 4:5]).view(n, self.write_n, self.write_n)
                u = torch.bmm(w, f[:, 0, :, :Wi])  # (w / gamma) F_X, as in _loop
                torch.baddbmm(prev, f[:, 1, :, :Hi].transpose(1, 2), u, out=canvases[k])  # eq 8, 29
            else:
                torch.add(prev, hh.view(n, Hi, Wi), out=canvases[k])  # eq 8, 18
            prev = canvases[k]
        return canvases, (heads[:, :, kw:] if self.attention else None)


class _DrawLoop(torch.autograd.Function):
    """DRAW's time loop as one autograd node: forward DRAW._loop, backward DRAW._loop_backward.

    Inputs: the module (for its shapes), record flag, x, eps, the fused weights.
    Outputs: c_T, [mu | log sigma] (T, B, 2Z), L^z (B,) (eq 11, here so that its gradient
    is three bulk ops instead of an autograd graph), then the records (no gradient).
    """

    @staticmethod
    def forward(ctx, model, record, x, eps, *weights):
        canvas, mu_ls, records, saved = model._loop(x, eps, weights, save=True, record=record)
        lz = kl_per_image(*mu_ls.split(model.embed, -1))
        ctx.model, ctx.saved = model, saved
        ctx.save_for_backward(mu_ls)  # an output: saved this way to avoid a reference cycle
        ctx.mark_non_differentiable(*records)
        return (canvas, mu_ls, lz, *records)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, d_canvas, d_mu_ls, d_lz, *_):
        if ctx.saved is None:
            raise RuntimeError("DRAW's fused backward reuses its buffers: backward through one forward only once")
        (mu_ls,) = ctx.saved_tensors
        with torch.autocast(mu_ls.device.type, enabled=False):
            dx, grads = ctx.model._loop_backward(ctx.saved, d_canvas, d_mu_ls, d_lz, mu_ls, need_x=ctx.needs_input_grad[2])
        ctx.saved = None  # free the step buffers now
        return (None, None, dx, None, *grads)


_aten = torch.ops.aten


def _tanh_(t: torch.Tensor) -> torch.Tensor:
    """tanh in place as 2 sigmoid(2t) - 1: this CPU build's tanh is ~6x slower than its sigmoid."""
    return t.mul_(2).sigmoid_().mul_(2).sub_(1)


def kl_per_image(mu: torch.Tensor, log_sigma: torch.Tensor) -> torch.Tensor:
    """L^z: KL(N(mu, sigma) || N(0, I)) summed over steps and latent dims, (T, B, Z) -> (B,).

    eq 11: 1/2 sum_t (mu^2 + sigma^2 - log sigma^2) - T/2, where the sum also runs over
    all Z latent dimensions, so the constant is -T*Z/2 (not -T/2).
    """
    t, _, z = mu.shape
    return 0.5 * (mu.pow(2) + torch.exp(2 * log_sigma) - 2 * log_sigma).sum((0, 2)) - t * z / 2


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


__all__ = ["DRAW", "DrawOutput", "LSTMCell", "ATTENTION_FIELDS", "kl_per_image", "count_parameters"]
