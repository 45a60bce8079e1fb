"""A plain eager DRAW, written the obvious way: the speed baseline and the reference for tests.

torch.nn.LSTMCell, one Linear per head, the filterbank rebuilt every step from its formulas,
autograd for every gradient. Same parameterisation as drawcli.model.DRAW (same layer sizes,
same glimpse layout, same noise draws), so ``BaselineDRAW.from_draw(model)`` copies a DRAW's
weights and both compute the same function; tests/test_fastpath.py checks that they do.

Equation numbers refer to Gregor et al. 2015, arXiv 1502.04623v2.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

FILTER_EPS = 1e-8  # same guard as drawcli.model in eq 25-26's normalisation


class BaselineDRAW(nn.Module):
    def __init__(self, height=28, width=28, steps=64, hidden=256, embed=100, attention=True, read_n=2, write_n=5):
        super().__init__()
        self.height, self.width, self.steps, self.hidden, self.embed = height, width, steps, hidden, embed
        self.attention, self.read_n, self.write_n = attention, read_n, write_n
        read_size = 2 * read_n * read_n if attention else 2 * height * width
        write_size = write_n * write_n if attention else height * width
        self.encoder = nn.LSTMCell(read_size + hidden, hidden)  # eq 5: input [r_t, h^dec_{t-1}]
        self.decoder = nn.LSTMCell(embed, hidden)  # eq 7
        self.q = nn.Linear(hidden, 2 * embed)  # eq 1-2: [mu_t, log sigma_t]
        self.write_head = nn.Linear(hidden, write_size)  # eq 18 / 28
        if attention:
            self.read_attention = nn.Linear(hidden, 5)  # eq 21
            self.write_attention = nn.Linear(hidden, 5)

    # ------------------------------------------------------------ weights from / grads to a DRAW
    @classmethod
    def from_draw(cls, draw) -> "BaselineDRAW":
        """A baseline with ``draw``'s configuration, dtype, device and weights."""
        p = next(draw.parameters())
        base = cls(**draw.config()).to(device=p.device, dtype=p.dtype)
        base.load_from(draw)
        return base

    def load_from(self, draw) -> None:
        """Copy a drawcli DRAW's weights. Its LSTMs use one Linear over [input, h]; here
        weight_ih / weight_hh are the two column blocks and bias_hh is zero."""
        with torch.no_grad():
            for mine, theirs in ((self.encoder, draw.encoder.linear), (self.decoder, draw.decoder.linear)):
                n_in = mine.input_size
                mine.weight_ih.copy_(theirs.weight[:, :n_in])
                mine.weight_hh.copy_(theirs.weight[:, n_in:])
                mine.bias_ih.copy_(theirs.bias)
                mine.bias_hh.zero_()
            names = ["q", "write_head"] + (["read_attention", "write_attention"] if self.attention else [])
            for name in names:
                getattr(self, name).weight.copy_(getattr(draw, name).weight)
                getattr(self, name).bias.copy_(getattr(draw, name).bias)

    def grads_as_draw(self) -> dict[str, torch.Tensor]:
        """This model's gradients under the parameter names of drawcli's DRAW."""
        out = {}
        for name, cell in (("encoder", self.encoder), ("decoder", self.decoder)):
            out[f"{name}.linear.weight"] = torch.cat([cell.weight_ih.grad, cell.weight_hh.grad], dim=1)
            out[f"{name}.linear.bias"] = cell.bias_ih.grad  # equals bias_hh.grad: both add to the gates
        for name, p in self.named_parameters():
            if not name.startswith(("encoder.", "decoder.")):
                out[name] = p.grad
        return out

    # ------------------------------------------------------------ attention, step by step
    def window(self, h_dec, head, n):
        """eq 21-24: (g_x, g_y, delta, sigma^2, gamma), each (B,)."""
        gx_, gy_, log_sigma2, log_delta_, log_gamma = head(h_dec).unbind(1)
        A, B = self.width, self.height
        gx = (A + 1) / 2 * (gx_ + 1)
        gy = (B + 1) / 2 * (gy_ + 1)
        delta = (max(A, B) - 1) / max(n - 1, 1) * torch.exp(log_delta_)
        return gx, gy, delta, torch.exp(log_sigma2), torch.exp(log_gamma)

    def filterbank(self, gx, gy, delta, sigma2, n):
        """eq 19-20, 25-26, with the grids built on the spot."""
        i = torch.arange(1, n + 1, dtype=gx.dtype, device=gx.device)
        a = torch.arange(1, self.width + 1, dtype=gx.dtype, device=gx.device)
        b = torch.arange(1, self.height + 1, dtype=gx.dtype, device=gx.device)
        mu_x = gx[:, None] + (i - n / 2 - 0.5) * delta[:, None]
        mu_y = gy[:, None] + (i - n / 2 - 0.5) * delta[:, None]
        fx = torch.exp(-((a[None, None, :] - mu_x[:, :, None]) ** 2) / (2 * sigma2[:, None, None]))
        fy = torch.exp(-((b[None, None, :] - mu_y[:, :, None]) ** 2) / (2 * sigma2[:, None, None]))
        fx = fx / (fx.sum(2, keepdim=True) + FILTER_EPS)
        fy = fy / (fy.sum(2, keepdim=True) + FILTER_EPS)
        return fx, fy

    def read(self, x, x_hat, h_dec):
        if not self.attention:
            return torch.cat([x.flatten(1), x_hat.flatten(1)], dim=1), None  # eq 17
        gx, gy, delta, sigma2, gamma = params = self.window(h_dec, self.read_attention, self.read_n)
        fx, fy = self.filterbank(gx, gy, delta, sigma2, self.read_n)
        glimpse_x = fy @ x @ fx.transpose(1, 2)  # eq 27
        glimpse_x_hat = fy @ x_hat @ fx.transpose(1, 2)
        r = gamma[:, None] * torch.cat([glimpse_x, glimpse_x_hat], dim=2).flatten(1)
        return r, torch.stack(params, 1)

    def write(self, h_dec):
        w = self.write_head(h_dec)
        if not self.attention:
            return w.view(-1, self.height, self.width), None  # eq 18
        gx, gy, delta, sigma2, gamma = params = self.window(h_dec, self.write_attention, self.write_n)
        fx, fy = self.filterbank(gx, gy, delta, sigma2, self.write_n)
        w = w.view(-1, self.write_n, self.write_n)
        return fy.transpose(1, 2) @ w @ fx / gamma[:, None, None], torch.stack(params, 1)  # eq 29

    # ------------------------------------------------------------ the model
    def forward(self, x, record=False, log_ratio=False, generator=None):
        """Same outputs as drawcli's DRAW.forward, as a dict: lx, lz, log_ratio, canvases, read, write."""
        b = x.shape[0]
        h_enc = c_enc = h_dec = c_dec = x.new_zeros(b, self.hidden)
        canvas = torch.zeros_like(x)
        eps = torch.randn(self.steps, b, self.embed, device=x.device, dtype=x.dtype, generator=generator)
        mus, log_sigmas, canvases, reads, writes = [], [], [], [], []
        for t in range(self.steps):
            x_hat = x - torch.sigmoid(canvas)  # eq 3
            r, read_params = self.read(x, x_hat, h_dec)  # eq 4
            h_enc, c_enc = self.encoder(torch.cat([r, h_dec], dim=1), (h_enc, c_enc))  # eq 5
            mu, log_sigma = self.q(h_enc).chunk(2, dim=1)  # eq 1-2
            z = mu + torch.exp(log_sigma) * eps[t]  # eq 6
            h_dec, c_dec = self.decoder(z, (h_dec, c_dec))  # eq 7
            update, write_params = self.write(h_dec)
            canvas = canvas + update  # eq 8
            mus.append(mu)
            log_sigmas.append(log_sigma)
            canvases.append(canvas)
            reads.append(read_params)
            writes.append(write_params)
        lx = F.binary_cross_entropy_with_logits(canvas, x, reduction="none").flatten(1).sum(1)  # eq 9
        mu, log_sigma = torch.stack(mus), torch.stack(log_sigmas)
        lz = (0.5 * (mu**2 + torch.exp(2 * log_sigma) - 2 * log_sigma) - 0.5).sum((0, 2))  # eq 10-11
        out = {"lx": lx, "lz": lz, "loss": lx + lz}
        if log_ratio:
            z = mu + torch.exp(log_sigma) * eps
            out["log_ratio"] = (0.5 * z**2 - 0.5 * eps**2 - log_sigma).sum((0, 2))
        if record:
            out["canvases"] = torch.stack(canvases)
            if self.attention:
                out["read"], out["write"] = torch.stack(reads), torch.stack(writes)
        return out

    @torch.no_grad()
    def generate(self, n, generator=None, every_step=True):
        """Prior samples (Section 2.3), same noise draws as drawcli's DRAW.generate."""
        p = self.q.weight
        z_all = torch.randn(self.steps, n, self.embed, device=p.device, dtype=p.dtype, generator=generator)
        h = c = p.new_zeros(n, self.hidden)
        canvas = p.new_zeros(n, self.height, self.width)
        canvases, writes = [], []
        for t in range(self.steps):
            h, c = self.decoder(z_all[t], (h, c))
            update, params = self.write(h)
            canvas = canvas + update
            if every_step or t == self.steps - 1:
                canvases.append(canvas)
                writes.append(params)
        return torch.stack(canvases), (torch.stack(writes) if self.attention else None)
