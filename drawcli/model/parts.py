"""The pieces draw.py's loops and the fast engines (fast.py and the loops behind it) share: the
LSTM cell, the filterbank guard and the latent loss terms (eq 10-11). draw.py uses them as the
paper writes DRAW; they live here so that the engines need not import draw.py, which calls them.
No I/O here.
"""

from __future__ import annotations

import torch
import torch.nn as nn

FILTER_EPS = 1e-8  # guards the filterbank normalisation (eq 25, 26) when all weights underflow


class LSTMCell(nn.Module):
    """A standard LSTM cell with one GEMM per step: W [x, h] + b.

    Concatenating input and hidden state halves the number of matrix products
    per step compared with torch.nn.LSTMCell's two, which matters for DRAW's
    long, narrow time loop.
    """

    def __init__(self, input_size: int, hidden_size: int):
        super().__init__()
        self.hidden_size = hidden_size
        self.linear = nn.Linear(input_size + hidden_size, 4 * hidden_size)
        with torch.no_grad():
            # Forget-gate bias 1 (Gers et al.): keeps early gradients flowing through c.
            self.linear.bias[hidden_size : 2 * hidden_size].fill_(1.0)

    def forward(self, x: torch.Tensor, state: tuple[torch.Tensor, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        h, c = state
        gates = self.linear(torch.cat([x, h], dim=1))
        i, f, g, o = gates.chunk(4, dim=1)
        c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
        h = torch.sigmoid(o) * torch.tanh(c)
        return h, c


def kl_per_image(mu: torch.Tensor, log_sigma: torch.Tensor) -> torch.Tensor:
    """L^z: KL(N(mu, sigma) || N(0, I)) summed over steps and latent dims, (T, B, Z) -> (B,).

    eq 11: 1/2 sum_t (mu^2 + sigma^2 - log sigma^2) - T/2, where the sum also runs over
    all Z latent dimensions, so the constant is -T*Z/2 (not -T/2).
    """
    t, _, z = mu.shape
    return 0.5 * (mu.pow(2) + torch.exp(2 * log_sigma) - 2 * log_sigma).sum((0, 2)) - t * z / 2


def log_ratio_per_image(mu: torch.Tensor, log_sigma: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
    """sum over t and Z of log q(z_t | x, z_<t) - log p(z_t) at z = mu + sigma eps, (T, B, Z) -> (B,):
    log N(z; mu, sigma) - log N(z; 0, 1), the normalising constants cancelling."""
    z = mu + torch.exp(log_sigma) * eps
    return (0.5 * z.pow(2) - 0.5 * eps.pow(2) - log_sigma).sum((0, 2))
