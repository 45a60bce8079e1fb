"""Backpropagation through time for python_loop.forward: the recurrence backwards, step by step,
then one (T*B)-row product per weight gradient. Derivatives by hand, equation by equation;
tests/test_fastpath.py checks them against autograd through draw.py's plain loops. No I/O here.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from drawcli.model.layout import offsets
from drawcli.model.packed_gemm import matmul, step_matmul
from drawcli.model.python_loop import TRAINING, Bank, Cell, PythonSaved

_aten = torch.ops.aten


@dataclass
class Scratch:
    """dL/d(pre-activations) of one LSTM step by gate (i, f, g, o), and a temporary."""

    da: torch.Tensor
    dif: torch.Tensor
    di: torch.Tensor
    df: torch.Tensor
    dg: torch.Tensor
    do: torch.Tensor
    tmp: torch.Tensor


def lstm_backward(v: Cell, s: Scratch, dh: torch.Tensor, dc: torch.Tensor) -> torch.Tensor:
    """Backward of lstm_step: overwrites v.a (activated gates) with dL/d(pre-activations) and turns
    dc (dL/dc_t from later steps) into dL/dc_{t-1}. Reusing v.a saves a (T, B, 4H) buffer."""
    torch.mul(dh, v.o, out=s.tmp)
    dc.add_(_aten.tanh_backward.grad_input(s.tmp, v.tc, grad_input=s.tmp))  # also through h = o tanh(c)
    torch.mul(dc, v.g, out=s.di)
    torch.mul(dc, v.c_prev, out=s.df)
    torch.mul(dc, v.i, out=s.dg)
    torch.mul(dh, v.tc, out=s.do)
    dc.mul_(v.f)  # dL/dc_{t-1}
    # ATen's fused derivative kernels (one op each instead of three): s (1 - s) and 1 - g^2.
    _aten.sigmoid_backward.grad_input(s.dif, v.if_, grad_input=v.if_)
    _aten.tanh_backward.grad_input(s.dg, v.g, grad_input=v.g)
    _aten.sigmoid_backward.grad_input(s.do, v.o, grad_input=v.o)
    return v.a


def mu_map(offs: torch.Tensor) -> torch.Tensor:
    """(2N + 1, 4) matrix taking [sum_a dL/de (a - mu) per (axis, i) | sum dL/de (a - mu)^2] to
    dL/d(g_X, g_Y, delta, log sigma^2), each still to be divided by sigma^2 (eq 19-20, 25-26:
    e = -(a - mu)^2 / (2 sigma^2), mu = g + offset delta)."""
    n = len(offs)
    m = offs.new_zeros(2 * n + 1, 4)
    m[:n, 0].fill_(1)
    m[n : 2 * n, 1].fill_(1)
    m[:n, 2], m[n : 2 * n, 2] = offs, offs
    m[2 * n, 3].fill_(0.5)
    return m


@dataclass
class BankGrad:
    """Scratch of one filterbank's backward (shared by all steps)."""

    df: torch.Tensor  # dL/dF_X, dL/dF_Y as (B, 2, N, L)
    dfx: torch.Tensor
    dfy: torch.Tensor
    prod: torch.Tensor
    zs: torch.Tensor
    S: torch.Tensor
    S_mu: torch.Tensor
    S_sigma: torch.Tensor
    mu_map: torch.Tensor


def filters_backward(square: bool, g: BankGrad, v: Bank, dfx, dfy, out4: torch.Tensor, out_delta: torch.Tensor) -> None:
    """dL/d(g_X, g_Y, log delta, log sigma^2) into out4 (the folded head's outputs) from
    dL/dF_X, dL/dF_Y of the bank v; the caller writes dL/d log gamma."""
    df = g.df
    if square:
        torch.stack([dfx, dfy], 1, out=df)
    else:  # zeroed first: the previous call's arithmetic below wrote (0 times something) into the padding
        df.zero_()
        g.dfx.copy_(dfx)
        g.dfy.copy_(dfy)
    torch.mul(df, v.f, out=g.prod)
    torch.sum(g.prod, -1, keepdim=True, out=g.zs)
    df.sub_(g.zs).mul_(v.f)  # through Z and exp: dL/d(exponent)
    df.mul_(v.d)  # times (a - mu); / sigma^2 below
    torch.sum(df, -1, out=g.S_mu)
    torch.sum(df.mul_(v.d), (1, 2, 3), out=g.S_sigma)
    torch.mm(g.S, g.mu_map, out=out4)
    out4.div_(v.sigma2_col)
    out_delta.mul_(v.delta_col)  # the head emits log delta: dL/d log delta = delta dL/d delta


