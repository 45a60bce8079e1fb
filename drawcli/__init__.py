"""drawcli: DRAW (Gregor et al., ICML 2015, arXiv 1502.04623) on PyTorch.

The command line is ``draw``; from Python::

    import drawcli
    drawer = drawcli.load("@mnist")        # a built-in model, a run, a run directory or a checkpoint file
    images = drawer.sample(16, seed=0)     # (16, 1, 28, 28) in [0, 1]
    film = drawer.sample_glimpses(4)       # the canvas and write window of every glimpse
    test_images = drawcli.load_images("mnist", limit=100)   # uint8, downloaded first if missing
    nats = drawer.elbo(test_images)        # per image; drawer.iwae(test_images, k=100)
    model = drawcli.create_model(glimpses=16, read_n=3)   # an untrained DRAW (torch.nn.Module)

``drawcli.DRAW`` is the ``torch.nn.Module`` itself (drawcli/model/draw.py, the paper equation by
equation), with ``from_pretrained``, ``save_pretrained`` and ``push_to_hub``: the class
``PretrainedDRAW`` of drawcli/runs/pretrained.py.
Importing drawcli does not import torch; the first call that needs it does.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from drawcli.core.errors import DrawError
from drawcli.core.version import __version__

if TYPE_CHECKING:
    from drawcli.api import Drawer, Glimpses, create_model, load, load_images
    from drawcli.runs.pretrained import PretrainedDRAW as DRAW

__all__ = ["DRAW", "DrawError", "Drawer", "Glimpses", "__version__", "create_model", "load", "load_images"]

# public name -> (module, name there)
_LAZY = {"load": ("drawcli.api", "load"), "load_images": ("drawcli.api", "load_images"),
         "create_model": ("drawcli.api", "create_model"), "Drawer": ("drawcli.api", "Drawer"),
         "Glimpses": ("drawcli.api", "Glimpses"), "DRAW": ("drawcli.runs.pretrained", "PretrainedDRAW")}


def __getattr__(name: str):
    """The public names, imported on first use (``draw --help`` never imports torch)."""
    if name in _LAZY:
        import importlib

        module, attribute = _LAZY[name]
        return getattr(importlib.import_module(module), attribute)
    raise AttributeError(f"module 'drawcli' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
