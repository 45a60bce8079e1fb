"""The Python engine's time loop (eq 3-8 for t = 1..T), forward; its backward is python_backward.py.

Per step the matrix products are small (batch x 520 x 1024), so eager autograd would spend more
time on per-op bookkeeping than on arithmetic, and T small weight-gradient products run far below
the machine's rate. Here the loop writes every step's inputs into preallocated (T, B, .) buffers
(a PythonWorkspace, made once per shape and reused by the next call of the same kind), python_backward
runs the recurrence backwards, and each weight gradient is one (T*B)-row product, as cuDNN does
for RNNs. Every view into the buffers is made once per workspace (Step, Bank, Cell), constants
are cached 0-dim tensors, and on the CPU the per-step LSTM products use oneDNN packed weights
(packed_gemm.py). The parameters come in layout.py's LoopWeights. No I/O here.
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass, field
from typing import Any

import torch

from drawcli.model.layout import LoopWeights, Numbers, numbers, offsets, pixel_grid
from drawcli.model.packed_gemm import matmul, step_matmul

# The buffers left by each model's last loop, for its next call of the same shape: training
# (kept until backward has run) and evaluation (two slots) apart. Outside the module, so that
# state_dict, deepcopy and pickling never see them.
TRAINING: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
EVALUATION: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def take(store: weakref.WeakKeyDictionary, model, key: tuple):
    """The workspace the model's last loop of this kind left, if it has this key (else None)."""
    ws = store.pop(model, None)
    return ws if ws is not None and ws.key == key else None


@dataclass
class Bank:
    """Views for one filterbank (eq 19-26), computed from the window p (B, 5) in ATTENTION_FIELDS
    order into f (F_X and F_Y as (B, 2, N, L)) and d (grid - mu, kept for backward)."""

    p: torch.Tensor
    f: torch.Tensor
    d: torch.Tensor
    mu: torch.Tensor
    mu4: torch.Tensor
    g: torch.Tensor
    delta: torch.Tensor
    sigma2: torch.Tensor
    scale: torch.Tensor
    zsum: torch.Tensor
    fx: torch.Tensor
    fy: torch.Tensor
    fxT: torch.Tensor
    fyT: torch.Tensor
    gamma: torch.Tensor
    sigma2_col: torch.Tensor
    delta_col: torch.Tensor


def bank(m, p: torch.Tensor, f: torch.Tensor, d: torch.Tensor, n: int) -> Bank:
    b = f.shape[0]
    mu = p.new_empty(b, 2, n)
    fx, fy = f[:, 0, :, : m.width], f[:, 1, :, : m.height]
    return Bank(p=p, f=f, d=d, mu=mu, mu4=mu[..., None], g=p[:, 0:2, None], delta=p[:, 2:3, None],
                sigma2=p[:, 3:4, None, None], scale=p.new_empty(b, 1, 1, 1), zsum=p.new_empty(b, 2, n, 1),
                fx=fx, fy=fy, fxT=fx.transpose(1, 2), fyT=fy.transpose(1, 2), gamma=p[:, 4:5], sigma2_col=p[:, 3:4],
                delta_col=p[:, 2])


@dataclass
class FilterGrid:
    """Pixel coordinates of both axes (2, 1, L) and the mask of their padding (None if A = B)."""

    coords: torch.Tensor
    mask: torch.Tensor | None


def grid_of(m, dtype: torch.dtype) -> FilterGrid:
    coords, mask = pixel_grid(m, dtype)
    return FilterGrid(coords[:, None, :], None if mask is None else mask[:, None, :])


def filters(v: Bank, offs: torch.Tensor, grid: FilterGrid, k: Numbers) -> None:
    """F_X, F_Y (eq 25-26) into v.f and grid - mu into v.d, from the window v.p (eq 19-20)."""
    torch.addcmul(v.g, v.delta, offs, out=v.mu)  # eq 19-20: mu = g + (i - N/2 - 0.5) delta
    torch.sub(grid.coords, v.mu4, out=v.d)  # a - mu_i, b - mu_j: (B, 2, N, L)
    torch.mul(v.d, v.d, out=v.f)
    torch.div(k.neg_half, v.sigma2, out=v.scale)
    v.f.mul_(v.scale).exp_()  # eq 25-26 before normalising
    if grid.mask is not None:
        v.f.mul_(grid.mask)
    torch.sum(v.f, -1, keepdim=True, out=v.zsum).add_(k.filter_eps)
    v.f.div_(v.zsum)  # Z_X, Z_Y: each row sums to 1