@dataclass
class StepGrad:
    """Per-step views into the gradient buffers: dL/d heads over h^dec_t, dL/d [mu_t | log sigma_t]."""

    dhh: torch.Tensor
    dq: torch.Tensor
    dq_mu: torch.Tensor
    dq_ls: torch.Tensor
    # with attention: the write patch, the write window's fields, the read window's (read at t, from slot t)
    dhh_w: torch.Tensor | None = None
    dhh_wgamma: torch.Tensor | None = None
    dhh_w4: torch.Tensor | None = None
    dhh_wdelta: torch.Tensor | None = None
    dhr_gamma: torch.Tensor | None = None
    dhr4: torch.Tensor | None = None
    dhr_delta: torch.Tensor | None = None


@dataclass
class BackwardViews:
    """Buffers of the backward pass, added to a training workspace by its first backward."""

    scratch: Scratch
    d_heads: torch.Tensor  # (T + 1, B, heads): slot t holds dL/d heads over h^dec_{t-1}
    dq: torch.Tensor  # (T, B, 2Z)
    d_canvas: torch.Tensor  # dL/dc_t in the loop's (B, H, CW) layout
    d_canvasT: torch.Tensor
    d_canvas4: torch.Tensor
    steps: list[StepGrad]
    bank_r: BankGrad | None = None
    bank_w: BankGrad | None = None


def backward_views(m, ws, b: int, C: int, Hi: int, Wi: int) -> BackwardViews:
    T, hd, Z, att = m.steps, m.hidden, m.embed, m.attention
    n, nw = m.read_n, m.write_n
    kw = C * nw * nw if att else C * Hi * Wi
    x = ws.sig  # any tensor of the loop's dtype and device
    da = x.new_empty(b, 4 * hd)
    scratch = Scratch(da=da, dif=da[:, : 2 * hd], di=da[:, :hd], df=da[:, hd : 2 * hd], dg=da[:, 2 * hd : 3 * hd],
                      do=da[:, 3 * hd :], tmp=x.new_empty(b, hd))
    d_heads = x.new_zeros(T + 1, b, ws.heads.shape[2])
    dq = x.new_zeros(T, b, 2 * Z)
    d_canvas = x.new_empty(b, Hi, C * Wi)
    bw = BackwardViews(scratch=scratch, d_heads=d_heads, dq=dq, d_canvas=d_canvas, d_canvasT=d_canvas.transpose(1, 2),
                       d_canvas4=d_canvas.view(b, Hi, C, Wi), steps=[])
    if att:
        L = max(Hi, Wi)
        for name, nn_ in (("bank_r", n), ("bank_w", nw)):
            df = x.new_zeros(b, 2, nn_, L)
            S = x.new_empty(b, 2 * nn_ + 1)
            setattr(bw, name, BankGrad(df=df, dfx=df[:, 0, :, :Wi], dfy=df[:, 1, :, :Hi], prod=x.new_empty(b, 2, nn_, L),
                                       zs=x.new_empty(b, 2, nn_, 1), S=S, S_mu=S[:, : 2 * nn_].view(b, 2, nn_),
                                       S_sigma=S[:, 2 * nn_], mu_map=mu_map(offsets(m, nn_, x.dtype))))
    for t in range(T):
        v = StepGrad(dhh=d_heads[t + 1], dq=dq[t], dq_mu=dq[t, :, :Z], dq_ls=dq[t, :, Z:])
        if att:
            dhh, dhr = d_heads[t + 1], d_heads[t][:, kw + 5 :]
            v.dhh_w, v.dhh_wgamma, v.dhh_w4, v.dhh_wdelta = dhh[:, :kw], dhh[:, kw + 4], dhh[:, kw : kw + 4], dhh[:, kw + 2]
            v.dhr_gamma, v.dhr4, v.dhr_delta = dhr[:, 4], dhr[:, :4], dhr[:, 2]
        bw.steps.append(v)
    return bw


