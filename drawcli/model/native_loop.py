"""The native engine's glue: the buffers of csrc/draw_loop.cpp's two ops, and the calls.

drawcli/model/native_build.py builds and loads the library; this module only calls its ops, which the C++
registers with schemas naming every argument (and what each op writes). ``call`` passes every
argument by its schema name, taken from the dataclasses below, whose fields carry those names:
the schemas are the one list of them, and a missing or misnamed one fails loudly.

Training (``forward`` / ``backward``) keeps every step's buffers, T + 1 slots of the products'
inputs and T of the rest, for the backward pass; the weight gradients are then one (T*B)-row
product each, as the Python engine's. Evaluation (``evaluate``) keeps 2 slots and 1, reused in
turn, and sums L^z and the IWAE log ratio as it goes. No I/O here.
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass, fields

import torch

from drawcli.model.layout import LoopWeights, offsets, pixel_grid
from drawcli.model.packed_gemm import matmul, packed_applies
from drawcli.model.parts import FILTER_EPS
from drawcli.model.python_backward import head_grads

# The workspaces left by each model's last training and evaluation loop (see python_loop.py).
TRAINING: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
EVALUATION: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()



@dataclass
class Inputs:
    """What the loop reads besides the weights. x (B, C, H, W), eps (T, B, Z), the pixel grid
    (2, max(H, W)) and eq 19-20's offsets of the read and write filters."""

    x: torch.Tensor
    eps: torch.Tensor
    grid: torch.Tensor
    read_offsets: torch.Tensor
    write_offsets: torch.Tensor


@dataclass
class Products:
    """The LSTM weights as the products take them: bfloat16 copies (None: products in the
    model's dtype), and packed by oneDNN for the chunk's rows (None: at::mm), for forward
    (W) and for the input gradients (W[:, :inputs]^T)."""

    enc_w_lp: torch.Tensor | None = None
    dec_w_lp: torch.Tensor | None = None
    enc_pk: torch.Tensor | None = None
    dec_pk: torch.Tensor | None = None
    enc_pk_t: torch.Tensor | None = None
    dec_pk_t: torch.Tensor | None = None


@dataclass
class NativeWorkspace:
    """The loop's buffers for one batch shape. S_in = T + 1 slots (training) or 2 (evaluation)
    for the products' inputs and the cell states, S = T or 1 for the rest; step t uses slot
    t % S_in (and hands h_t, c_t to slot t + 1) and t % S. "Lanes" buffers hold each block of V
    images (draw_loop.cpp cuts every chunk into blocks of at most 64) as (S, size, V), the images
    innermost, at the block's first image times S x size."""

    key: tuple
    enc_in: torch.Tensor  # (S_in, B, ke): [r_t | h^dec_{t-1} | h^enc_{t-1} | 1 | 0...], eq 5
    dec_in: torch.Tensor  # (S_in, B, kd): [z_t | h^dec_{t-1} | 1 | 0...], eq 7
    c_enc: torch.Tensor  # (S_in, B, H): cell states
    c_dec: torch.Tensor
    heads: torch.Tensor  # (S_in, B, C N^2 + 10): slot t + 1: [w_t | write window_t | read window_{t+1}]; without attention (S_in, B, C H W): w_t
    g_enc: torch.Tensor  # (S, B, 4H): activated gates (i, f, g, o), then (backward) their gradients
    g_dec: torch.Tensor
    tc_enc: torch.Tensor  # (S, B, H): tanh(c_t)
    tc_dec: torch.Tensor
    se: torch.Tensor  # (S, B, Z): sigma_t eps_t
    xhat: torch.Tensor  # (S, B, C H W) lanes: x_hat_t
    f_r: torch.Tensor  # (S, B, 2 n L) lanes: F_X, F_Y of the read
    f_w: torch.Tensor  # (S, B, 2 N L) lanes: of the write
    left: torch.Tensor  # (S, B, n 2C W) lanes: F_Y [x | x_hat] per channel
    u: torch.Tensor  # (S, B, N C W) lanes: (w / gamma) F_X
    wdiv: torch.Tensor  # (S, B, C N^2) lanes: w / gamma
    mu_ls: torch.Tensor | None = None  # (1, B, 2Z) in evaluation; training returns a (T, B, 2Z) per call
    enc_lp: torch.Tensor | None = None  # bfloat16 products: enc_in and dec_in as they go in (T or 2 slots) ...
    dec_lp: torch.Tensor | None = None
    g_enc_lp: torch.Tensor | None = None  # ... and the gate gradients (T slots; 1 in evaluation, unused)
    g_dec_lp: torch.Tensor | None = None
    d_heads: torch.Tensor | None = None  # training: dL/d heads (T + 1, B, .), dL/d[mu | log sigma] (T, B, 2Z)
    dq: torch.Tensor | None = None
    # bfloat16 products on AMX tiles (csrc/amx.h): the LSTM weights laid out by drawcli::amx_pack,
    # rewritten by every call (products); for the forward products and for the input gradients
    enc_amx: torch.Tensor | None = None
    dec_amx: torch.Tensor | None = None
    enc_amx_t: torch.Tensor | None = None
    dec_amx_t: torch.Tensor | None = None


