"""The fast engine behind ``DRAW.forward`` and ``DRAW.generate`` (``model.fused = True``).

It computes exactly what draw.py's plain loop computes (eq 3-8, the same parameters), faster:

* per step the matrix products are small (batch x 520 x 1024), so eager autograd spends more
  time on per-op bookkeeping than on arithmetic, and T small weight-gradient products run far
  below the machine's rate. Here the whole time loop is ONE autograd node (_DrawLoop) with a
  hand-written backward: the loop writes every step's inputs into preallocated (T, B, .)
  buffers and each weight gradient is one (T*B)-row product after the backward recurrence, as
  cuDNN does for RNNs;
* the parameters are rearranged once per call (fused_weights): LSTM weights with their bias as
  a column, one head over h^dec for [write | write window | next read window], the affine parts
  of eq 22-24 folded into the attention heads;
* every view into the step buffers is made once per workspace and reused (_Views), constants
  are 0-dim tensors, and the per-step LSTM products use oneDNN packed weights (packed_gemm.py).

tests/test_fastpath.py checks forward, gradients and samples against the plain path of the same
module to 1e-6 in float64. No I/O here.
"""

from __future__ import annotations

import functools
import math
import weakref

import torch
import torch.nn as nn

from drawcli import native
from drawcli.model.draw import FILTER_EPS, LSTMCell, kl_per_image
from drawcli.model.packed_gemm import matmul, packed_gemm_enabled, packed_gemm_works, step_matmul

_aten = torch.ops.aten

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




def _eager(fn):
    """Keep ``fn`` out of torch.compile's tracing (it is one fused node already, with buffers
    reused across calls and private oneDNN ops that no compiler can improve): a compiled DRAW
    compiles the rest and calls this eagerly. torch.compiler.disable is applied only when
    compiling, because importing torch._dynamo costs seconds that `draw sample` should not pay."""

    disabled: list = []  # made on the first compiled call

    @functools.wraps(fn)
    def call(*args, **kwargs):
        if torch.compiler.is_compiling():
            if not disabled:
                disabled.append(torch.compiler.disable(fn))
            return disabled[0](*args, **kwargs)
        return fn(*args, **kwargs)

    return call


def fused_weights(m) -> tuple[torch.Tensor, ...]:
    """The parameters rearranged for the loop, differentiably (autograd maps gradients back).

    Parameters and state_dict keys stay as declared in __init__; this only builds views/copies:
    - LSTM weights as [W | b | 0...] (the loop's inputs hold a constant 1 column): no bias copy
      per step, and the bias gradient comes out of the weight-gradient product for free. Zero
      columns pad the inner dimension to a multiple of 8 (MKL runs K = 357 ~10% slower than 360).
    - LSTM gate rows reordered (i, f, g, o) -> (i, f, o, g): the sigmoid gates side by side.
    - One head over h^dec_t: [write w_t | write attention_t | read attention_{t+1}] (all three
      read the same state: one matrix product instead of three).
    - With C > 1 channels the loop keeps images as (B, H, C, W) (rows of C channels side by side,
      so one bmm applies a filterbank to every channel); the write head's rows and, without
      attention, the encoder's x_hat columns are permuted from the parameters' (C, ...) order to
      match. With C = 1 nothing is permuted.
    """
    return (gates_weight(m, m.encoder), gates_weight(m, m.decoder), m.q.weight, m.q.bias,
            *heads_weight(m, read=True))


def channels_last_rows(m) -> torch.Tensor | None:
    """Index that reorders a (C, A, B)-ordered vector to (A, C, B) order, or None when C = 1.

    A x B is the write patch (N x N) with attention and the image (H x W) without."""
    c = m.channels
    if c == 1:
        return None
    a, b = (m.write_n, m.write_n) if m.attention else (m.height, m.width)
    return torch.arange(c * a * b, device=m.grid_x.device).view(c, a, b).transpose(0, 1).flatten()


def gates_weight(m, cell: LSTMCell) -> torch.Tensor:
    """[W | b | zeros] of an LSTM, rows in gate order (i, f, o, g)."""
    lin, hd = cell.linear, m.hidden
    dev = lin.weight.device
    perm = torch.cat([torch.arange(0, 2 * hd, device=dev), torch.arange(3 * hd, 4 * hd, device=dev),
                      torch.arange(2 * hd, 3 * hd, device=dev)])
    pad = -(lin.in_features + 1) % 8
    weight = lin.weight
    idx = channels_last_rows(m)
    if cell is m.encoder and idx is not None and not m.attention:  # x_hat's columns, (C, H, W) -> (H, C, W)
        v = idx.numel()
        weight = torch.cat([weight[:, :v], weight[:, v : 2 * v][:, idx], weight[:, 2 * v :]], 1)
    return torch.cat([weight, lin.bias[:, None], lin.weight.new_zeros(4 * hd, pad)], 1)[perm]


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
    scale = head.weight.new_tensor([(A + 1) / 2, (B + 1) / 2, 1.0, 1.0, 1.0])
    shift = head.weight.new_tensor([(A + 1) / 2, (B + 1) / 2, math.log(k), 0.0, 0.0])
    order = [0, 1, 3, 2, 4]  # raw rows are (g~_X, g~_Y, log sigma^2, log delta~, log gamma), eq 21
    return head.weight[order] * scale[:, None], head.bias[order] * scale + shift