def head_grads(enc_in: torch.Tensor, dq: torch.Tensor, d_heads: torch.Tensor, R: int, hd: int) -> tuple[torch.Tensor, ...]:
    """Gradients of q's and the heads' weights and biases, one (T*B)-row product each, from
    dL/d[mu | log sigma] (T, B, 2Z) and dL/d heads (T+1, B, .), with h^enc_t and h^dec_t read
    from the encoder inputs' slots 1..T (both loops keep them there)."""
    T, b = dq.shape[:2]
    rows = T * b
    dq_all = dq.reshape(rows, -1)
    d_q_w = dq_all.t() @ enc_in[1:, :, R + hd : R + 2 * hd].reshape(rows, hd)  # h^enc_1..T
    d_heads_w = d_heads[1:].reshape(rows, -1).t() @ enc_in[1:, :, R : R + hd].reshape(rows, hd)  # h^dec_1..T
    return d_q_w, dq_all.sum(0), d_heads_w, d_heads.sum((0, 1))


def kl_grad(dq: torch.Tensor, mu_ls: torch.Tensor, d_lz: torch.Tensor | None, Z: int) -> None:
    """dq = dL^z/d[mu | log sigma] in bulk (eq 11: mu and sigma^2 - 1, times dL/dL^z), or 0."""
    if d_lz is None:
        dq.zero_()
        return
    b = mu_ls.shape[1]
    mu, log_sigma = mu_ls.split(Z, -1)
    torch.mul(mu, d_lz.view(1, b, 1), out=dq[..., :Z])
    torch.mul(log_sigma, 2, out=dq[..., Z:]).exp_().sub_(1).mul_(d_lz.view(1, b, 1))