def sizes(m) -> tuple[int, int, int]:
    """(R, kw, lead): the encoder input that changes with t (r_t, eq 27; without attention x_hat_t, eq 17),
    the write (w_t, eq 28 / 18), and the encoder input that does not (without attention x, whose
    product enc_base is made once per call; 0 with attention)."""
    C, n, nw, chw = m.channels, m.read_n, m.write_n, m.channels * m.height * m.width
    return (2 * C * n * n, C * nw * nw, 0) if m.attention else (chw, chw, chw)


def workspace(m, b: int, dtype: torch.dtype, ke: int, kd: int, lowp: bool, keep: bool) -> NativeWorkspace:
    T, hd, Z, C, H, W = m.steps, m.hidden, m.embed, m.channels, m.height, m.width
    R, kw, _ = sizes(m)
    # without attention there are no windows: the per-image buffers of the read and write are empty
    n, nw, L = (m.read_n, m.write_n, max(H, W)) if m.attention else (0, 0, 0)
    hw = kw + 10 if m.attention else kw
    s_in, s = (T + 1, T) if keep else (2, 1)

    def new(*shape, dt=dtype, zero=False):
        return torch.zeros(shape, dtype=dt) if zero else torch.empty(shape, dtype=dt)

    ws = NativeWorkspace(key=(), enc_in=new(s_in, b, ke, zero=True), dec_in=new(s_in, b, kd, zero=True),
                   c_enc=new(s_in, b, hd), c_dec=new(s_in, b, hd), heads=new(s_in, b, hw),
                   g_enc=new(s, b, 4 * hd), g_dec=new(s, b, 4 * hd), tc_enc=new(s, b, hd), tc_dec=new(s, b, hd),
                   se=new(s, b, Z), xhat=new(s, b, C * H * W if m.attention else 0), f_r=new(s, b, 2 * n * L),
                   f_w=new(s, b, 2 * nw * L), left=new(s, b, n * 2 * C * W), u=new(s, b, nw * C * W),
                   wdiv=new(s, b, kw if m.attention else 0))
    ws.enc_in[:, :, R + 2 * hd].fill_(1)  # the column that multiplies the bias column of [W | b]
    ws.dec_in[:, :, Z + hd].fill_(1)
    if not keep:
        ws.mu_ls = new(1, b, 2 * Z)
    if lowp:  # written where they are made, read again by the weight-gradient products
        s_lp = T if keep else 2
        ws.enc_lp, ws.dec_lp = new(s_lp, b, ke, dt=torch.bfloat16, zero=True), new(s_lp, b, kd, dt=torch.bfloat16, zero=True)
        ws.g_enc_lp, ws.g_dec_lp = new(s, b, 4 * hd, dt=torch.bfloat16), new(s, b, 4 * hd, dt=torch.bfloat16)
        ws.enc_lp[:, :, R + 2 * hd].fill_(1)
        ws.dec_lp[:, :, Z + hd].fill_(1)
    if keep:
        ws.d_heads, ws.dq = new(T + 1, b, hw), new(T, b, 2 * Z)
    return ws


def call(op, *sources, **given) -> None:
    """op(**arguments), every argument of the op's schema taken by its name from ``given``, else
    from the first source (a dataclass or NamedTuple) with a field of that name."""
    args = {}
    for arg in op._schema.arguments:
        if arg.name in given:
            args[arg.name] = given[arg.name]
            continue
        for source in sources:
            if arg.name in _names(source):
                args[arg.name] = getattr(source, arg.name)
                break
        else:
            raise TypeError(f"{op._schema.name}: nothing gives its argument {arg.name!r}")
    op(**args)


