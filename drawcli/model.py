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

# Evaluation's two-slot buffers, per model, reused by its next no-gradient forward of the same shape.
_EVAL_WORKSPACES: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _take_workspace(model, key, store):
    """The buffers left by the model's last loop of this kind, if they fit (else None)."""
    ws = store.pop(model, None)
    return ws if ws is not None and ws["key"] == key else None


class _Views:
    """Named views into step buffers, made once and reused (see DRAW's step views)."""

    def __init__(self, base: "_Views | None" = None, **views):
        if base is not None:
            self.__dict__.update(base.__dict__)
        self.__dict__.update(views)

    def update(self, **views) -> None:
        self.__dict__.update(views)


def _constants(ref: torch.Tensor) -> _Views:
    """0-dim tensors of ref's dtype and device for the loop's constants (a Python number makes
    each op convert it first: ~1.5 us per op on CPU)."""
    return _Views(**{name: ref.new_tensor(value) for name, value in
                     (("one", 1.0), ("two", 2.0), ("neg_half", -0.5), ("filter_eps", FILTER_EPS))})


def _double_g(w: torch.Tensor, hidden: int) -> torch.Tensor:
    """An LSTM weight in gate order (i, f, o, g) with the g rows doubled, for DRAW._lstm's forward."""
    return torch.cat([w[: 3 * hidden], w[3 * hidden :] * 2])


