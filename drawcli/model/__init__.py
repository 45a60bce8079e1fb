"""The DRAW model. draw.py is the paper, equation by equation (read it first); engine.py resolves which
implementation runs a call; fast.py is the front of the fast engines behind the same module
(python_loop.py, python_backward.py, sampling.py, native_loop.py; layout.py is their weight layout)."""

from drawcli.core.device import ENGINES
from drawcli.model.draw import ATTENTION_FIELDS, DRAW, DrawOutput, LSTMCell, count_parameters, kl_per_image
from drawcli.model.engine import Engine, Resolved, resolve

__all__ = ["ATTENTION_FIELDS", "DRAW", "DrawOutput", "ENGINES", "Engine", "LSTMCell", "Resolved", "count_parameters",
           "kl_per_image", "resolve"]