def _names(source) -> set[str]:
    cls = type(source)
    cached = _NAMES.get(cls)
    if cached is None:
        cached = _NAMES[cls] = set(cls._fields) if hasattr(cls, "_fields") else {f.name for f in fields(cls)}
    return cached


_NAMES: dict = {}


def inputs(m, x: torch.Tensor, eps: torch.Tensor) -> Inputs:
    grid, _ = pixel_grid(m, x.dtype)
    if not m.attention:  # no filters: the loop takes empty offsets
        none = x.new_empty(0)
        return Inputs(x.contiguous(), eps.contiguous(), grid, none, none)
    return Inputs(x.contiguous(), eps.contiguous(), grid, offsets(m, m.read_n, x.dtype), offsets(m, m.write_n, x.dtype))


def split_encoder(m, w: LoopWeights, x: torch.Tensor, mm_dtype: torch.dtype | None) -> tuple[LoopWeights, torch.Tensor | None, torch.Tensor | None]:
    """Without attention, eq 5's product over [x | x_hat_t | ...] is x's part, the same at every step,
    plus the rest: (the weights with enc_w's x columns cut off, enc_base = x W_x^T (B, 4H), W_x). With
    attention: (w, None, None)."""
    lead = sizes(m)[2]
    if not lead:
        return w, None, None
    w_x = w.enc_w[:, :lead]
    base = matmul(x.reshape(x.shape[0], lead), w_x.t(), mm_dtype).contiguous()
    return w._replace(enc_w=w.enc_w[:, lead:].contiguous()), base, w_x


# Packing a weight costs about what a few dozen of its products save: short loops (T x rows below
# this, such as sample_configs/colour_quick.yaml's 16 x 32) run at::mm instead.
PACK_MIN_ROWS = 2048


def amx_available() -> bool:
    """Whether the library multiplies bfloat16 on AMX tiles here (built for AMX, tile state granted)."""
    if "amx" not in _AMX:
        _AMX["amx"] = bool(torch.ops.drawcli.amx_available())
    return _AMX["amx"]


_AMX: dict = {}


def products(m, w: LoopWeights, rows: int, mm_dtype: torch.dtype | None, packed: bool, backward: bool,
             ws: NativeWorkspace | None = None, amx: bool = True) -> Products:
    """The LSTM weights for the products (see Products), packed for ``rows`` rows where that
    applies. (q's and the heads' products, 64 x 256 x 200 and smaller, stay at::addmm: packing
    did not make them faster.)

    With ``packed`` and ``amx``, bfloat16 products run on AMX tiles where the library has them
    (amx_available): the weights are laid out into ws's enc_amx ... buffers instead, in one pass
    each, and the products return float32. Measured against oneDNN's packed products, the other
    way (docs/performance.md): faster at colour_quick's 32 rows (where oneDNN was not even worth
    packing for) and at the paper config's 128."""
    p = Products()
    if mm_dtype == torch.bfloat16 and packed and amx and ws is not None and amx_available():
        amx_weights(m, w, ws, backward)
        return p
    if mm_dtype is not None:
        p.enc_w_lp, p.dec_w_lp = w.enc_w.to(mm_dtype).contiguous(), w.dec_w.to(mm_dtype).contiguous()
    dtype = mm_dtype or w.enc_w.dtype
    if packed and m.steps * rows >= PACK_MIN_ROWS and packed_applies(dtype, w.enc_w.device, rows):
        def pack(mat):
            return torch.ops.mkldnn._reorder_linear_weight(mat.to(dtype).contiguous(), rows)

        p.enc_pk, p.dec_pk = pack(w.enc_w), pack(w.dec_w)
        if backward:
            ce = sizes(m)[0] + 2 * m.hidden
            p.enc_pk_t, p.dec_pk_t = pack(w.enc_w[:, :ce].t()), pack(w.dec_w[:, : m.embed + m.hidden].t())
    return p