# The LSTM products of one step are (B x 528) @ (528 x 1024)-sized: too short for MKL's sgemm,
# which re-packs the weight on every call and reaches ~75% of its large-matrix rate here. oneDNN's
# linear with a weight packed once per loop (the T steps reuse it) runs them 20-40% faster on
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
            a, w = (torch.randn(shape, generator=g, dtype=torch.float32) for shape in ((3, 40), (24, 40)))
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
            and torch.backends.mkldnn.enabled and _packed_gemm_works()):
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
    # forward() runs eq 3-8 in one lean loop (_loop) with a hand-written backward
    # (_loop_backward), joined by the autograd Function _DrawLoop below; generate() runs the
    # decoder half the same way (_decode_prior). Why: per
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
        - LSTM gate rows reordered (i, f, g, o) -> (i, f, o, g): the sigmoid gates side by side.
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

    # ----------------------------------------------------------------- the loop's step views
    #
    # The loop below runs ~100 small tensor ops per step, so per-op overhead matters as much as
    # arithmetic: every view (slicing a buffer, a transpose) costs about a microsecond of
    # dispatch. All views into the step buffers are therefore made once per workspace (_Views)
    # and reused by every step of every training step; constants are 0-dim tensors, since a
    # Python number costs each op a conversion.

    def _bank_views(self, p, f, d, n):
        """Views for one filterbank (eq 19-26) computed from params p (B, 5) in ATTENTION_FIELDS order
        into f (F_X, F_Y as (B, 2, N, L)) and d (grid - mu, kept for backward)."""
        b = f.shape[0]
        mu = p.new_empty(b, 2, n)
        return _Views(
            p=p, f=f, d=d, mu=mu, mu4=mu[..., None], g=p[:, 0:2, None], delta=p[:, 2:3, None],
            sigma2=p[:, 3:4, None, None], scale=p.new_empty(b, 1, 1, 1), zsum=p.new_empty(b, 2, n, 1),
            fx=f[:, 0, :, : self.width], fy=f[:, 1, :, : self.height],
            fxT=f[:, 0, :, : self.width].transpose(1, 2), fyT=f[:, 1, :, : self.height].transpose(1, 2),
            gamma=p[:, 4:5], sigma2_col=p[:, 3:4], delta_col=p[:, 2],
        )

    def _filters(self, v, offsets, ws):
        """F_X, F_Y (eq 25-26) into v.f and grid - mu into v.d, from the window v.p (eq 19-20)."""
        k = ws["k"]
        torch.addcmul(v.g, v.delta, offsets, out=v.mu)  # eq 19-20: mu = g + (i - N/2 - 0.5) delta
        torch.sub(ws["grid3"], v.mu4, out=v.d)  # a - mu_i, b - mu_j: (B, 2, N, L)
        torch.mul(v.d, v.d, out=v.f)
        torch.div(k.neg_half, v.sigma2, out=v.scale)
        v.f.mul_(v.scale).exp_()  # eq 25-26 before normalising
        if ws["mask3"] is not None:
            v.f.mul_(ws["mask3"])
        torch.sum(v.f, -1, keepdim=True, out=v.zsum).add_(k.filter_eps)
        v.f.div_(v.zsum)  # Z_X, Z_Y: each row sums to 1

    @staticmethod
    def _mu_map(offsets: torch.Tensor) -> torch.Tensor:
        """(2N + 1, 4) matrix taking [sum_a dL/de (a - mu) per (axis, i) | sum dL/de (a - mu)^2] to
        dL/d(g_X, g_Y, delta, log sigma^2), each still to be divided by sigma^2 (eq 19-20, 25-26:
        e = -(a - mu)^2 / (2 sigma^2), mu = g + offset delta)."""
        n = len(offsets)
        m = offsets.new_zeros(2 * n + 1, 4)
        m[:n, 0], m[n : 2 * n, 1] = 1, 1
        m[:n, 2], m[n : 2 * n, 2] = offsets, offsets
        m[2 * n, 3] = 0.5
        return m

    def _filters_backward(self, v, dfx, dfy, out4, out_delta):
        """dL/d(g_X, g_Y, log delta, log sigma^2) into out4 (the folded head's outputs) from
        dL/dF_X, dL/dF_Y; the caller writes dL/d log gamma."""
        df, prod, zs, S = v.df, v.prod, v.zs, v.S
        if self.width == self.height:
            torch.stack([dfx, dfy], 1, out=df)
        else:  # zeroed first: the previous call's arithmetic below wrote (0 times something) into the padding
            df.zero_()
            v.dfx.copy_(dfx)
            v.dfy.copy_(dfy)
        torch.mul(df, v.f, out=prod)
        torch.sum(prod, -1, keepdim=True, out=zs)
        df.sub_(zs).mul_(v.f)  # through Z and exp: dL/d(exponent)
        df.mul_(v.d)  # times (a - mu); / sigma^2 below
        torch.sum(df, -1, out=v.S_mu)
        torch.sum(df.mul_(v.d), (1, 2, 3), out=v.S_sigma)
        torch.mm(S, v.mu_map, out=out4)
        out4.div_(v.sigma2_col)
        out_delta.mul_(v.delta_col)  # the head emits log delta: dL/d log delta = delta dL/d delta

    @staticmethod
    def _lstm(pre, v, k):
        """One LSTM step from pre-activations pre (B, 4H), gate order (i, f, o, g), g rows doubled.

        Writes the activated gates into v.a (pre itself is fine), c_t into v.c and tanh(c_t) into
        v.tc (both kept for backward) and h_t into v.h (a view into the next step's input buffer,
        so no torch.cat is needed). The doubled g rows (see _loop) make one sigmoid cover all four
        gates: tanh(z) = 2 sigmoid(2z) - 1.
        """
        torch.sigmoid(pre, out=v.a)
        v.g.mul_(k.two).sub_(k.one)  # g = tanh(z_g)
        torch.mul(v.f, v.c_prev, out=v.c)
        v.c.addcmul_(v.i, v.g)  # c_t = f c_{t-1} + i g
        # tanh(c_t) as 2 sigmoid(2 c_t) - 1: this CPU build's tanh is ~6x slower than its sigmoid.
        torch.mul(v.c, k.two, out=v.tc).sigmoid_().mul_(k.two).sub_(k.one)
        torch.mul(v.o, v.tc, out=v.h)  # h_t = o tanh(c_t)

    @staticmethod
    def _lstm_backward(v, s, dh, dc):
        """Backward of _lstm: overwrites v.a (activated gates) with dL/d(pre-activations) and turns
        dc (dL/dc_t from later steps) into dL/dc_{t-1}. Reusing v.a saves a (T, B, 4H) buffer.
        s: scratch views (da, da's four gates, tmp)."""
        torch.mul(dh, v.o, out=s.tmp)
        dc.add_(_aten.tanh_backward.grad_input(s.tmp, v.tc, grad_input=s.tmp))  # also through h = o tanh(c)
        torch.mul(dc, v.g, out=s.di)
        torch.mul(dc, v.c_prev, out=s.df)
        torch.mul(dh, v.tc, out=s.do)
        torch.mul(dc, v.i, out=s.dg)
        dc.mul_(v.f)  # dL/dc_{t-1}
        # ATen's fused derivative kernels (one op each instead of three): s (1 - s) and 1 - g^2.
        _aten.sigmoid_backward.grad_input(s.difo, v.ifo, grad_input=v.ifo)
        _aten.tanh_backward.grad_input(s.dg, v.g, grad_input=v.g)
        return v.a

    def _lstm_views(self, a, c_prev, c, tc, h):
        hd = self.hidden
        return _Views(a=a, ifo=a[:, : 3 * hd], i=a[:, :hd], f=a[:, hd : 2 * hd], o=a[:, 2 * hd : 3 * hd],
                      g=a[:, 3 * hd :], c_prev=c_prev, c=c, tc=tc, h=h)

    def _workspace(self, x, ke: int, kd: int, heads_width: int, save: bool):
        """Step buffers and their per-step views for _loop and _loop_backward.

        save=True (training) keeps every step's inputs and activations for backward, and the set
        is reused by the next training step once its backward is done (page faults on ~300 MB of
        fresh memory per step cost several percent on CPU). save=False (evaluation) keeps two
        slots, reused in turn, so memory does not grow with T.
        """
        T, hd, Z, att = self.steps, self.hidden, self.embed, self.attention
        b, Hi, Wi = x.shape
        n, nw = self.read_n, self.write_n
        kw = nw * nw if att else Hi * Wi
        R = 2 * n * n if att else Hi * Wi
        slots, steps = (T + 1, T) if save else (2, 1)
        new = x.new_empty
        ws = dict(key=(b, x.dtype, x.device, save), k=_constants(x))
        # Inputs of every step's products, laid out so that no torch.cat is needed; the column of
        # ones multiplies the bias column of [W | b].
        enc_in = x.new_zeros(slots, b, ke)  # [r_t | h^dec_{t-1} | h^enc_{t-1} | 1 | 0...], eq 5
        dec_in = x.new_zeros(slots, b, kd)  # [z_t | h^dec_{t-1} | 1 | 0...], eq 7
        enc_in[:, :, R + 2 * hd] = 1
        dec_in[:, :, Z + hd] = 1
        c_enc, c_dec, heads = new(slots, b, hd), new(slots, b, hd), new(slots, b, heads_width)
        g_enc, g_dec = new(steps, b, 4 * hd), new(steps, b, 4 * hd)
        tc_enc, tc_dec, se = new(steps, b, hd), new(steps, b, hd), new(steps, b, Z)
        ws.update(enc_in=enc_in, dec_in=dec_in, c_enc=c_enc, c_dec=c_dec, heads=heads, g_enc=g_enc, g_dec=g_dec,
                  tc_enc=tc_enc, tc_dec=tc_dec, se=se, sig=new(b, Hi, Wi))
        if att:
            L = max(Hi, Wi)
            grid, mask = self._grid(x.dtype)
            ws["grid3"] = grid.to(x.device)[:, None, :]
            ws["mask3"] = None if mask is None else mask.to(x.device)[:, None, :]
            # [x | x_hat_t] side by side per row: one bmm applies F_Y to both images (eq 27)
            xb = ws["xb"] = new(steps, b, Hi, 2, Wi)
            f_r, d_r = new(2, steps, b, 2, n, L).unbind(0)
            f_w, d_w = new(2, steps, b, 2, nw, L).unbind(0)
            ws.update(f_r=f_r, d_r=d_r, f_w=f_w, d_w=d_w)
        plan = []
        for s in range(slots - 1 if save else 2):
            s1, gs = (s + 1) % slots, (s if save else 0)
            ei, ei1, di, di1, hh = enc_in[s], enc_in[s1], dec_in[s], dec_in[s1], heads[s1]
            v = _Views(
                ei=ei, ei_r=ei[:, :R], h_enc=ei1[:, R + hd : R + 2 * hd], h_dec=ei1[:, R : R + hd],
                di=di, di_z=di[:, :Z], di1_h=di1[:, Z : Z + hd], g_enc=g_enc[gs], g_dec=g_dec[gs], se=se[gs],
                hh=hh, hh_w=hh[:, :kw], heads_prev=heads[s],
                enc=self._lstm_views(g_enc[gs], c_enc[s], c_enc[s1], tc_enc[gs], ei1[:, R + hd : R + 2 * hd]),
                dec=self._lstm_views(g_dec[gs], c_dec[s], c_dec[s1], tc_dec[gs], ei1[:, R : R + hd]),
            )
            if att:
                xbt = xb[gs]
                v.update(
                    xhat=xbt[:, :, 1], x_slot=xbt[:, :, 0], xb=xbt.view(b, Hi, 2 * Wi),
                    xbT=xbt.view(b, Hi, 2 * Wi).transpose(1, 2),
                    hh_exp=hh[:, kw:].view(b, 2, 5)[:, :, 2:],
                    read=self._bank_views(heads[s][:, kw + 5 :], f_r[gs], d_r[gs], n),
                    write=self._bank_views(hh[:, kw : kw + 5], f_w[gs], d_w[gs], nw),
                )
            else:
                v.update(xhat_flat=ei[:, :R].view(b, Hi, Wi), hh_canvas=hh.view(b, Hi, Wi))
            plan.append(v)
        ws["plan"] = plan
        return ws

    def _backward_views(self, ws, b, Hi, Wi):
        """Scratch buffers and per-step views of _loop_backward, added to a saved workspace once."""
        T, hd, Z, att = self.steps, self.hidden, self.embed, self.attention
        n, nw = self.read_n, self.write_n
        kw = nw * nw if att else Hi * Wi
        x = ws["sig"]  # any tensor of the loop's dtype and device
        da = x.new_empty(b, 4 * hd)
        scratch = _Views(da=da, difo=da[:, : 3 * hd], di=da[:, :hd], df=da[:, hd : 2 * hd],
                         do=da[:, 2 * hd : 3 * hd], dg=da[:, 3 * hd :], tmp=x.new_empty(b, hd))
        d_heads = x.new_zeros(T + 1, b, ws["heads"].shape[2])  # slot t: heads over h^dec_{t-1}
        dq = x.new_zeros(T, b, 2 * Z)
        d_canvas = x.new_empty(b, Hi, Wi)
        bw = dict(scratch=scratch, d_heads=d_heads, dq=dq, d_canvas=d_canvas, d_canvasT=d_canvas.transpose(1, 2))
        if att:
            L = max(Hi, Wi)
            for name, nn_, offsets in (("r", n, self.read_offsets), ("w", nw, self.write_offsets)):
                df = x.new_zeros(b, 2, nn_, L)
                S = x.new_empty(b, 2 * nn_ + 1)
                bw["bank_" + name] = _Views(df=df, dfx=df[:, 0, :, :Wi], dfy=df[:, 1, :, :Hi], prod=x.new_empty(b, 2, nn_, L),
                                            zs=x.new_empty(b, 2, nn_, 1), S=S, S_mu=S[:, : 2 * nn_].view(b, 2, nn_),
                                            S_sigma=S[:, 2 * nn_], mu_map=self._mu_map(offsets.to(x.dtype)))
        steps = []
        for t, fv in enumerate(ws["plan"]):
            v = _Views(dhh=d_heads[t + 1], dq=dq[t], dq_mu=dq[t, :, :Z], dq_ls=dq[t, :, Z:])
            if att:
                dhh, dhr = d_heads[t + 1], d_heads[t][:, kw + 5 :]
                # the shared scratch of each filterbank's backward, with this step's filters
                wb = _Views(bw["bank_w"], f=fv.write.f, d=fv.write.d, sigma2_col=fv.write.sigma2_col,
                            delta_col=fv.write.delta_col)
                rb = _Views(bw["bank_r"], f=fv.read.f, d=fv.read.d, sigma2_col=fv.read.sigma2_col,
                            delta_col=fv.read.delta_col)
                v.update(dhh_w=dhh[:, :kw], dhh_wgamma=dhh[:, kw + 4], dhh_w4=dhh[:, kw : kw + 4], dhh_wdelta=dhh[:, kw + 2],
                         dhr_gamma=dhr[:, 4], dhr4=dhr[:, :4], dhr_delta=dhr[:, 2], wbank=wb, rbank=rb)
            steps.append(v)
        bw["steps"] = steps
        ws["backward"] = bw
        return bw

    def _loop(self, x, eps, weights, save: bool, record: bool):
        """eq 3-8 for t = 1..T. Returns (c_T, [mu | log sigma] as (T, B, 2Z), records, saved).

        save=True keeps every step's inputs and activations for _loop_backward; save=False
        (no gradient needed: evaluation) keeps two slots and reuses them.
        """
        enc_w, dec_w, q_w, q_b, heads_w, heads_b = weights
        T, hd, Z, att = self.steps, self.hidden, self.embed, self.attention
        b, Hi, Wi = x.shape
        n = self.read_n
        kw = self.write_n**2 if att else Hi * Wi  # write size
        R = 2 * n * n if att else Hi * Wi  # encoder input that changes with t (r_t, or x_hat_t)
        lead = 0 if att else Hi * Wi  # encoder input that does not (x, in r_t = [x, x_hat_t], eq 17)

        key = (b, x.dtype, x.device, save)
        ws = _take_workspace(self, key, _WORKSPACES if save else _EVAL_WORKSPACES)
        if ws is None:
            # Plain tensors even under torch.inference_mode: inference tensors could not be written
            # by a later no_grad call reusing them.
            with torch.inference_mode(False):
                ws = self._workspace(x, enc_w.shape[1] - lead, dec_w.shape[1], heads_w.shape[0], save)
        plan, k = ws["plan"], ws["k"]
        enc_in, dec_in, c_enc, c_dec, heads = ws["enc_in"], ws["dec_in"], ws["c_enc"], ws["c_dec"], ws["heads"]
        enc_in[0, :, R : R + 2 * hd] = 0  # h_0 = 0 (both LSTMs), c_0 = 0
        dec_in[0, :, Z : Z + hd] = 0
        c_enc[0], c_dec[0] = 0, 0
        mu_ls = x.new_empty(T, b, 2 * Z)  # q's output [mu_t | log sigma_t], eq 1-2
        mu_rows, eps_rows = mu_ls.unbind(0), eps.unbind(0)
        mu_parts, ls_parts = mu_ls[..., :Z].unbind(0), mu_ls[..., Z:].unbind(0)
        heads[0] = heads_b  # h^dec_0 = 0: the first read window is the bias alone
        # x's part of the encoder input is the same at every step: one product outside the loop.
        base = None if not lead else x.reshape(b, lead) @ _double_g(enc_w[:, :lead], hd).t()
        # The forward products use the g-gate rows doubled (see _lstm); backward uses the true weights.
        enc_mm = _step_matmul(_double_g(enc_w[:, lead:], hd), b)  # eq 5's product, packed once for all T steps
        dec_mm = _step_matmul(_double_g(dec_w, hd), b)  # eq 7's
        q_wt, heads_wt = q_w.t(), heads_w.t()
        canvas, sig = x.new_zeros(b, Hi, Wi), ws["sig"]  # c_0 = 0
        reads, writes = [], []
        if att:
            ro, wo = self.read_offsets.to(x.dtype), self.write_offsets.to(x.dtype)
            heads[0, :, kw:].view(b, 2, 5)[:, :, 2:].exp_()  # delta, sigma^2, gamma from their logs
            ws["xb"][:, :, :, 0] = x
        if record:
            canvases = x.new_empty(T, b, Hi, Wi)
            rec_read, rec_write = (x.new_empty(T, b, 5), x.new_empty(T, b, 5)) if att else (None, None)

        for t in range(T):
            v = plan[t] if save else plan[t % 2]
            torch.sigmoid(canvas, out=sig)
            if att:
                torch.sub(x, sig, out=v.xhat)  # eq 3: x_hat = x - sigmoid(c_{t-1})
                rv = v.read  # read window from h^dec_{t-1}, eq 21-24
                self._filters(rv, ro, ws)
                left = torch.bmm(rv.fy, v.xb)  # (B, N, 2W): F_Y x | F_Y x_hat
                glimpse = torch.bmm(left.view(b, 2 * n, Wi), rv.fxT)  # rows (i, image)
                torch.mul(glimpse.view(b, R), rv.gamma, out=v.ei_r)  # eq 27, read_glimpse's layout
                if save:
                    reads.append(left)
                if record:
                    rec_read[t] = rv.p
            else:
                torch.sub(x, sig, out=v.xhat_flat)  # eq 3 (r_t = [x, x_hat], eq 17)
            pre = enc_mm(v.ei, out=v.g_enc)  # eq 5
            if lead:
                pre.add_(base)
            self._lstm(pre, v.enc, k)
            torch.addmm(q_b, v.h_enc, q_wt, out=mu_rows[t])  # eq 1-2
            sigma_eps = torch.exp(ls_parts[t], out=v.se).mul_(eps_rows[t])
            torch.add(mu_parts[t], sigma_eps, out=v.di_z)  # eq 6: z_t = mu_t + sigma_t eps_t
            pre = dec_mm(v.di, out=v.g_dec)  # eq 7
            self._lstm(pre, v.dec, k)
            v.di1_h.copy_(v.dec.h)
            torch.addmm(heads_b, v.dec.h, heads_wt, out=v.hh)  # eq 18/28 and 21
            if att:
                v.hh_exp.exp_()
                wv = v.write
                self._filters(wv, wo, ws)
                # eq 29 with 1/gamma applied to the N x N patch instead of the H x W image.
                w = torch.div(v.hh_w, wv.gamma).view(b, self.write_n, self.write_n)
                u = torch.bmm(w, wv.fx)  # w F_X / gamma first: (B, N, W) products are ~2x faster than (B, H, N)
                canvas.baddbmm_(wv.fyT, u)  # eq 8: c_t = c_{t-1} + F_Y^T w F_X / gamma, in place
                if save:
                    writes.append((u, w))
                if record:
                    rec_write[t] = wv.p
            else:
                canvas.add_(v.hh_canvas)  # eq 8, 18
            if record:
                canvases[t] = canvas

        records = ()
        if record:
            records = (canvases, rec_read, rec_write) if att else (canvases,)
        saved = dict(workspace=ws, x=x, weights=weights, reads=reads, writes=writes) if save else None
        if not save:
            _EVAL_WORKSPACES[self] = ws
        return canvas, mu_ls, records, saved

    def _loop_backward(self, sv, d_canvas, d_mu_ls, d_lz, mu_ls, need_x: bool):
        """Backpropagation through time for _loop: (dx or None, gradients of the fused weights)."""
        ws, x = sv["workspace"], sv["x"]
        enc_w, dec_w, q_w, q_b, heads_w, heads_b = sv["weights"]
        enc_in, dec_in, g_enc, g_dec = ws["enc_in"], ws["dec_in"], ws["g_enc"], ws["g_dec"]
        T, hd, Z, att = self.steps, self.hidden, self.embed, self.attention
        b, Hi, Wi = x.shape
        n = self.read_n
        kw = self.write_n**2 if att else Hi * Wi
        R = 2 * n * n if att else Hi * Wi
        lead = 0 if att else Hi * Wi
        ke, kd = enc_in.shape[2], dec_in.shape[2]
        plan = ws["plan"]
        bw = ws.get("backward") or self._backward_views(ws, b, Hi, Wi)
        scratch, d_heads, dq, dC, dCT = bw["scratch"], bw["d_heads"], bw["dq"], bw["d_canvas"], bw["d_canvasT"]
        # Input gradients of each step's products: only the columns of real inputs (not the ones or
        # padding columns), with the weights packed once for all T steps.
        enc_mm_t = _step_matmul(enc_w[:, lead : lead + R + 2 * hd].t(), b)
        dec_mm_t = _step_matmul(dec_w[:, : Z + hd].t(), b)

        if d_canvas is None:
            dC.zero_()
        else:
            dC.copy_(d_canvas)  # dL/dc_t, updated in place as t goes down
        if d_lz is not None:  # eq 11: dL^z/dmu = mu, dL^z/dlog sigma = sigma^2 - 1, in bulk
            mu, log_sigma = mu_ls.split(Z, -1)
            torch.mul(mu, d_lz.view(1, b, 1), out=dq[..., :Z])
            torch.mul(log_sigma, 2, out=dq[..., Z:]).exp_().sub_(1).mul_(d_lz.view(1, b, 1))
        else:
            dq.zero_()
        if d_mu_ls is not None:
            dq += d_mu_ls
        d_heads.zero_()
        dc_enc, dc_dec = x.new_zeros(b, hd), x.new_zeros(b, hd)
        d_ei_next, d_di_next = x.new_zeros(b, R + 2 * hd), x.new_zeros(b, Z + hd)  # step t+1's input gradients
        dx = torch.zeros_like(x) if need_x else None
        se_rows = ws["se"].unbind(0)

        for t in reversed(range(T)):
            v, bv = plan[t], bw["steps"][t]
            # write at step t (eq 8, 29; eq 18): every update receives dL/dc_t
            if att:
                wv = v.write  # update = F_Y^T u, u = (w / gamma) F_X
                u, w = sv["writes"][t]
                du = torch.bmm(wv.fy, dC)  # (B, N, W)
                dfy = torch.bmm(u, dCT)  # (B, N, H)
                dw = torch.bmm(du, wv.fxT)  # dL/d(w / gamma): (B, N, N)
                dfx = torch.bmm(w.transpose(1, 2), du)  # (B, N, W)
                torch.sum(dw * w, (1, 2), out=bv.dhh_wgamma).neg_()  # dL/d log gamma
                torch.div(dw.view(b, kw), wv.gamma, out=bv.dhh_w)
                self._filters_backward(bv.wbank, dfx, dfy, bv.dhh_w4, bv.dhh_wdelta)
            else:
                bv.dhh.copy_(dC.view(b, kw))
            # h^dec_t feeds the heads and step t+1's encoder and decoder (eq 5, 7)
            dh = torch.add(d_ei_next[:, R : R + hd], d_di_next[:, Z : Z + hd]).addmm_(bv.dhh, heads_w)
            gd = self._lstm_backward(v.dec, scratch, dh, dc_dec)
            d_di = dec_mm_t(gd)  # [dz_t | dh^dec_{t-1}]
            dz = d_di[:, :Z]
            bv.dq_mu.add_(dz)  # eq 6: z = mu + sigma eps
            bv.dq_ls.addcmul_(dz, se_rows[t])  # d/d log sigma = sigma eps dz
            dh = torch.addmm(d_ei_next[:, R + hd : R + 2 * hd], bv.dq, q_w)  # h^enc_t feeds q and step t+1's encoder
            ge = self._lstm_backward(v.enc, scratch, dh, dc_enc)
            d_ei = enc_mm_t(ge)  # [dr_t | dh^dec_{t-1} | dh^enc_{t-1}]
            # read at step t (eq 27; eq 17)
            if att:
                rv = v.read
                left = sv["reads"][t]
                dr = d_ei[:, :R]
                torch.sum(dr * v.ei_r, 1, out=bv.dhr_gamma)  # dL/d log gamma (r = gamma G)
                dg = (dr * rv.gamma).view(b, 2 * n, n)
                dleft = torch.bmm(dg, rv.fx)  # (B, 2N, W)
                dfx = torch.bmm(dg.transpose(1, 2), left.view(b, 2 * n, Wi))
                dleft = dleft.view(b, n, 2 * Wi)
                dfy = torch.bmm(dleft, v.xbT)
                dxb = torch.bmm(rv.fyT, dleft).view(b, Hi, 2, Wi)
                self._filters_backward(bv.rbank, dfx, dfy, bv.dhr4, bv.dhr_delta)
                d_xhat, x_hat = dxb[:, :, 1], v.xhat
                if need_x:
                    dx += dxb[:, :, 0]
            else:
                d_xhat, x_hat = d_ei[:, :R].view(b, Hi, Wi), v.xhat_flat
            if need_x:
                dx += d_xhat
            dC.sub_(_aten.sigmoid_backward(d_xhat, x - x_hat))  # dL/dc_{t-1}; x - x_hat = sigmoid(c_{t-1})
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
        _WORKSPACES[self] = ws  # this forward's buffers are free for the next one
        return dx, grads

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
        canvas, mu_ls, lz, records = self._time_loop(x, eps, weights, record)
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

    @torch.compiler.disable
    def _time_loop(self, x, eps, weights, record: bool):
        """forward()'s loop: (c_T, [mu | log sigma], L^z, records).

        Kept out of torch.compile's tracing: it is already one fused node with buffers reused
        across calls and private oneDNN ops, none of which the compiler can improve. A compiled
        DRAW compiles the rest and calls this eagerly.
        """
        # The loop writes into preallocated buffers of x's dtype: keep autocast out of it.
        with torch.autocast(x.device.type, enabled=False):
            if torch.is_grad_enabled() and (x.requires_grad or any(w.requires_grad for w in weights)):
                canvas, mu_ls, lz, *records = _DrawLoop.apply(self, record, x, eps, *weights)
            else:  # evaluation: no buffers kept for backward
                canvas, mu_ls, records, _ = self._loop(x, eps, weights, save=False, record=record)
                lz = kl_per_image(*mu_ls.split(self.embed, -1))
        return canvas, mu_ls, lz, records

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

    @torch.compiler.disable
    def _decode_prior(self, z_all: torch.Tensor, every_step: bool = True) -> tuple[torch.Tensor, torch.Tensor | None]:
        """generate()'s loop for noise z_all (T, n, Z): decoder, write head and write attention only."""
        T, n, Z = z_all.shape
        hd, Hi, Wi, nw, att = self.hidden, self.height, self.width, self.write_n, self.attention
        ref = z_all
        dec_w, (heads_w, heads_b) = self._gates_weight(self.decoder), self._heads_weight(read=False)
        kw = nw * nw if att else Hi * Wi
        k = _constants(ref)
        dec_mm = _step_matmul(_double_g(dec_w, hd), n)  # eq 7's product, weight packed once for all T steps
        dec_in = ref.new_zeros(n, dec_w.shape[1])  # [z_t | h^dec_{t-1} | 1 | 0...]: one product per step
        dec_in[:, Z + hd] = 1
        h, z_in = dec_in[:, Z : Z + hd], dec_in[:, :Z]  # h^dec_0 = 0; the LSTM writes h_t into h
        gates, c, tc = ref.new_empty(n, 4 * hd), ref.new_zeros(2, n, hd), ref.new_empty(n, hd)
        lstm = [self._lstm_views(gates, c[s], c[1 - s], tc, h) for s in (0, 1)]
        kept = T if every_step else 1  # steps whose canvas and window are returned
        heads = ref.new_empty(kept, n, heads_w.shape[0])  # [w_t | write attention_t]
        canvases = ref.new_empty(T, n, Hi, Wi) if every_step else ref.new_zeros(1, n, Hi, Wi)
        prev = ref.new_zeros(n, Hi, Wi) if every_step else canvases[0]  # c_0 = 0; updated in place when kept == 1
        out_rows, heads_rows, z_rows = canvases.unbind(0), heads.unbind(0), z_all.unbind(0)
        heads_wt = heads_w.t()
        if att:
            grid, mask = self._grid(ref.dtype)
            wsd = dict(k=k, grid3=grid[:, None, :], mask3=None if mask is None else mask[:, None, :])
            f, d = ref.new_empty(2, n, 2, nw, max(Hi, Wi)).unbind(0)
            banks = [self._bank_views(hh[:, kw:], f, d, nw) for hh in heads_rows]
            offsets = self.write_offsets.to(ref.dtype)
        for t in range(T):
            j = t if every_step else 0
            z_in.copy_(z_rows[t])
            pre = dec_mm(dec_in, out=gates)  # eq 7
            self._lstm(pre, lstm[t % 2], k)
            hh = torch.addmm(heads_b, h, heads_wt, out=heads_rows[j])  # eq 18/28 and 21
            if att:
                bank = banks[j]
                bank.p[:, 2:].exp_()  # delta, sigma^2, gamma from their logs
                self._filters(bank, offsets, wsd)
                w = torch.div(hh[:, :kw], bank.gamma).view(n, nw, nw)
                u = torch.bmm(w, bank.fx)  # (w / gamma) F_X, as in _loop
                if every_step:
                    torch.baddbmm(prev, bank.fyT, u, out=out_rows[j])  # eq 8, 29
                else:
                    prev.baddbmm_(bank.fyT, u)
            elif every_step:
                torch.add(prev, hh.view(n, Hi, Wi), out=out_rows[j])  # eq 8, 18
            else:
                prev.add_(hh.view(n, Hi, Wi))
            prev = out_rows[j]
        return canvases, (heads[:, :, kw:] if att else None)


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
        ctx.saved = None  # drop this forward's per-step tensors now (its buffers went back to _WORKSPACES)
        return (None, None, dx, None, *grads)


_aten = torch.ops.aten


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
