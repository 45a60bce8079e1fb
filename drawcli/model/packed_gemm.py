"""oneDNN packed-weight matrix products for the fast loops' per-step LSTM GEMMs.

The products of one step are (B x 528) @ (528 x 1024)-sized: too short for MKL's sgemm, which
re-packs the weight on every call and reaches ~75% of its large-matrix rate here. oneDNN's linear
with a weight packed once per loop (the T steps reuse it) runs them 20-40% faster on x86 CPUs
(benchmarks/speed.py measures both). These are the private ops PyTorch's own compiler uses for CPU
linear layers, so they are probed once per dtype, and torch.mm is the fallback. Whether a loop
uses them is its engine's option (engine.Engine.packed_gemm), passed down as ``packed``.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

# Whether the packed product runs correctly, per dtype: a fact about this build and CPU, probed once.
_WORKS: dict = {}


def packed_gemm_works(dtype: torch.dtype = torch.float32) -> bool:
    """Whether this build and CPU run the packed product correctly for ``dtype`` (probed once)."""
    works = _WORKS
    if dtype not in works:
        try:
            g = torch.Generator().manual_seed(0)
            a, w = (torch.randn(shape, generator=g).to(dtype) for shape in ((3, 40), (24, 40)))
            packed = torch.ops.mkldnn._reorder_linear_weight(w, 3)
            y = torch.ops.mkldnn._linear_pointwise(a, packed, None, "none", [], "")
            tol = 1e-4 if dtype == torch.float32 else 3e-2
            works[dtype] = bool(y.dtype == dtype and torch.allclose(y.float(), a.float() @ w.float().t(), rtol=tol, atol=tol))
        except Exception:  # op missing in this build, or refusing this CPU: torch.mm it is
            works[dtype] = False
    return works[dtype]


def packed_applies(dtype: torch.dtype, device: torch.device, rows: int) -> bool:
    """Whether a product of ``rows`` rows in dtype on device runs packed (where it is asked for).

    Below ~32 rows the packing and oneDNN's per-call overhead cost what the faster kernel saves."""
    return (rows >= 32 and device.type == "cpu" and dtype in (torch.float32, torch.bfloat16)
            and torch.backends.mkldnn.enabled and packed_gemm_works(dtype))


def step_matmul(w: torch.Tensor, rows: int, compute_dtype: torch.dtype | None = None,
                packed: bool = True) -> Callable[..., torch.Tensor]:
    """A function x, out -> x @ w.t() for a weight that every step of one loop reuses.

    With oneDNN the weight is packed once here and the product comes back as a new tensor;
    otherwise it is torch.mm into ``out``. Either way, use the returned tensor.

    compute_dtype (e.g. torch.bfloat16): the product's inputs are cast to it (the weight once
    here, x at every call into a reused buffer); the kernel accumulates in float32, and the result
    comes back in w's dtype. x must then have ``rows`` rows.
    packed: use oneDNN's packed product where it applies (packed_applies); False: torch.mm.
    """
    dtype = w.dtype
    low = compute_dtype is not None and compute_dtype != dtype
    if low:
        w = w.detach().to(compute_dtype)
        xbuf = w.new_empty(rows, w.shape[1])
    if packed and packed_applies(w.dtype, w.device, rows):
        pw = torch.ops.mkldnn._reorder_linear_weight(w.detach().contiguous(), rows)
        linear = torch.ops.mkldnn._linear_pointwise.default
        if not low:
            return lambda x, out=None: linear(x, pw, None, "none", [], "")
        return lambda x, out=None: _back(linear(xbuf.copy_(x), pw, None, "none", [], ""), dtype, out)
    wt = w.t()
    if not low:
        return lambda x, out=None: torch.mm(x, wt, out=out)
    return lambda x, out=None: _back(torch.mm(xbuf.copy_(x), wt), dtype, out)


def _back(result: torch.Tensor, dtype: torch.dtype, out: torch.Tensor | None) -> torch.Tensor:
    """A low-precision product's result in the loop's dtype (into ``out`` when given)."""
    if out is not None and out.dtype == dtype:
        return out.copy_(result)
    return result.to(dtype)


def matmul(a: torch.Tensor, b: torch.Tensor, compute_dtype: torch.dtype | None = None) -> torch.Tensor:
    """a @ b, with the inputs cast to compute_dtype when given (result in a's dtype)."""
    if compute_dtype is None or compute_dtype == a.dtype:
        return a @ b
    return (a.to(compute_dtype) @ b.to(compute_dtype)).to(a.dtype)