def backward(m, sv: PythonSaved, d_canvas, d_mu_ls, d_lz, mu_ls: torch.Tensor, need_x: bool):
    """(dx or None, the gradients of the LoopWeights) from dL/dc_T, dL/d[mu | log sigma], dL/dL^z."""
    ws, x = sv.ws, sv.x
    enc_w, dec_w, q_w, q_b, heads_w, heads_b = sv.weights
    enc_in, dec_in, g_enc, g_dec = ws.enc_in, ws.dec_in, ws.g_enc, ws.g_dec
    T, hd, Z, att = m.steps, m.hidden, m.embed, m.attention
    b, C, Hi, Wi = x.shape
    n, nw = m.read_n, m.write_n
    kw = C * nw * nw if att else C * Hi * Wi
    R = 2 * C * n * n if att else C * Hi * Wi
    lead = 0 if att else C * Hi * Wi
    ke, kd = enc_in.shape[2], dec_in.shape[2]
    if ws.backward is None:
        ws.backward = backward_views(m, ws, b, C, Hi, Wi)
    bw = ws.backward
    scratch, d_heads, dq, dC, dCT = bw.scratch, bw.d_heads, bw.dq, bw.d_canvas, bw.d_canvasT
    xi = x.permute(0, 2, 1, 3)  # the loop's (B, H, C, W) layout
    square = m.width == m.height
    # Input gradients of each step's products: only the columns of real inputs (not the ones or
    # padding columns), with the weights packed once for all T steps.
    mm_dtype = sv.mm_dtype
    enc_mm_t = step_matmul(enc_w[:, lead : lead + R + 2 * hd].t(), b, mm_dtype, sv.packed)
    dec_mm_t = step_matmul(dec_w[:, : Z + hd].t(), b, mm_dtype, sv.packed)

    if d_canvas is None:
        dC.zero_()
    else:
        bw.d_canvas4.copy_(d_canvas.permute(0, 2, 1, 3))  # dL/dc_t, updated in place as t goes down
    kl_grad(dq, mu_ls, d_lz, Z)
    if d_mu_ls is not None:
        dq += d_mu_ls
    d_heads.zero_()
    dc_enc, dc_dec = x.new_zeros(b, hd), x.new_zeros(b, hd)
    d_ei_next, d_di_next = x.new_zeros(b, R + 2 * hd), x.new_zeros(b, Z + hd)  # step t+1's input gradients
    dx = torch.zeros_like(x) if need_x else None
    dxi = dx.permute(0, 2, 1, 3) if need_x else None
    se_rows = ws.se.unbind(0)

    for t in reversed(range(T)):
        v, g = ws.plan[t], bw.steps[t]
        # write at step t (eq 8, 29; eq 18): every update receives dL/dc_t
        if att:
            wv = v.write  # update = F_Y^T u, u = (w / gamma) F_X
            u, w = sv.writes[t]
            du = torch.bmm(wv.fy, dC)  # (B, N, CW)
            dfy = torch.bmm(u, dCT)  # (B, N, H)
            du = du.view(b, nw * C, Wi)
            dw = torch.bmm(du, wv.fxT)  # dL/d(w / gamma): (B, NC, N)
            dfx = torch.bmm(w.transpose(1, 2), du)  # (B, N, W)
            torch.sum(dw * w, (1, 2), out=g.dhh_wgamma).neg_()  # dL/d log gamma
            torch.div(dw.view(b, kw), wv.gamma, out=g.dhh_w)
            filters_backward(square, bw.bank_w, wv, dfx, dfy, g.dhh_w4, g.dhh_wdelta)
        else:
            g.dhh.copy_(dC.view(b, kw))
        # h^dec_t feeds the heads and step t+1's encoder and decoder (eq 5, 7)
        dh = torch.add(d_ei_next[:, R : R + hd], d_di_next[:, Z : Z + hd]).addmm_(g.dhh, heads_w)
        gd = lstm_backward(v.dec, scratch, dh, dc_dec)
        d_di = dec_mm_t(gd)  # [dz_t | dh^dec_{t-1}]
        dz = d_di[:, :Z]
        g.dq_mu.add_(dz)  # eq 6: z = mu + sigma eps
        g.dq_ls.addcmul_(dz, se_rows[t])  # d/d log sigma = sigma eps dz
        dh = torch.addmm(d_ei_next[:, R + hd : R + 2 * hd], g.dq, q_w)  # h^enc_t feeds q and step t+1's encoder
        ge = lstm_backward(v.enc, scratch, dh, dc_enc)
        d_ei = enc_mm_t(ge)  # [dr_t | dh^dec_{t-1} | dh^enc_{t-1}]
        # read at step t (eq 27; eq 17)
        if att:
            rv = v.read
            left = sv.reads[t]
            dr = d_ei[:, :R]
            torch.sum(dr * v.ei_r, 1, out=g.dhr_gamma)  # dL/d log gamma (r = gamma G)
            dg = (dr * rv.gamma).view(b, 2 * C * n, n)
            dleft = torch.bmm(dg, rv.fx)  # (B, 2CN, W)
            dfx = torch.bmm(dg.transpose(1, 2), left.view(b, 2 * C * n, Wi))
            dleft = dleft.view(b, n, 2 * C * Wi)
            dfy = torch.bmm(dleft, v.xbT)
            dxb = torch.bmm(rv.fyT, dleft).view(b, Hi, 2, C, Wi)
            filters_backward(square, bw.bank_r, rv, dfx, dfy, g.dhr4, g.dhr_delta)
            d_xhat, x_hat = dxb[:, :, 1], v.xhat
            if need_x:
                dxi += dxb[:, :, 0]
        else:
            d_xhat, x_hat = d_ei[:, :R].view(b, Hi, C, Wi), v.xhat_flat
        if need_x:
            dxi += d_xhat
        bw.d_canvas4.sub_(_aten.sigmoid_backward(d_xhat, xi - x_hat))  # dL/dc_{t-1}; x - x_hat = sigmoid(c_{t-1})
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
    TRAINING[m] = ws  # this forward's buffers are free for the next one
    return dx, grads