@dataclass
class Cell:
    """Views of one LSTM step: activated gates a in LSTMCell's order (i, f, g, o), the cell states
    c_{t-1} and c_t, tanh(c_t) and h_t (a view into the next step's input buffer)."""

    a: torch.Tensor
    if_: torch.Tensor
    i: torch.Tensor
    f: torch.Tensor
    g: torch.Tensor
    o: torch.Tensor
    c_prev: torch.Tensor
    c: torch.Tensor
    tc: torch.Tensor
    h: torch.Tensor


def cell(hd: int, a, c_prev, c, tc, h) -> Cell:
    return Cell(a=a, if_=a[:, : 2 * hd], i=a[:, :hd], f=a[:, hd : 2 * hd], g=a[:, 2 * hd : 3 * hd], o=a[:, 3 * hd :],
                c_prev=c_prev, c=c, tc=tc, h=h)


def double_g(w: torch.Tensor, hidden: int) -> torch.Tensor:
    """An LSTM weight in gate order (i, f, g, o) with the g rows doubled, for lstm_step."""
    return torch.cat([w[: 2 * hidden], w[2 * hidden : 3 * hidden] * 2, w[3 * hidden :]])


def lstm_step(pre: torch.Tensor, v: Cell, k: Numbers) -> None:
    """One LSTM step from pre-activations pre (B, 4H), gates (i, f, g, o), the g rows doubled.

    Writes the activated gates into v.a (pre itself is fine), c_t into v.c and tanh(c_t) into
    v.tc (both kept for backward) and h_t into v.h (no torch.cat needed for the next step's
    input). The doubled g rows (double_g) make one sigmoid cover all four gates:
    tanh(z) = 2 sigmoid(2z) - 1.
    """
    torch.sigmoid(pre, out=v.a)
    v.g.mul_(k.two).sub_(k.one)  # g = tanh(z_g)
    torch.mul(v.f, v.c_prev, out=v.c)
    v.c.addcmul_(v.i, v.g)  # c_t = f c_{t-1} + i g
    # tanh(c_t) as 2 sigmoid(2 c_t) - 1: this CPU build's tanh is ~6x slower than its sigmoid.
    torch.mul(v.c, k.two, out=v.tc).sigmoid_().mul_(k.two).sub_(k.one)
    torch.mul(v.o, v.tc, out=v.h)  # h_t = o tanh(c_t)


@dataclass
class Step:
    """The views one step of the loop reads and writes (slot s of the workspace's buffers)."""

    ei: torch.Tensor  # encoder input [r_t | h^dec_{t-1} | h^enc_{t-1} | 1 | 0...]
    ei_r: torch.Tensor  # its r_t part
    h_enc: torch.Tensor  # h^enc_t, in the next slot's encoder input
    h_dec: torch.Tensor  # h^dec_t, likewise
    di: torch.Tensor  # decoder input [z_t | h^dec_{t-1} | 1 | 0...]
    di_z: torch.Tensor
    di1_h: torch.Tensor  # h^dec_t in the next slot's decoder input
    se: torch.Tensor  # sigma_t eps_t
    hh: torch.Tensor  # the heads over h^dec_t
    hh_w: torch.Tensor  # their write part w_t
    enc: Cell
    dec: Cell
    # with attention: [x | x_hat_t] per row (xb), the windows' exponentiated fields, both banks
    xhat: torch.Tensor | None = None
    xb: torch.Tensor | None = None
    xbT: torch.Tensor | None = None
    hh_exp: torch.Tensor | None = None
    read: Bank | None = None
    write: Bank | None = None
    # without attention: x_hat_t as part of the encoder input, the canvas update
    xhat_flat: torch.Tensor | None = None
    hh_canvas: torch.Tensor | None = None


