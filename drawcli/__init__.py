"""drawcli: DRAW (Gregor et al., ICML 2015, arXiv 1502.04623) on PyTorch."""

__version__ = "0.1.0"
