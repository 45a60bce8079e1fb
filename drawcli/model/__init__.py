"""The DRAW model. draw.py is the paper, equation by equation (read it first); fused.py is the
fast engine behind it (``model.fused``, on by default); packed_gemm.py switches oneDNN's
packed-weight products used by that engine on CPU."""

from drawcli.model.draw import ATTENTION_FIELDS, DRAW, DrawOutput, LSTMCell, count_parameters, kl_per_image
from drawcli.model.packed_gemm import set_packed_gemm

__all__ = ["ATTENTION_FIELDS", "DRAW", "DrawOutput", "LSTMCell", "count_parameters", "kl_per_image", "set_packed_gemm"]