@dataclass
class PythonWorkspace:
    """Step buffers of one loop and the views of every step into them.

    save=True (training) keeps every step's inputs and activations for backward: T + 1 slots of
    the inputs, T of the rest; the set is reused by the next training step once its backward
    is done (page faults on ~300 MB of fresh memory per step cost several percent on the CPU).
    save=False (evaluation) keeps two slots, reused in turn, so memory does not grow with T.
    """

    key: tuple
    k: Numbers
    enc_in: torch.Tensor  # (slots, B, ke)
    dec_in: torch.Tensor  # (slots, B, kd)
    c_enc: torch.Tensor  # (slots, B, H): cell states
    c_dec: torch.Tensor
    heads: torch.Tensor  # (slots, B, heads): slot t + 1 holds the heads over h^dec_t
    g_enc: torch.Tensor  # (steps, B, 4H): activated gates, then (backward) their gradients
    g_dec: torch.Tensor
    tc_enc: torch.Tensor  # (steps, B, H): tanh(c_t)
    tc_dec: torch.Tensor
    se: torch.Tensor  # (steps, B, Z): sigma_t eps_t
    sig: torch.Tensor  # (B, H, C, W): sigmoid(c_{t-1})
    grid: FilterGrid | None = None
    xb: torch.Tensor | None = None  # (steps, B, H, 2, C, W): [x | x_hat_t]
    plan: list[Step] = field(default_factory=list)
    backward: Any = None  # python_backward.BackwardViews, added by the first backward (this module does not import its backward)


def workspace(m, x: torch.Tensor, ke: int, kd: int, heads_width: int, save: bool) -> PythonWorkspace:
    T, hd, Z, att = m.steps, m.hidden, m.embed, m.attention
    b, C, Hi, Wi = x.shape
    n, nw = m.read_n, m.write_n
    kw = C * nw * nw if att else C * Hi * Wi
    R = 2 * C * n * n if att else C * Hi * Wi
    slots, steps = (T + 1, T) if save else (2, 1)
    new = x.new_empty
    # Inputs of every step's products, laid out so that no torch.cat is needed; the column of
    # ones multiplies the bias column of [W | b].
    enc_in, dec_in = x.new_zeros(slots, b, ke), x.new_zeros(slots, b, kd)
    enc_in[:, :, R + 2 * hd].fill_(1)
    dec_in[:, :, Z + hd].fill_(1)
    ws = PythonWorkspace(key=(b, x.dtype, x.device, save), k=numbers(x.device, x.dtype), enc_in=enc_in, dec_in=dec_in,
                   c_enc=new(slots, b, hd), c_dec=new(slots, b, hd), heads=new(slots, b, heads_width),
                   g_enc=new(steps, b, 4 * hd), g_dec=new(steps, b, 4 * hd), tc_enc=new(steps, b, hd),
                   tc_dec=new(steps, b, hd), se=new(steps, b, Z), sig=new(b, Hi, C, Wi))
    if att:
        L = max(Hi, Wi)
        ws.grid = grid_of(m, x.dtype)
        ws.xb = new(steps, b, Hi, 2, C, Wi)  # one bmm applies F_Y to both images and every channel (eq 27)
        f_r, d_r = new(2, steps, b, 2, n, L).unbind(0)
        f_w, d_w = new(2, steps, b, 2, nw, L).unbind(0)
    heads = ws.heads
    for s in range(slots - 1 if save else 2):
        s1, gs = (s + 1) % slots, (s if save else 0)
        ei, ei1, di, di1, hh = enc_in[s], enc_in[s1], dec_in[s], dec_in[s1], heads[s1]
        h_enc, h_dec = ei1[:, R + hd : R + 2 * hd], ei1[:, R : R + hd]
        v = Step(ei=ei, ei_r=ei[:, :R], h_enc=h_enc, h_dec=h_dec, di=di, di_z=di[:, :Z], di1_h=di1[:, Z : Z + hd],
                 se=ws.se[gs], hh=hh, hh_w=hh[:, :kw],
                 enc=cell(hd, ws.g_enc[gs], ws.c_enc[s], ws.c_enc[s1], ws.tc_enc[gs], h_enc),
                 dec=cell(hd, ws.g_dec[gs], ws.c_dec[s], ws.c_dec[s1], ws.tc_dec[gs], h_dec))
        if att:
            xbt = ws.xb[gs]
            v.xhat, v.xb = xbt[:, :, 1], xbt.view(b, Hi, 2 * C * Wi)
            v.xbT = v.xb.transpose(1, 2)
            v.hh_exp = hh[:, kw:].view(b, 2, 5)[:, :, 2:]
            v.read = bank(m, heads[s][:, kw + 5 :], f_r[gs], d_r[gs], n)
            v.write = bank(m, hh[:, kw : kw + 5], f_w[gs], d_w[gs], nw)
        else:
            v.xhat_flat, v.hh_canvas = ei[:, :R].view(b, Hi, C, Wi), hh.view(b, Hi, C, Wi)
        ws.plan.append(v)
    return ws