def amx_weights(m, w: LoopWeights, ws: NativeWorkspace, backward: bool) -> None:
    """w's LSTM weights laid out for AMX into ws (made on first use, then rewritten in place)."""
    hd = m.hidden
    ce, cd = sizes(m)[0] + 2 * hd, m.embed + hd
    wanted = [("enc_amx", w.enc_w, 0, True), ("dec_amx", w.dec_w, 0, True)]
    if backward:
        wanted += [("enc_amx_t", w.enc_w, ce, False), ("dec_amx_t", w.dec_w, cd, False)]
    for name, weight, cols, transpose in wanted:
        k, n = (weight.shape[1], weight.shape[0]) if transpose else (weight.shape[0], cols)
        size = _round_up(n, 32) * _round_up(k, 32)
        buf = getattr(ws, name)
        if buf is None or buf.numel() != size:
            with torch.inference_mode(False):
                buf = torch.empty(size, dtype=torch.bfloat16)
            setattr(ws, name, buf)
        torch.ops.drawcli.amx_pack(weight, cols, transpose, buf)


def _round_up(v: int, m: int) -> int:
    return -(-v // m) * m


# Evaluation cuts the batch into chunks of at most this many rows (at least one per thread): larger
# products run closer to the machine's rate, but their results (rows x 4H) must stay in the cache
# for the LSTM cells that read them.
EVAL_ROWS = 256


def eval_chunks(b: int) -> int:
    return max(1, min(max(torch.get_num_threads(), -(-b // EVAL_ROWS)), b // 8))


def chunks_for(b: int) -> int:
    """One chunk of the batch per thread, none under 8 rows (backward cuts the batch alike). Each
    thread runs its chunk's products on all its rows, the per-image work in blocks of 64 images
    (draw_loop.cpp's LANES)."""
    return max(1, min(torch.get_num_threads(), b // 8))


def _start(m, ws: NativeWorkspace, heads_b: torch.Tensor) -> None:
    """Slot 0 as step 1 finds it: h_0 = 0 and c_0 = 0 (both LSTMs), the first read window from
    the heads' bias alone (h^dec_0 = 0), its delta, sigma^2 and gamma from their logs."""
    R, hd, Z = sizes(m)[0], m.hidden, m.embed
    ws.enc_in[0, :, R : R + 2 * hd].zero_()
    ws.dec_in[0, :, Z : Z + hd].zero_()
    ws.c_enc[0].zero_()
    ws.c_dec[0].zero_()
    if ws.enc_lp is not None:
        ws.enc_lp[0, :, R : R + 2 * hd].zero_()
        ws.dec_lp[0, :, Z : Z + hd].zero_()
    if not m.attention:  # no windows: slot 0 of the heads is never read
        return
    kw = sizes(m)[1]
    ws.heads[0] = heads_b
    ws.heads[0, :, kw:].view(-1, 2, 5)[:, :, 2:].exp_()


def _workspace(store, m, key: tuple, b: int, dtype, w: LoopWeights, lowp: bool, keep: bool) -> NativeWorkspace:
    ws = store.pop(m, None)
    if ws is None or ws.key != key:
        with torch.inference_mode(False):
            ws = workspace(m, b, dtype, w.enc_w.shape[1], w.dec_w.shape[1], lowp, keep)
        ws.key = key
    return ws


@dataclass
class NativeSaved:
    """What a training forward keeps for backward."""

    ws: NativeWorkspace
    inputs: Inputs
    weights: LoopWeights
    products: Products
    mm_dtype: torch.dtype | None
    chunks: int
    enc_x: torch.Tensor | None = None  # without attention: enc_w's x columns (split_encoder)


def forward(m, x: torch.Tensor, eps: torch.Tensor, weights: LoopWeights, mm_dtype: torch.dtype | None, packed: bool = True,
            amx: bool = True):
    """python_loop.forward(save=True) natively: (c_T, [mu | log sigma] (T, B, 2Z), L^z (eq 11,
    summed as the loop goes), NativeSaved). amx=False keeps bfloat16 products off AMX (see products)."""
    T, Z = m.steps, m.embed
    b = x.shape[0]
    w = LoopWeights(*(t.detach().contiguous() for t in weights))
    w, base, w_x = split_encoder(m, w, x.detach(), mm_dtype)
    lowp = mm_dtype is not None
    ws = _workspace(TRAINING, m, ("train", b, x.dtype, lowp), b, x.dtype, w, lowp, keep=True)
    _start(m, ws, w.heads_b)
    chunks = chunks_for(b)  # backward must cut the batch the same way: the lane buffers are laid out per chunk
    ins = inputs(m, x.detach(), eps)
    prods = products(m, w, -(-b // chunks), mm_dtype, packed, backward=True, ws=ws, amx=amx)
    mu_ls, canvas, lz = x.new_empty(T, b, 2 * Z), torch.empty_like(ins.x), x.new_empty(b)
    call(torch.ops.drawcli.loop_forward.default, ins, w, prods, ws, mu_ls=mu_ls, canvas=canvas, lz=lz, log_ratio=None,
         enc_base=base, attention=m.attention, filter_eps=FILTER_EPS, chunks=chunks)
    return canvas, mu_ls, lz, NativeSaved(ws, ins, w, prods, mm_dtype, chunks, w_x)


def backward(m, sv: NativeSaved, d_canvas, d_mu_ls, d_lz, mu_ls: torch.Tensor, need_x: bool):
    """python_backward.backward for a native forward: the recurrence in C++, the weight gradients here."""
    ws, x = sv.ws, sv.inputs.x
    T, hd = m.steps, m.hidden
    b = x.shape[0]
    R = sizes(m)[0]
    ws.d_heads.zero_()
    d_canvas = torch.zeros_like(x) if d_canvas is None else d_canvas.contiguous()
    d_lz = x.new_zeros(b) if d_lz is None else d_lz.contiguous()
    d_mu_ls = None if d_mu_ls is None else d_mu_ls.contiguous()
    dx = torch.zeros_like(x) if need_x else None
    call(torch.ops.drawcli.loop_backward.default, sv.inputs, sv.weights, sv.products, ws, mu_ls=mu_ls, d_canvas=d_canvas,
         dx=dx, d_lz=d_lz, d_mu_ls=d_mu_ls, attention=m.attention, filter_eps=FILTER_EPS, chunks=sv.chunks)
    # Weight gradients: one (T*B)-row product each, as the Python engine's (bias included: the
    # inputs' column of ones); with bfloat16 products their inputs were written in bfloat16.
    rows = T * b
    if sv.mm_dtype is not None:
        d_enc_w = (ws.g_enc_lp.view(rows, -1).t() @ ws.enc_lp.view(rows, -1)).to(x.dtype)
        d_dec_w = (ws.g_dec_lp.view(rows, -1).t() @ ws.dec_lp.view(rows, -1)).to(x.dtype)
    else:
        d_enc_w = ws.g_enc.view(rows, -1).t() @ ws.enc_in[:T].view(rows, -1)
        d_dec_w = ws.g_dec.view(rows, -1).t() @ ws.dec_in[:T].view(rows, -1)
    if sv.enc_x is not None:  # without attention: x's columns, the same input at every step
        g_sum = (ws.g_enc if sv.mm_dtype is None else ws.g_enc_lp).sum(0, dtype=x.dtype)
        lead = sv.enc_x.shape[1]
        d_enc_w = torch.cat([matmul(g_sum.t(), x.reshape(b, lead), sv.mm_dtype), d_enc_w], 1)
        if need_x:
            dx += matmul(g_sum, sv.enc_x, sv.mm_dtype).view_as(x)
    grads = (d_enc_w, d_dec_w, *head_grads(ws.enc_in, ws.dq, ws.d_heads, R, hd))
    TRAINING[m] = ws  # this forward's buffers are free for the next one
    return dx, grads


def evaluate(m, x: torch.Tensor, eps: torch.Tensor, weights: LoopWeights, mm_dtype: torch.dtype | None,
             log_ratio: bool, packed: bool = True, amx: bool = True):
    """A forward without gradients: (c_T, L^z, the log ratio of the IWAE bound or None)."""
    b = x.shape[0]
    w = LoopWeights(*(t.detach().contiguous() for t in weights))
    w, base, _ = split_encoder(m, w, x, mm_dtype)
    lowp = mm_dtype is not None
    ws = _workspace(EVALUATION, m, ("eval", b, x.dtype, lowp), b, x.dtype, w, lowp, keep=False)
    _start(m, ws, w.heads_b)
    chunks = eval_chunks(b)
    ins = inputs(m, x, eps)
    prods = products(m, w, -(-b // chunks), mm_dtype, packed, backward=False, ws=ws, amx=amx)
    canvas, lz = torch.empty_like(ins.x), x.new_empty(b)
    ratio = x.new_empty(b) if log_ratio else None
    call(torch.ops.drawcli.loop_forward.default, ins, w, prods, ws, canvas=canvas, lz=lz, log_ratio=ratio,
         enc_base=base, attention=m.attention, filter_eps=FILTER_EPS, chunks=chunks)
    EVALUATION[m] = ws
    return canvas, lz, ratio