def pixel_grid(m, dtype) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Pixel coordinates of both axes as one (2, L) tensor, L = max(A, B): one filterbank
    computation covers F_X and F_Y; the mask zeroes the padding when A != B."""
    A, B = m.width, m.height
    grid = m.grid_x.new_zeros(2, max(A, B), dtype=dtype)
    grid[0, :A], grid[1, :B] = m.grid_x, m.grid_y
    return grid, (None if A == B else (grid > 0).to(dtype))


def bank_views(m, p, f, d, n):
    """Views for one filterbank (eq 19-26) computed from params p (B, 5) in ATTENTION_FIELDS order
    into f (F_X, F_Y as (B, 2, N, L)) and d (grid - mu, kept for backward)."""
    b = f.shape[0]
    mu = p.new_empty(b, 2, n)
    return _Views(
        p=p, f=f, d=d, mu=mu, mu4=mu[..., None], g=p[:, 0:2, None], delta=p[:, 2:3, None],
        sigma2=p[:, 3:4, None, None], scale=p.new_empty(b, 1, 1, 1), zsum=p.new_empty(b, 2, n, 1),
        fx=f[:, 0, :, : m.width], fy=f[:, 1, :, : m.height],
        fxT=f[:, 0, :, : m.width].transpose(1, 2), fyT=f[:, 1, :, : m.height].transpose(1, 2),
        gamma=p[:, 4:5], sigma2_col=p[:, 3:4], delta_col=p[:, 2],
    )


def filters(v, offsets, ws):
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


def mu_map(offsets: torch.Tensor) -> torch.Tensor:
    """(2N + 1, 4) matrix taking [sum_a dL/de (a - mu) per (axis, i) | sum dL/de (a - mu)^2] to
    dL/d(g_X, g_Y, delta, log sigma^2), each still to be divided by sigma^2 (eq 19-20, 25-26:
    e = -(a - mu)^2 / (2 sigma^2), mu = g + offset delta)."""
    n = len(offsets)
    m = offsets.new_zeros(2 * n + 1, 4)
    m[:n, 0], m[n : 2 * n, 1] = 1, 1
    m[:n, 2], m[n : 2 * n, 2] = offsets, offsets
    m[2 * n, 3] = 0.5
    return m


def filters_backward(m, v, dfx, dfy, out4, out_delta):
    """dL/d(g_X, g_Y, log delta, log sigma^2) into out4 (the folded head's outputs) from
    dL/dF_X, dL/dF_Y; the caller writes dL/d log gamma."""
    df, prod, zs, S = v.df, v.prod, v.zs, v.S
    if m.width == m.height:
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


def lstm_step(pre, v, k):
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


def lstm_backward(v, s, dh, dc):
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


def lstm_views(m, a, c_prev, c, tc, h):
    hd = m.hidden
    return _Views(a=a, ifo=a[:, : 3 * hd], i=a[:, :hd], f=a[:, hd : 2 * hd], o=a[:, 2 * hd : 3 * hd],
                  g=a[:, 3 * hd :], c_prev=c_prev, c=c, tc=tc, h=h)


def workspace(m, x, ke: int, kd: int, heads_width: int, save: bool):
    """Step buffers and their per-step views for _loop and _loop_backward.

    save=True (training) keeps every step's inputs and activations for backward, and the set
    is reused by the next training step once its backward is done (page faults on ~300 MB of
    fresh memory per step cost several percent on CPU). save=False (evaluation) keeps two
    slots, reused in turn, so memory does not grow with T.
    """
    T, hd, Z, att = m.steps, m.hidden, m.embed, m.attention
    b, C, Hi, Wi = x.shape
    n, nw = m.read_n, m.write_n
    kw = C * nw * nw if att else C * Hi * Wi
    R = 2 * C * n * n if att else C * Hi * Wi
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
              tc_enc=tc_enc, tc_dec=tc_dec, se=se, sig=new(b, Hi, C, Wi))
    if att:
        L = max(Hi, Wi)
        grid, mask = pixel_grid(m, x.dtype)
        ws["grid3"] = grid.to(x.device)[:, None, :]
        ws["mask3"] = None if mask is None else mask.to(x.device)[:, None, :]
        # [x | x_hat_t] side by side per row (each with its C channels): one bmm applies F_Y to all (eq 27)
        xb = ws["xb"] = new(steps, b, Hi, 2, C, Wi)
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
            enc=lstm_views(m, g_enc[gs], c_enc[s], c_enc[s1], tc_enc[gs], ei1[:, R + hd : R + 2 * hd]),
            dec=lstm_views(m, g_dec[gs], c_dec[s], c_dec[s1], tc_dec[gs], ei1[:, R : R + hd]),
        )
        if att:
            xbt = xb[gs]
            v.update(
                xhat=xbt[:, :, 1], x_slot=xbt[:, :, 0], xb=xbt.view(b, Hi, 2 * C * Wi),
                xbT=xbt.view(b, Hi, 2 * C * Wi).transpose(1, 2),
                hh_exp=hh[:, kw:].view(b, 2, 5)[:, :, 2:],
                read=bank_views(m, heads[s][:, kw + 5 :], f_r[gs], d_r[gs], n),
                write=bank_views(m, hh[:, kw : kw + 5], f_w[gs], d_w[gs], nw),
            )
        else:
            v.update(xhat_flat=ei[:, :R].view(b, Hi, C, Wi), hh_canvas=hh.view(b, Hi, C, Wi))
        plan.append(v)
    ws["plan"] = plan
    return ws


def backward_views(m, ws, b, C, Hi, Wi):
    """Scratch buffers and per-step views of loop_backward, added to a saved workspace once."""
    T, hd, Z, att = m.steps, m.hidden, m.embed, m.attention
    n, nw = m.read_n, m.write_n
    kw = C * nw * nw if att else C * Hi * Wi
    x = ws["sig"]  # any tensor of the loop's dtype and device
    da = x.new_empty(b, 4 * hd)
    scratch = _Views(da=da, difo=da[:, : 3 * hd], di=da[:, :hd], df=da[:, hd : 2 * hd],
                     do=da[:, 2 * hd : 3 * hd], dg=da[:, 3 * hd :], tmp=x.new_empty(b, hd))
    d_heads = x.new_zeros(T + 1, b, ws["heads"].shape[2])  # slot t: heads over h^dec_{t-1}
    dq = x.new_zeros(T, b, 2 * Z)
    d_canvas = x.new_empty(b, Hi, C * Wi)  # dL/dc_t in the loop's (B, H, C, W) layout
    bw = dict(scratch=scratch, d_heads=d_heads, dq=dq, d_canvas=d_canvas, d_canvasT=d_canvas.transpose(1, 2),
              d_canvas4=d_canvas.view(b, Hi, C, Wi))
    if att:
        L = max(Hi, Wi)
        for name, nn_, offsets in (("r", n, m.read_offsets), ("w", nw, m.write_offsets)):
            df = x.new_zeros(b, 2, nn_, L)
            S = x.new_empty(b, 2 * nn_ + 1)
            bw["bank_" + name] = _Views(df=df, dfx=df[:, 0, :, :Wi], dfy=df[:, 1, :, :Hi], prod=x.new_empty(b, 2, nn_, L),
                                        zs=x.new_empty(b, 2, nn_, 1), S=S, S_mu=S[:, : 2 * nn_].view(b, 2, nn_),
                                        S_sigma=S[:, 2 * nn_], mu_map=mu_map(offsets.to(x.dtype)))
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


def loop(m, x, eps, weights, save: bool, record: bool, mm_dtype=None, native: bool = False):
    """eq 3-8 for t = 1..T. Returns (c_T, [mu | log sigma] as (T, B, 2Z), records, saved).

    save=True keeps every step's inputs and activations for loop_backward; save=False
    (no gradient needed: evaluation) keeps two slots and reuses them. mm_dtype (bfloat16 or
    None): the LSTM products' inputs are cast to it (see low_precision).
    """
    if native:
        return native_loop(m, x, eps, weights, mm_dtype)
    enc_w, dec_w, q_w, q_b, heads_w, heads_b = weights
    T, hd, Z, att = m.steps, m.hidden, m.embed, m.attention
    b, C, Hi, Wi = x.shape
    n, nw = m.read_n, m.write_n
    kw = C * nw * nw if att else C * Hi * Wi  # write size
    R = 2 * C * n * n if att else C * Hi * Wi  # encoder input that changes with t (r_t, or x_hat_t)
    lead = 0 if att else C * Hi * Wi  # encoder input that does not (x, in r_t = [x, x_hat_t], eq 17)
    xi = x.permute(0, 2, 1, 3)  # (B, H, C, W): the loop's image layout (see fused_weights)

    key = (b, x.dtype, x.device, save)
    ws = _take_workspace(m, key, _WORKSPACES if save else _EVAL_WORKSPACES)
    if ws is None:
        # Plain tensors even under torch.inference_mode: inference tensors could not be written
        # by a later no_grad call reusing them.
        with torch.inference_mode(False):
            ws = workspace(m, x, enc_w.shape[1] - lead, dec_w.shape[1], heads_w.shape[0], save)
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
    base = None if not lead else matmul(x.reshape(b, lead), _double_g(enc_w[:, :lead], hd).t(), mm_dtype)
    # The forward products use the g-gate rows doubled (see lstm_step); backward uses the true weights.
    enc_mm = step_matmul(_double_g(enc_w[:, lead:], hd), b, mm_dtype)  # eq 5's product, packed once for all T steps
    dec_mm = step_matmul(_double_g(dec_w, hd), b, mm_dtype)  # eq 7's
    q_wt, heads_wt = q_w.t(), heads_w.t()
    canvas, sig = x.new_zeros(b, Hi, C, Wi), ws["sig"]  # c_0 = 0
    canvas3 = canvas.view(b, Hi, C * Wi)
    reads, writes = [], []
    if att:
        ro, wo = m.read_offsets.to(x.dtype), m.write_offsets.to(x.dtype)
        heads[0, :, kw:].view(b, 2, 5)[:, :, 2:].exp_()  # delta, sigma^2, gamma from their logs
        ws["xb"][:, :, :, 0] = xi
    if record:
        canvases = x.new_empty(T, b, Hi, C, Wi)
        rec_read, rec_write = (x.new_empty(T, b, 5), x.new_empty(T, b, 5)) if att else (None, None)

    for t in range(T):
        v = plan[t] if save else plan[t % 2]
        torch.sigmoid(canvas, out=sig)
        if att:
            torch.sub(xi, sig, out=v.xhat)  # eq 3: x_hat = x - sigmoid(c_{t-1})
            rv = v.read  # read window from h^dec_{t-1}, eq 21-24
            filters(rv, ro, ws)
            left = torch.bmm(rv.fy, v.xb)  # (B, N, 2CW): F_Y x | F_Y x_hat, every channel
            glimpse = torch.bmm(left.view(b, 2 * C * n, Wi), rv.fxT)  # rows (i, image)
            torch.mul(glimpse.view(b, R), rv.gamma, out=v.ei_r)  # eq 27, read_glimpse's layout
            if save:
                reads.append(left)
            if record:
                rec_read[t] = rv.p
        else:
            torch.sub(xi, sig, out=v.xhat_flat)  # eq 3 (r_t = [x, x_hat], eq 17)
        pre = enc_mm(v.ei, out=v.g_enc)  # eq 5
        if lead:
            pre.add_(base)
        lstm_step(pre, v.enc, k)
        torch.addmm(q_b, v.h_enc, q_wt, out=mu_rows[t])  # eq 1-2
        sigma_eps = torch.exp(ls_parts[t], out=v.se).mul_(eps_rows[t])
        torch.add(mu_parts[t], sigma_eps, out=v.di_z)  # eq 6: z_t = mu_t + sigma_t eps_t
        pre = dec_mm(v.di, out=v.g_dec)  # eq 7
        lstm_step(pre, v.dec, k)
        v.di1_h.copy_(v.dec.h)
        torch.addmm(heads_b, v.dec.h, heads_wt, out=v.hh)  # eq 18/28 and 21
        if att:
            v.hh_exp.exp_()
            wv = v.write
            filters(wv, wo, ws)
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
    saved = dict(workspace=ws, x=x, weights=weights, reads=reads, writes=writes, mm_dtype=mm_dtype) if save else None
    if not save:
        _EVAL_WORKSPACES[m] = ws
    return canvas, mu_ls, records, saved


def head_grads(enc_in, dq, d_heads, R: int, hd: int) -> tuple[torch.Tensor, ...]:
    """Gradients of q's and the heads' weights and biases, one (T*B)-row product each, from
    dL/d[mu | log sigma] (T, B, 2Z) and dL/d heads (T+1, B, .), with h^enc_t and h^dec_t read
    from the encoder inputs' slots 1..T (both loops keep them there)."""
    T, b = dq.shape[:2]
    rows = T * b
    dq_all = dq.reshape(rows, -1)
    d_q_w = dq_all.t() @ enc_in[1:, :, R + hd : R + 2 * hd].reshape(rows, hd)  # h^enc_1..T
    d_heads_w = d_heads[1:].reshape(rows, -1).t() @ enc_in[1:, :, R : R + hd].reshape(rows, hd)  # h^dec_1..T
    return d_q_w, dq_all.sum(0), d_heads_w, d_heads.sum((0, 1))


def loop_backward(m, sv, d_canvas, d_mu_ls, d_lz, mu_ls, need_x: bool):
    """Backpropagation through time for _loop: (dx or None, gradients of the fused weights)."""
    if sv.get("native"):
        return native_loop_backward(m, sv, d_canvas, d_mu_ls, d_lz, mu_ls, need_x)
    ws, x = sv["workspace"], sv["x"]
    enc_w, dec_w, q_w, q_b, heads_w, heads_b = sv["weights"]
    enc_in, dec_in, g_enc, g_dec = ws["enc_in"], ws["dec_in"], ws["g_enc"], ws["g_dec"]
    T, hd, Z, att = m.steps, m.hidden, m.embed, m.attention
    b, C, Hi, Wi = x.shape
    n, nw = m.read_n, m.write_n
    kw = C * nw * nw if att else C * Hi * Wi
    R = 2 * C * n * n if att else C * Hi * Wi
    lead = 0 if att else C * Hi * Wi
    ke, kd = enc_in.shape[2], dec_in.shape[2]
    plan = ws["plan"]
    bw = ws.get("backward") or backward_views(m, ws, b, C, Hi, Wi)
    scratch, d_heads, dq, dC, dCT = bw["scratch"], bw["d_heads"], bw["dq"], bw["d_canvas"], bw["d_canvasT"]
    dC4, xi = bw["d_canvas4"], x.permute(0, 2, 1, 3)  # the loop's (B, H, C, W) layout
    # Input gradients of each step's products: only the columns of real inputs (not the ones or
    # padding columns), with the weights packed once for all T steps.
    mm_dtype = sv["mm_dtype"]
    enc_mm_t = step_matmul(enc_w[:, lead : lead + R + 2 * hd].t(), b, mm_dtype)
    dec_mm_t = step_matmul(dec_w[:, : Z + hd].t(), b, mm_dtype)

    if d_canvas is None:
        dC.zero_()
    else:
        dC4.copy_(d_canvas.permute(0, 2, 1, 3))  # dL/dc_t, updated in place as t goes down
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
    dxi = dx.permute(0, 2, 1, 3) if need_x else None
    se_rows = ws["se"].unbind(0)

    for t in reversed(range(T)):
        v, bv = plan[t], bw["steps"][t]
        # write at step t (eq 8, 29; eq 18): every update receives dL/dc_t
        if att:
            wv = v.write  # update = F_Y^T u, u = (w / gamma) F_X
            u, w = sv["writes"][t]
            du = torch.bmm(wv.fy, dC)  # (B, N, CW)
            dfy = torch.bmm(u, dCT)  # (B, N, H)
            du = du.view(b, nw * C, Wi)
            dw = torch.bmm(du, wv.fxT)  # dL/d(w / gamma): (B, NC, N)
            dfx = torch.bmm(w.transpose(1, 2), du)  # (B, N, W)
            torch.sum(dw * w, (1, 2), out=bv.dhh_wgamma).neg_()  # dL/d log gamma
            torch.div(dw.view(b, kw), wv.gamma, out=bv.dhh_w)
            filters_backward(m, bv.wbank, dfx, dfy, bv.dhh_w4, bv.dhh_wdelta)
        else:
            bv.dhh.copy_(dC.view(b, kw))
        # h^dec_t feeds the heads and step t+1's encoder and decoder (eq 5, 7)
        dh = torch.add(d_ei_next[:, R : R + hd], d_di_next[:, Z : Z + hd]).addmm_(bv.dhh, heads_w)
        gd = lstm_backward(v.dec, scratch, dh, dc_dec)
        d_di = dec_mm_t(gd)  # [dz_t | dh^dec_{t-1}]
        dz = d_di[:, :Z]
        bv.dq_mu.add_(dz)  # eq 6: z = mu + sigma eps
        bv.dq_ls.addcmul_(dz, se_rows[t])  # d/d log sigma = sigma eps dz
        dh = torch.addmm(d_ei_next[:, R + hd : R + 2 * hd], bv.dq, q_w)  # h^enc_t feeds q and step t+1's encoder
        ge = lstm_backward(v.enc, scratch, dh, dc_enc)
        d_ei = enc_mm_t(ge)  # [dr_t | dh^dec_{t-1} | dh^enc_{t-1}]
        # read at step t (eq 27; eq 17)
        if att:
            rv = v.read
            left = sv["reads"][t]
            dr = d_ei[:, :R]
            torch.sum(dr * v.ei_r, 1, out=bv.dhr_gamma)  # dL/d log gamma (r = gamma G)
            dg = (dr * rv.gamma).view(b, 2 * C * n, n)
            dleft = torch.bmm(dg, rv.fx)  # (B, 2CN, W)
            dfx = torch.bmm(dg.transpose(1, 2), left.view(b, 2 * C * n, Wi))
            dleft = dleft.view(b, n, 2 * C * Wi)
            dfy = torch.bmm(dleft, v.xbT)
            dxb = torch.bmm(rv.fyT, dleft).view(b, Hi, 2, C, Wi)
            filters_backward(m, bv.rbank, dfx, dfy, bv.dhr4, bv.dhr_delta)
            d_xhat, x_hat = dxb[:, :, 1], v.xhat
            if need_x:
                dxi += dxb[:, :, 0]
        else:
            d_xhat, x_hat = d_ei[:, :R].view(b, Hi, C, Wi), v.xhat_flat
        if need_x:
            dxi += d_xhat
        dC4.sub_(_aten.sigmoid_backward(d_xhat, xi - x_hat))  # dL/dc_{t-1}; x - x_hat = sigmoid(c_{t-1})
        d_ei_next, d_di_next = d_ei, d_di

    # Weight gradients: one (T*B)-row product each instead of T small ones (bias included: the
    # inputs' column of ones).
    rows = T * b
    ge_all, gd_all = g_enc.view(rows, 4 * hd), g_dec.view(rows, 4 * hd)
    d_enc_w = matmul(ge_all.t(), enc_in[:T].view(rows, ke), mm_dtype)
    if lead:
        g_sum = g_enc.sum(0)  # x's input is the same at every step
        d_enc_w = torch.cat([matmul(g_sum.t(), x.reshape(b, lead), mm_dtype), d_enc_w], 1)
        if need_x:
            dx += matmul(g_sum, enc_w[:, :lead], mm_dtype).view(b, C, Hi, Wi)
    d_dec_w = matmul(gd_all.t(), dec_in[:T].view(rows, kd), mm_dtype)
    grads = (d_enc_w, d_dec_w, *head_grads(enc_in, dq, d_heads, R, hd))
    _WORKSPACES[m] = ws  # this forward's buffers are free for the next one
    return dx, grads


def native_fused_weights(m) -> tuple[torch.Tensor, ...]:
    """fused_weights for the native loop: the LSTM weights as [W | b | 0...] in LSTMCell's gate
    order (no reordering: one concatenation each), q, and the heads as fused_weights has them."""
    return (native_gates_weight(m.encoder), native_gates_weight(m.decoder), m.q.weight, m.q.bias,
            *heads_weight(m, read=True))


def native_gates_weight(cell: LSTMCell) -> torch.Tensor:
    lin = cell.linear
    pad = -(lin.in_features + 1) % 8
    return torch.cat([lin.weight, lin.bias[:, None], lin.weight.new_zeros(lin.out_features, pad)], 1)


def native_applies(m, x: torch.Tensor, record: bool, mm_dtype) -> bool:
    """Whether csrc/draw_loop.cpp runs this training forward (else the Python loop above)."""
    return (native.ready() and m.attention and m.channels == 1 and not record and x.device.type == "cpu"
            and x.dtype in (torch.float32, torch.float64) and mm_dtype in (None, torch.bfloat16)
            and (mm_dtype is None or x.dtype == torch.float32))


# The native loop's buffers, in the order draw_loop.cpp's make_loop takes them (the last four only
# with bfloat16 products). mu_ls, canvas and lz are each call's outputs, not kept.
NATIVE_BUFFERS = ("enc_in", "dec_in", "c_enc", "c_dec", "g_enc", "g_dec", "tc_enc", "tc_dec", "se", "heads",
                  "mu_ls", "xhat", "f_r", "f_w", "left", "u", "wdiv", "canvas", "lz",
                  "enc_lp", "dec_lp", "g_enc_lp", "g_dec_lp")


def native_workspace(m, b: int, dtype, ke: int, kd: int, lowp: bool) -> dict:
    """The native loop's buffers for batch b, made once per shape (layouts as in workspace())."""
    T, hd, Z, H, W = m.steps, m.hidden, m.embed, m.height, m.width
    n, nw, L = m.read_n, m.write_n, max(H, W)
    R, hw = 2 * n * n, nw * nw + 10

    def new(*shape, dt=dtype, zero=False):
        return torch.zeros(shape, dtype=dt) if zero else torch.empty(shape, dtype=dt)

    ws = dict(
        # [r_t | h^dec_{t-1} | h^enc_{t-1} | 1 | 0...] and [z_t | h^dec_{t-1} | 1 | 0...]: slot t is step t's input
        enc_in=new(T + 1, b, ke, zero=True), dec_in=new(T + 1, b, kd, zero=True),
        c_enc=new(T + 1, b, hd), c_dec=new(T + 1, b, hd),
        g_enc=new(T, b, 4 * hd), g_dec=new(T, b, 4 * hd),  # activated gates (i, f, g, o), then their gradients
        tc_enc=new(T, b, hd), tc_dec=new(T, b, hd), se=new(T, b, Z),  # tanh(c_t), sigma_t eps_t
        heads=new(T + 1, b, nw * nw + 10),  # slot t + 1: [w_t | write window_t | read window_{t+1}] over h^dec_t
        xhat=new(T, b, H * W), f_r=new(T, b, 2, n, L), f_w=new(T, b, 2, nw, L),  # F_X, F_Y
        left=new(T, b, n, 2 * W), u=new(T, b, nw, W), wdiv=new(T, b, nw * nw),  # F_Y [x | x_hat], (w/gamma) F_X, w/gamma
        mu_ls=None, canvas=None, lz=None,
    )
    ws["enc_in"][:, :, R + 2 * hd] = 1  # the column that multiplies the bias column of [W | b]
    ws["dec_in"][:, :, Z + hd] = 1
    if lowp:  # the products' inputs in bfloat16, written where they are made, read again for the weight gradients
        ws.update(enc_lp=new(T, b, ke, dt=torch.bfloat16, zero=True), dec_lp=new(T, b, kd, dt=torch.bfloat16, zero=True),
                  g_enc_lp=new(T, b, 4 * hd, dt=torch.bfloat16), g_dec_lp=new(T, b, 4 * hd, dt=torch.bfloat16))
        ws["enc_lp"][:, :, R + 2 * hd] = 1
        ws["dec_lp"][:, :, Z + hd] = 1
    ws.update(d_heads=new(T + 1, b, hw), dq=new(T, b, 2 * Z), d_canvas=new(b, H, W))
    return ws


def native_buffers(ws: dict, lowp: bool) -> list[torch.Tensor]:
    return [ws[name] for name in NATIVE_BUFFERS[: len(NATIVE_BUFFERS) if lowp else -4]]


def native_weights(m, enc_w, dec_w, b: int, chunks: int, mm_dtype) -> list[torch.Tensor]:
    """The LSTM weights in the products' dtype (bfloat16, or empty tensors), then packed by oneDNN
    for the chunk's rows (see packed_gemm.py; empty where that is off or unavailable): forward,
    then the input gradients' W[:, :inputs]^T. (q's and the heads' products, 64 x 256 x 200 and
    smaller, stay torch.addmm: packing did not make them faster.)"""
    cd = m.embed + m.hidden
    ce = 2 * m.read_n * m.read_n + 2 * m.hidden
    lp = [w.to(mm_dtype).contiguous() for w in (enc_w, dec_w)] if mm_dtype is not None else [enc_w.new_empty(0)] * 2
    dtype = mm_dtype or enc_w.dtype
    rows = -(-b // chunks)  # the first chunk's rows, as draw_loop.cpp's over_chunks cuts them
    if not (packed_gemm_enabled() and rows >= 32 and dtype in (torch.float32, torch.bfloat16)
            and torch.backends.mkldnn.enabled and packed_gemm_works(dtype)):
        return lp + [enc_w.new_empty(0)] * 4
    mats = (enc_w, dec_w, enc_w[:, :ce].t(), dec_w[:, :cd].t())
    return lp + [torch.ops.mkldnn._reorder_linear_weight(w.to(dtype).contiguous(), rows) for w in mats]


def native_dims(m, b: int) -> list[int]:
    return [m.steps, b, m.height, m.width, m.hidden, m.embed, m.read_n, m.write_n]


def native_chunks(b: int) -> int:
    """One chunk of the batch per thread (draw_loop.cpp runs them side by side), none under 8 rows."""
    return max(1, min(torch.get_num_threads(), b // 8))


def native_loop(m, x, eps, weights, mm_dtype):
    """loop(save=True) by csrc/draw_loop.cpp (drawcli/native.py loads it): attention, one
    channel, CPU. The same outputs, plus L^z (eq 11, summed as the loop goes), and the buffers
    that native_loop_backward reads."""
    enc_w, dec_w, q_w, q_b, heads_w, heads_b = weights
    T, hd, Z = m.steps, m.hidden, m.embed
    b, _, H, W = x.shape
    n, nw = m.read_n, m.write_n
    kw, R, lowp = nw * nw, 2 * n * n, mm_dtype is not None
    key = ("native", b, x.dtype, lowp)
    ws = _take_workspace(m, key, _WORKSPACES)
    if ws is None:
        with torch.inference_mode(False):
            ws = native_workspace(m, b, x.dtype, enc_w.shape[1], dec_w.shape[1], lowp)
        ws["key"] = key
    ws["enc_in"][0, :, R : R + 2 * hd] = 0  # h_0 = 0 (both LSTMs), c_0 = 0
    ws["dec_in"][0, :, Z : Z + hd] = 0
    ws["c_enc"][0], ws["c_dec"][0] = 0, 0
    if lowp:
        ws["enc_lp"][0, :, R : R + 2 * hd] = 0
        ws["dec_lp"][0, :, Z : Z + hd] = 0
    heads = ws["heads"]
    heads[0] = heads_b  # h^dec_0 = 0: the first read window is the bias alone
    heads[0, :, kw:].view(b, 2, 5)[:, :, 2:].exp_()
    mu_ls, canvas, lz = x.new_empty(T, b, 2 * Z), x.new_zeros(b, H, W), x.new_zeros(b)
    grid, _ = pixel_grid(m, x.dtype)
    ins = [x.reshape(b, H, W).contiguous(), eps.contiguous(), grid.contiguous(),
           m.read_offsets.to(x.dtype).contiguous(), m.write_offsets.to(x.dtype).contiguous(),
           *(w.detach().contiguous() for w in weights)]
    chunks = native_chunks(b)  # backward must cut the batch the same way: the buffers are laid out per chunk
    ins += native_weights(m, enc_w.detach(), dec_w.detach(), b, chunks, mm_dtype)
    bufs = native_buffers(dict(ws, mu_ls=mu_ls, canvas=canvas, lz=lz), lowp)
    torch.ops.drawcli.loop_forward(ins, bufs, native_dims(m, b), lowp, FILTER_EPS, chunks)
    saved = dict(native=True, workspace=ws, x=x, ins=ins, mm_dtype=mm_dtype, lz=lz, chunks=chunks)
    return canvas.view(b, 1, H, W), mu_ls, (), saved


def native_loop_backward(m, sv, d_canvas, d_mu_ls, d_lz, mu_ls, need_x: bool):
    """loop_backward for native_loop: the recurrence in C++, the weight gradients here."""
    ws, x, ins = sv["workspace"], sv["x"], sv["ins"]
    T, hd = m.steps, m.hidden
    b, _, H, W = x.shape
    R, lowp = 2 * m.read_n * m.read_n, sv["mm_dtype"] is not None
    d_heads, dq, dC = ws["d_heads"], ws["dq"], ws["d_canvas"]  # dq: written by the loop (eq 11, d_mu_ls, z)
    d_heads.zero_()
    if d_canvas is None:
        dC.zero_()
    else:
        dC.copy_(d_canvas.reshape(b, H, W))
    d_lz = x.new_zeros(b) if d_lz is None else d_lz.contiguous()
    d_mu_ls = x.new_empty(0) if d_mu_ls is None else d_mu_ls.contiguous()
    dx = x.new_zeros(b, H, W) if need_x else x.new_empty(0)
    bufs = native_buffers(dict(ws, mu_ls=mu_ls, canvas=dC, lz=d_lz), lowp)  # backward reads mu_ls, not the other two
    torch.ops.drawcli.loop_backward(ins, bufs, [d_heads, dq, dC, dx, d_lz, d_mu_ls], native_dims(m, b), lowp,
                                    FILTER_EPS, sv["chunks"])
    # Weight gradients: one (T*B)-row product each, as loop_backward's (bias included: the
    # inputs' column of ones); with bfloat16 products their inputs were written in bfloat16.
    rows, enc_in = T * b, ws["enc_in"]
    if lowp:
        d_enc_w = (ws["g_enc_lp"].view(rows, -1).t() @ ws["enc_lp"].view(rows, -1)).to(x.dtype)
        d_dec_w = (ws["g_dec_lp"].view(rows, -1).t() @ ws["dec_lp"].view(rows, -1)).to(x.dtype)
    else:
        d_enc_w = ws["g_enc"].view(rows, -1).t() @ enc_in[:T].view(rows, -1)
        d_dec_w = ws["g_dec"].view(rows, -1).t() @ ws["dec_in"][:T].view(rows, -1)
    grads = (d_enc_w, d_dec_w, *head_grads(enc_in, dq, d_heads, R, hd))
    _WORKSPACES[m] = ws  # this forward's buffers are free for the next one
    return (dx.view(b, 1, H, W) if need_x else None), grads


@_eager
def encode_decode(m, x: torch.Tensor, eps: torch.Tensor, record: bool):
    """DRAW.encode_decode, fused: (c_T, mu, log sigma, L^z, records)."""
    mm_dtype = low_precision(x)
    training = torch.is_grad_enabled() and (x.requires_grad or any(p.requires_grad for p in m.parameters()))
    use_native = training and native_applies(m, x, record, mm_dtype)
    weights = native_fused_weights(m) if use_native else fused_weights(m)
    # The loop writes into preallocated buffers of x's dtype: autocast stays out of it, and
    # mm_dtype says which products run in low precision instead.
    with torch.autocast(x.device.type, enabled=False):
        if training:
            canvas, mu_ls, lz, *records = _DrawLoop.apply(m, record, mm_dtype, use_native, x, eps, *weights)
        else:  # evaluation: no buffers kept for backward
            canvas, mu_ls, records, _ = loop(m, x, eps, weights, save=False, record=record, mm_dtype=mm_dtype)
            lz = kl_per_image(*mu_ls.split(m.embed, -1))
    mu, log_sigma = mu_ls.chunk(2, dim=-1)
    return canvas, mu, log_sigma, lz, tuple(records)


@_eager
def decode(m, z_all: torch.Tensor, every_step: bool = True) -> tuple[torch.Tensor, torch.Tensor | None]:
    """DRAW.decode, fused: the decoder, write head and write attention only."""
    mm_dtype = low_precision(z_all)
    with torch.autocast(z_all.device.type, enabled=False):  # the loop writes into buffers of z's dtype
        return _decode(m, z_all, every_step, mm_dtype)


def low_precision(ref: torch.Tensor) -> torch.dtype | None:
    """The dtype of the LSTM products under torch.autocast (bfloat16 or float16), else None.

    Mixed precision in the fused engine: inside an autocast region the two LSTM products of every
    step (eq 5 and 7, about 94% of the model's FLOPs) and their gradients run with inputs cast to
    autocast's dtype, accumulating in float32. Everything else stays in the model's dtype:
    the cell states, canvas, losses and KL, the small q and attention heads (whose outputs are
    exponentiated: eq 1-2, 21-24) and the filterbanks. Only float32 models are cast.
    """
    dev = ref.device.type
    if ref.dtype != torch.float32 or not torch.is_autocast_enabled(dev):
        return None
    return torch.get_autocast_dtype(dev)


def _decode(m, z_all: torch.Tensor, every_step: bool, mm_dtype) -> tuple[torch.Tensor, torch.Tensor | None]:
    T, n, Z = z_all.shape
    hd, C, Hi, Wi, nw, att = m.hidden, m.channels, m.height, m.width, m.write_n, m.attention
    ref = z_all
    dec_w, (heads_w, heads_b) = gates_weight(m, m.decoder), heads_weight(m, read=False)
    kw = C * nw * nw if att else C * Hi * Wi
    k = _constants(ref)
    dec_mm = step_matmul(_double_g(dec_w, hd), n, mm_dtype)  # eq 7's product, weight packed once for all T steps
    dec_in = ref.new_zeros(n, dec_w.shape[1])  # [z_t | h^dec_{t-1} | 1 | 0...]: one product per step
    dec_in[:, Z + hd] = 1
    h, z_in = dec_in[:, Z : Z + hd], dec_in[:, :Z]  # h^dec_0 = 0; the LSTM writes h_t into h
    gates, c, tc = ref.new_empty(n, 4 * hd), ref.new_zeros(2, n, hd), ref.new_empty(n, hd)
    cells = [lstm_views(m, gates, c[s], c[1 - s], tc, h) for s in (0, 1)]
    kept = T if every_step else 1  # steps whose canvas and window are returned
    heads = ref.new_empty(kept, n, heads_w.shape[0])  # [w_t | write attention_t]
    # Canvases in the loop's (n, H, C, W) layout, seen as (n, H, CW) by the write's bmm.
    canvases = ref.new_empty(T, n, Hi, C * Wi) if every_step else ref.new_zeros(1, n, Hi, C * Wi)
    prev = ref.new_zeros(n, Hi, C * Wi) if every_step else canvases[0]  # c_0 = 0; updated in place when kept == 1
    out_rows, heads_rows, z_rows = canvases.unbind(0), heads.unbind(0), z_all.unbind(0)
    heads_wt = heads_w.t()
    if att:
        coords, mask = pixel_grid(m, ref.dtype)
        wsd = dict(k=k, grid3=coords[:, None, :], mask3=None if mask is None else mask[:, None, :])
        f, d = ref.new_empty(2, n, 2, nw, max(Hi, Wi)).unbind(0)
        banks = [bank_views(m, hh[:, kw:], f, d, nw) for hh in heads_rows]
        offsets = m.write_offsets.to(ref.dtype)
    for t in range(T):
        j = t if every_step else 0
        z_in.copy_(z_rows[t])
        pre = dec_mm(dec_in, out=gates)  # eq 7
        lstm_step(pre, cells[t % 2], k)
        hh = torch.addmm(heads_b, h, heads_wt, out=heads_rows[j])  # eq 18/28 and 21
        if att:
            bank = banks[j]
            bank.p[:, 2:].exp_()  # delta, sigma^2, gamma from their logs
            filters(bank, offsets, wsd)
            w = torch.div(hh[:, :kw], bank.gamma).view(n, nw * C, nw)
            u = torch.bmm(w, bank.fx).view(n, nw, C * Wi)  # (w / gamma) F_X, as in loop
            if every_step:
                torch.baddbmm(prev, bank.fyT, u, out=out_rows[j])  # eq 8, 29
            else:
                prev.baddbmm_(bank.fyT, u)
        elif every_step:
            torch.add(prev, hh.view(n, Hi, C * Wi), out=out_rows[j])  # eq 8, 18
        else:
            prev.add_(hh.view(n, Hi, C * Wi))
        prev = out_rows[j]
    canvases = canvases.view(-1, n, Hi, C, Wi).permute(0, 1, 3, 2, 4)  # (T, n, C, H, W)
    return canvases, (heads[:, :, kw:] if att else None)


class _DrawLoop(torch.autograd.Function):
    """DRAW's time loop as one autograd node: forward DRAW._loop, backward DRAW._loop_backward.

    Inputs: the module (for its shapes), record flag, the low-precision dtype of the LSTM products (or None),
    whether the native loop runs it (its weights are native_fused_weights), x, eps, the fused weights.
    Outputs: c_T, [mu | log sigma] (T, B, 2Z), L^z (B,) (eq 11, here so that its gradient
    is three bulk ops instead of an autograd graph), then the records (no gradient).
    """

    @staticmethod
    def forward(ctx, model, record, mm_dtype, native, x, eps, *weights):
        canvas, mu_ls, records, saved = loop(model, x, eps, weights, save=True, record=record, mm_dtype=mm_dtype,
                                             native=native)
        lz = saved.pop("lz", None)  # the native loop sums eq 11 as it goes
        if lz is None:
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
            dx, grads = loop_backward(ctx.model, ctx.saved, d_canvas, d_mu_ls, d_lz, mu_ls, need_x=ctx.needs_input_grad[4])
        ctx.saved = None  # drop this forward's per-step tensors now (its buffers went back to _WORKSPACES)
        return (None, None, None, None, dx, None, *grads)



