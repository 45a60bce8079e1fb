"""The Python engine's sampling decoder: DRAW.decode (eq 7-8 with z_t drawn from the prior,
the write of eq 18 or 28-29) with the decoder's product packed once, views made once, and
the canvas updated in place. No I/O here."""

from __future__ import annotations

import torch

from drawcli.model.layout import gates_weight, heads_weight, numbers, offsets
from drawcli.model.packed_gemm import step_matmul
from drawcli.model.python_loop import bank, cell, double_g, filters, grid_of, lstm_step


def decode(m, z_all: torch.Tensor, every_step: bool, mm_dtype: torch.dtype | None, packed: bool = True
           ) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Canvases (T or 1, n, C, H, W) and write windows (T or 1, n, 5) or None, for latents z (T, n, Z)."""
    T, n, Z = z_all.shape
    hd, C, Hi, Wi, nw, att = m.hidden, m.channels, m.height, m.width, m.write_n, m.attention
    ref = z_all
    dec_w, (heads_w, heads_b) = gates_weight(m, m.decoder), heads_weight(m, read=False)
    kw = C * nw * nw if att else C * Hi * Wi
    k = numbers(ref.device, ref.dtype)
    dec_mm = step_matmul(double_g(dec_w, hd), n, mm_dtype, packed)  # eq 7's product, weight packed once for all T steps
    dec_in = ref.new_zeros(n, dec_w.shape[1])  # [z_t | h^dec_{t-1} | 1 | 0...]: one product per step
    dec_in[:, Z + hd].fill_(1)
    h, z_in = dec_in[:, Z : Z + hd], dec_in[:, :Z]  # h^dec_0 = 0; the LSTM writes h_t into h
    gates, c, tc = ref.new_empty(n, 4 * hd), ref.new_zeros(2, n, hd), ref.new_empty(n, hd)
    cells = [cell(hd, gates, c[s], c[1 - s], tc, h) for s in (0, 1)]
    kept = T if every_step else 1  # steps whose canvas and window are returned
    heads = ref.new_empty(kept, n, heads_w.shape[0])  # [w_t | write attention_t]
    # Canvases in the loop's (n, H, C, W) layout, seen as (n, H, CW) by the write's bmm.
    canvases = ref.new_empty(T, n, Hi, C * Wi) if every_step else ref.new_zeros(1, n, Hi, C * Wi)
    prev = ref.new_zeros(n, Hi, C * Wi) if every_step else canvases[0]  # c_0 = 0; updated in place when kept == 1
    out_rows, heads_rows, z_rows = canvases.unbind(0), heads.unbind(0), z_all.unbind(0)
    heads_wt = heads_w.t()
    if att:
        grid = grid_of(m, ref.dtype)
        f, d = ref.new_empty(2, n, 2, nw, max(Hi, Wi)).unbind(0)
        banks = [bank(m, hh[:, kw:], f, d, nw) for hh in heads_rows]
        offs = offsets(m, nw, ref.dtype)
    for t in range(T):
        j = t if every_step else 0
        z_in.copy_(z_rows[t])
        pre = dec_mm(dec_in, out=gates)  # eq 7
        lstm_step(pre, cells[t % 2], k)
        hh = torch.addmm(heads_b, h, heads_wt, out=heads_rows[j])  # eq 18/28 and 21
        if att:
            wb = banks[j]
            wb.p[:, 2:].exp_()  # delta, sigma^2, gamma from their logs
            filters(wb, offs, grid, k)
            w = torch.div(hh[:, :kw], wb.gamma).view(n, nw * C, nw)
            u = torch.bmm(w, wb.fx).view(n, nw, C * Wi)  # (w / gamma) F_X, as in the training loop
            if every_step:
                torch.baddbmm(prev, wb.fyT, u, out=out_rows[j])  # eq 8, 29
            else:
                prev.baddbmm_(wb.fyT, u)
        elif every_step:
            torch.add(prev, hh.view(n, Hi, C * Wi), out=out_rows[j])  # eq 8, 18
        else:
            prev.add_(hh.view(n, Hi, C * Wi))
        prev = out_rows[j]
    canvases = canvases.view(-1, n, Hi, C, Wi).permute(0, 1, 3, 2, 4)  # (T, n, C, H, W)
    return canvases, (heads[:, :, kw:] if att else None)
