"""core: what every other part uses and that knows nothing of DRAW.

Owns the error type users see (errors), atomic file writing (files), consoles and progress bars
(progress), devices, precisions and threads (device), memory estimates (memory) and the package
version (version).

Layer: the lowest. Imports nothing else from drawcli. Importing core does not import torch.
"""