@dataclass
class PythonSaved:
    """What a training forward keeps for python_backward."""

    ws: PythonWorkspace
    x: torch.Tensor
    weights: LoopWeights
    reads: list  # per step: F_Y [x | x_hat] (B, N, 2CW)
    writes: list  # per step: ((w / gamma) F_X, w / gamma)
    mm_dtype: torch.dtype | None
    packed: bool


def forward(m, x: torch.Tensor, eps: torch.Tensor, weights: LoopWeights, save: bool, record: bool,
            mm_dtype: torch.dtype | None = None, packed: bool = True):
    """eq 3-8 for t = 1..T on x (B, C, H, W). Returns (c_T, [mu | log sigma] as (T, B, 2Z), records,
    PythonSaved or None).

    save=True keeps every step's inputs and activations for python_backward.backward; save=False
    (evaluation) keeps two slots and reuses them. mm_dtype (bfloat16 or None): the LSTM
    products' inputs are cast to it (see fast.low_precision). packed: oneDNN packed products
    where they work (packed_gemm.py), else torch.mm.
    """
    enc_w, dec_w, q_w, q_b, heads_w, heads_b = weights
    T, hd, Z, att = m.steps, m.hidden, m.embed, m.attention
    b, C, Hi, Wi = x.shape
    n, nw = m.read_n, m.write_n
    kw = C * nw * nw if att else C * Hi * Wi  # write size
    R = 2 * C * n * n if att else C * Hi * Wi  # encoder input that changes with t (r_t, or x_hat_t)
    lead = 0 if att else C * Hi * Wi  # encoder input that does not (x, in r_t = [x, x_hat_t], eq 17)
    xi = x.permute(0, 2, 1, 3)  # (B, H, C, W): the loop's image layout (see layout.py)

    key = (b, x.dtype, x.device, save)
    ws = take(TRAINING if save else EVALUATION, m, key)
    if ws is None:
        # Plain tensors even under torch.inference_mode: inference tensors could not be written
        # by a later no_grad call reusing them.
        with torch.inference_mode(False):
            ws = workspace(m, x, enc_w.shape[1] - lead, dec_w.shape[1], heads_w.shape[0], save)
    plan, k = ws.plan, ws.k
    enc_in, dec_in, heads = ws.enc_in, ws.dec_in, ws.heads
    # h_0 = 0 (both LSTMs), c_0 = 0; zero_() and fill_(), not "= 0": assigning a Python number
    # makes a host tensor first, which on a GPU is a copy to the device at every call.
    enc_in[0, :, R : R + 2 * hd].zero_()
    dec_in[0, :, Z : Z + hd].zero_()
    ws.c_enc[0].zero_()
    ws.c_dec[0].zero_()
    mu_ls = x.new_empty(T, b, 2 * Z)  # q's output [mu_t | log sigma_t], eq 1-2
    mu_rows, eps_rows = mu_ls.unbind(0), eps.unbind(0)
    mu_parts, ls_parts = mu_ls[..., :Z].unbind(0), mu_ls[..., Z:].unbind(0)
    heads[0] = heads_b  # h^dec_0 = 0: the first read window is the bias alone
    # x's part of the encoder input is the same at every step: one product outside the loop.
    base = None if not lead else matmul(x.reshape(b, lead), double_g(enc_w[:, :lead], hd).t(), mm_dtype)
    # The forward products use the g-gate rows doubled (see lstm_step); backward uses the true weights.
    enc_mm = step_matmul(double_g(enc_w[:, lead:], hd), b, mm_dtype, packed)  # eq 5's product, packed once for all T steps
    dec_mm = step_matmul(double_g(dec_w, hd), b, mm_dtype, packed)  # eq 7's
    q_wt, heads_wt = q_w.t(), heads_w.t()
    canvas, sig = x.new_zeros(b, Hi, C, Wi), ws.sig  # c_0 = 0
    canvas3 = canvas.view(b, Hi, C * Wi)
    reads, writes = [], []
    if att:
        ro, wo = offsets(m, n, x.dtype), offsets(m, nw, x.dtype)
        heads[0, :, kw:].view(b, 2, 5)[:, :, 2:].exp_()  # delta, sigma^2, gamma from their logs
        ws.xb[:, :, :, 0] = xi
    if record:
        canvases = x.new_empty(T, b, Hi, C, Wi)
        rec_read, rec_write = (x.new_empty(T, b, 5), x.new_empty(T, b, 5)) if att else (None, None)

    for t in range(T):
        v = plan[t] if save else plan[t % 2]
        torch.sigmoid(canvas, out=sig)
        if att:
            torch.sub(xi, sig, out=v.xhat)  # eq 3: x_hat = x - sigmoid(c_{t-1})
            rv = v.read  # read window from h^dec_{t-1}, eq 21-24
            filters(rv, ro, ws.grid, k)
            left = torch.bmm(rv.fy, v.xb)  # (B, N, 2CW): F_Y x | F_Y x_hat, every channel
            glimpse = torch.bmm(left.view(b, 2 * C * n, Wi), rv.fxT)  # rows (i, image)
            torch.mul(glimpse.view(b, R), rv.gamma, out=v.ei_r)  # eq 27, read_glimpse's layout
            if save:
                reads.append(left)
            if record:
                rec_read[t] = rv.p
        else:
            torch.sub(xi, sig, out=v.xhat_flat)  # eq 3 (r_t = [x, x_hat], eq 17)
        pre = enc_mm(v.ei, out=v.enc.a)  # eq 5
        if lead:
            pre.add_(base)
        lstm_step(pre, v.enc, k)
        torch.addmm(q_b, v.h_enc, q_wt, out=mu_rows[t])  # eq 1-2
        sigma_eps = torch.exp(ls_parts[t], out=v.se).mul_(eps_rows[t])
        torch.add(mu_parts[t], sigma_eps, out=v.di_z)  # eq 6: z_t = mu_t + sigma_t eps_t
        pre = dec_mm(v.di, out=v.dec.a)  # eq 7
        lstm_step(pre, v.dec, k)
        v.di1_h.copy_(v.dec.h)
        torch.addmm(heads_b, v.dec.h, heads_wt, out=v.hh)  # eq 18/28 and 21
        if att:
            v.hh_exp.exp_()
            wv = v.write
            filters(wv, wo, ws.grid, k)
            # eq 29 with 1/gamma applied to the N x N patch instead of the H x W image; rows (i, channel).
            w = torch.div(v.hh_w, wv.gamma).view(b, nw * C, nw)
            # w F_X / gamma first: (B, N, W) products are ~2x faster than (B, H, N)
            u = torch.bmm(w, wv.fx).view(b, nw, C * Wi)
            canvas3.baddbmm_(wv.fyT, u)  # eq 8: c_t = c_{t-1} + F_Y^T w F_X / gamma, in place
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
        canvases = canvases.permute(0, 1, 3, 2, 4)  # (T, B, C, H, W)
        records = (canvases, rec_read, rec_write) if att else (canvases,)
    canvas = canvas.view(b, C, Hi, Wi) if C == 1 else canvas.permute(0, 2, 1, 3).contiguous()
    if not save:
        EVALUATION[m] = ws
        return canvas, mu_ls, records, None
    return canvas, mu_ls, records, PythonSaved(ws, x, weights, reads, writes, mm_dtype, packed)
