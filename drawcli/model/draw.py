"""DRAW: A Recurrent Neural Network For Image Generation (Gregor et al., 2015), as the paper writes it.

Read this file first. Equation numbers are those of arXiv 1502.04623v2. ``DRAW.forward`` and
``DRAW.generate`` run the loops below (``encode_decode``, ``decode``) with ``engine="reference"``;
by default (``engine="auto"``) they run a faster engine that computes the same function from the
same parameters: the Python engine or the native C++ loop (engine.resolve says which runs when;
tests/test_fastpath.py and tests/test_native.py check them against these loops in float64,
forward and backward). No I/O here: with engine "auto", the first forward that can run the native
engine has engine.resolve build its library, once per machine (20-40 s, said in a warning).

Shapes: B batch, T glimpses, C channels, H x W image (the paper's B x A), Z latent size, N glimpse
side. Images are float tensors in [0, 1] of shape (B, C, H, W), or (B, H, W) for one channel; every
output then has the input's layout. With C > 1 every point of x and x_hat is a C-vector: read and
write apply one set of attention parameters and filterbanks to every channel (Section 4.3).
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from drawcli.model import fast  # the front of the fast engines
from drawcli.model.engine import Engine, Resolved
from drawcli.model.parts import FILTER_EPS, LSTMCell, kl_per_image, log_ratio_per_image

# Column order of every attention-parameter tensor this module returns.
ATTENTION_FIELDS = ("g_x", "g_y", "delta", "sigma2", "gamma")


@dataclass
class DrawOutput:
    """Losses in nats per image, shape (B,). Optional per-step records when asked for."""

    lx: torch.Tensor  # L^x = -log D(x | c_T), eq 9
    lz: torch.Tensor  # L^z, eq 10-11 (analytic KL, summed over t and z dims)
    log_ratio: torch.Tensor | None = None  # sum_t log q(z_t|.) - log p(z_t) at the sampled z
    canvases: torch.Tensor | None = None  # (T, B, [C,] H, W) canvas logits c_1..c_T
    read: torch.Tensor | None = None  # (T, B, 5) read attention, ATTENTION_FIELDS
    write: torch.Tensor | None = None  # (T, B, 5) write attention, ATTENTION_FIELDS

    @property
    def loss(self) -> torch.Tensor:
        """L = L^x + L^z per image (eq 12)."""
        return self.lx + self.lz


# The constructor's old argument names, accepted with a FutureWarning (and in stored configurations
# silently, see canonical_config): the settings' names are the constructor's.
OLD_NAMES = {"steps": "glimpses", "embed": "latent"}


def canonical_config(config: dict) -> dict:
    """Constructor arguments as stored by any version (older checkpoints say steps and embed); both
    names of one argument is a ValueError."""
    both = [old for old, new in OLD_NAMES.items() if old in config and new in config]
    if both:
        raise ValueError(f"both {both[0]} and {OLD_NAMES[both[0]]} are given (the old and the new name of one argument)")
    return {OLD_NAMES.get(k, k): v for k, v in config.items()}


class DRAW(nn.Module):
    """DRAW with or without attention (Sections 2-3); ``config()`` gives its constructor arguments.

    The arguments carry the settings' names (model.glimpses is T, model.latent is Z); the model also
    answers to the paper's letters, ``steps`` (T) and ``embed`` (Z), as the engines read them."""

    def __init__(
        self,
        height: int = 28,
        width: int = 28,
        glimpses: int | None = None,
        hidden: int = 256,
        latent: int | None = None,
        attention: bool = True,
        read_n: int = 2,
        write_n: int = 5,
        channels: int = 1,
        **old_names: int,
    ):
        super().__init__()
        unknown = set(old_names) - set(OLD_NAMES)
        if unknown:
            raise TypeError(f"DRAW() got an unexpected keyword argument {sorted(unknown)[0]!r}")
        glimpses = _renamed("steps", old_names.get("steps"), "glimpses", glimpses, 64)
        latent = _renamed("embed", old_names.get("embed"), "latent", latent, 100)
        self.height, self.width, self.channels = height, width, channels
        self.glimpses, self.hidden, self.latent = glimpses, hidden, latent
        self.attention = attention
        self.read_n, self.write_n = read_n, write_n

        values = channels * height * width
        read_size = 2 * channels * read_n * read_n if attention else 2 * values  # eq 27 / eq 17
        write_size = channels * write_n * write_n if attention else values  # eq 28 / eq 18
        self.encoder = LSTMCell(read_size + hidden, hidden)  # eq 5: input [r_t, h^dec_{t-1}]
        self.decoder = LSTMCell(latent, hidden)  # eq 7
        self.q = nn.Linear(hidden, 2 * latent)  # eq 1-2: mu_t and log sigma_t from h^enc_t
        self.write_head = nn.Linear(hidden, write_size)  # eq 18 / 28: w_t = W(h^dec_t)
        if attention:
            # eq 21: (g~_X, g~_Y, log sigma^2, log delta~, log gamma) = W(h^dec); separate heads.
            self.read_attention = nn.Linear(hidden, 5)
            self.write_attention = nn.Linear(hidden, 5)
            self._init_attention(self.read_attention, read_n)
            self._init_attention(self.write_attention, write_n, write=True)

        # Index vectors hoisted out of the time loop. Pixel coordinates a, b are 1-based,
        # so g~ = 0 puts the grid centre at (A+1)/2, the image centre (eq 22-23).
        self.register_buffer("grid_x", torch.arange(1, width + 1, dtype=torch.float32), persistent=False)
        self.register_buffer("grid_y", torch.arange(1, height + 1, dtype=torch.float32), persistent=False)
        # eq 19-20 with the paper's 1-based i: offsets (i - N/2 - 0.5), i = 1..N, symmetric about 0.
        for name, n in (("read_offsets", read_n), ("write_offsets", write_n)):
            self.register_buffer(name, torch.arange(1, n + 1, dtype=torch.float32) - n / 2 - 0.5, persistent=False)

    @property
    def steps(self) -> int:
        """T, the number of glimpses (model.glimpses)."""
        return self.glimpses

    @property
    def embed(self) -> int:
        """Z, the size of each z_t (model.latent)."""
        return self.latent

    # ----------------------------------------------------------------- configuration
    def config(self) -> dict:
        """Plain-typed constructor arguments (stored in checkpoints)."""
        return dict(
            height=self.height,
            width=self.width,
            glimpses=self.glimpses,
            hidden=self.hidden,
            latent=self.latent,
            attention=self.attention,
            read_n=self.read_n,
            write_n=self.write_n,
            channels=self.channels,
        )

    # ----------------------------------------------------------------- attention
    def _init_attention(self, head: nn.Linear, n: int, write: bool = False) -> None:
        """Start with the N x N grid tiling the whole image with overlapping filters.

        The paper does not give an initialisation. With zero biases, eq 24 gives
        delta = (max(A,B)-1)/(N-1): for N = 2 the two centres sit on the image's
        outermost pixels (1 and A), which are blank in MNIST, so the read sees
        nothing of the digit and training stalls in posterior collapse. Here the
        centred grid has spacing delta = max(A,B)/N (one cell per filter) and
        sigma = delta/2, so every pixel is read from the first step.

        For the write head, gamma starts at 1/delta^2: the normalised filters spread
        each patch value over about delta^2 pixels, so (1/gamma) F_Y^T w F_X then adds
        about w to each pixel, the same scale as the non-attention write (eq 18).
        Without it the canvas moves ~delta^2 times slower and training stalls early.
        """
        side = max(self.width, self.height)
        delta = side / n
        with torch.no_grad():
            head.bias.zero_()
            head.bias[2] = math.log((delta / 2) ** 2)  # log sigma^2
            head.bias[3] = math.log(delta * max(n - 1, 1) / (side - 1))  # log delta~ from eq 24
            if write:
                head.bias[4] = -2 * math.log(delta)  # log gamma
            head.weight.mul_(0.1)  # start near the tiling for every decoder state

    def attention_params(self, h: torch.Tensor, head: nn.Linear, n: int) -> torch.Tensor:
        """Map a decoder state to (B, 5) [g_x, g_y, delta, sigma^2, gamma] (eq 21-24)."""
        gx_, gy_, log_sigma2, log_delta_, log_gamma = head(h).unbind(-1)
        A, B = self.width, self.height
        gx = (A + 1) / 2 * (gx_ + 1)  # eq 22
        gy = (B + 1) / 2 * (gy_ + 1)  # eq 23
        # eq 24; for N = 1 the single centre sits at g and delta only sets the window's drawn size.
        delta = (max(A, B) - 1) / max(n - 1, 1) * torch.exp(log_delta_)
        return torch.stack([gx, gy, delta, torch.exp(log_sigma2), torch.exp(log_gamma)], dim=-1)

    def filterbank(self, params: torch.Tensor, offsets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Gaussian filterbanks F_X (B, N, A) and F_Y (B, N, B) (eq 19-20, 25-26)."""
        gx, gy, delta, sigma2 = params[:, 0:1], params[:, 1:2], params[:, 2:3], params[:, 3:4]
        mu_x = gx + offsets * delta  # eq 19: (B, N)
        mu_y = gy + offsets * delta  # eq 20
        two_s2 = (2 * sigma2).unsqueeze(-1)
        fx = torch.exp(-((self.grid_x - mu_x.unsqueeze(-1)) ** 2) / two_s2)  # eq 25
        fy = torch.exp(-((self.grid_y - mu_y.unsqueeze(-1)) ** 2) / two_s2)  # eq 26
        fx = fx / (fx.sum(-1, keepdim=True) + FILTER_EPS)  # Z_X: each row sums to 1
        fy = fy / (fy.sum(-1, keepdim=True) + FILTER_EPS)  # Z_Y
        return fx, fy

    def read_glimpse(self, x: torch.Tensor, x_hat: torch.Tensor, params: torch.Tensor) -> torch.Tensor:
        """eq 27: gamma [F_Y x F_X^T, F_Y x_hat F_X^T] for every channel, flattened to (B, 2 C N^2).

        x, x_hat: (B, C, H, W) or (B, H, W). Layout: glimpse row i, then image (the C channels of
        x, then those of x_hat), then column j.
        """
        fx, fy = self.filterbank(params, self.read_offsets)
        images = torch.cat([x, x_hat], dim=1) if x.dim() == 4 else torch.stack([x, x_hat], dim=1)  # (B, 2C, H, W)
        glimpse = fy[:, None] @ images @ fx.transpose(1, 2)[:, None]  # (B, 2C, N, N)
        return params[:, 4:5] * glimpse.transpose(1, 2).flatten(1)

    def write_patch(self, w: torch.Tensor, params: torch.Tensor) -> torch.Tensor:
        """eq 29: (1 / gamma) F_Y^T w F_X for a patch w of shape (B, C, N, N) or (B, N, N), the same
        filterbanks for every channel: (B, C, H, W) or (B, H, W)."""
        fx, fy = self.filterbank(params, self.write_offsets)
        if w.dim() == 3:
            return self.write_patch(w[:, None], params)[:, 0]
        out = fy.transpose(1, 2)[:, None] @ w @ fx[:, None]  # (B, C, H, W)
        return out / params[:, 4].reshape(-1, 1, 1, 1)

    def read(self, x: torch.Tensor, x_hat: torch.Tensor, h_dec: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """eq 17 (no attention) or eq 27; returns (r_t, attention params or None)."""
        if not self.attention:
            return torch.cat([x.flatten(1), x_hat.flatten(1)], dim=1), None
        params = self.attention_params(h_dec, self.read_attention, self.read_n)
        return self.read_glimpse(x, x_hat, params), params

    def write(self, h_dec: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """eq 18 (no attention) or eq 28-29; returns (canvas update (B, C, H, W), attention params or None)."""
        w = self.write_head(h_dec)
        if not self.attention:
            return w.reshape(-1, self.channels, self.height, self.width), None
        params = self.attention_params(h_dec, self.write_attention, self.write_n)
        return self.write_patch(w.reshape(-1, self.channels, self.write_n, self.write_n), params), params

    # ----------------------------------------------------------------- the model (Section 2)
    def forward(
        self,
        x: torch.Tensor,
        record: bool = False,
        log_ratio: bool = False,
        generator: torch.Generator | None = None,
        eps: torch.Tensor | None = None,
        engine: str | Engine | Resolved = "auto",
    ) -> DrawOutput:
        """Encode and reconstruct ``x`` (B, C, H, W), or (B, H, W) for one channel, in [0, 1]; losses in
        nats per image.

        eps: the standard-normal noise of every step, (T, B, Z); drawn here (from
        ``generator``) when not given. Distributed training passes slices of one
        global draw so that any number of processes sees the same noise.

        record: also return every canvas and attention window (for pictures; these carry
        no gradient).
        log_ratio: also return sum_t log q(z_t | x, z_<t) - log p(z_t) at the sampled
        z, needed for importance-weighted bounds.
        engine: which implementation runs the loop: "reference" (the loops below), "python",
        "native" or "auto" (the default; see engine.py), an engine.Engine with options, or an
        engine.Resolved (what the commands pass: resolved once, checked against each call). All
        compute the same function.
        """
        grey = x.dim() == 3
        x = (x[:, None] if grey else x).contiguous()
        if x.dim() != 4 or x.shape[1:] != (self.channels, self.height, self.width):
            raise ValueError(f"expected images ({self.channels}, {self.height}, {self.width}), got {tuple(x.shape[1:])}")
        if eps is None:  # fresh noise for every step and image, drawn at once
            eps = torch.randn(self.steps, x.shape[0], self.embed, device=x.device, dtype=x.dtype, generator=generator)

        engine = fast.choose(self, x, record, engine)
        if engine.name == "reference":
            canvas, mu, log_sigma, records = self.encode_decode(x, eps, record)
            lz = kl_per_image(mu, log_sigma)  # eq 10-11
            ratio = log_ratio_per_image(mu, log_sigma, eps) if log_ratio else None
        else:
            canvas, lz, ratio, records = fast.encode_decode(self, x, eps, record, log_ratio, engine.name, engine.packed_gemm)

        # eq 9: Bernoulli NLL of x under sigmoid(c_T), summed over pixels (logits: safe under autocast).
        lx = F.binary_cross_entropy_with_logits(canvas, x, reduction="none").flatten(1).sum(1)
        out = DrawOutput(lx=lx, lz=lz, log_ratio=ratio)
        if record:
            out.canvases = records[0][:, :, 0] if grey else records[0]
            if self.attention:
                out.read, out.write = records[1], records[2]
        return out

    def encode_decode(
        self, x: torch.Tensor, eps: torch.Tensor, record: bool = False
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, tuple[torch.Tensor, ...]]:
        """eq 3-8 for t = 1..T on x (B, C, H, W): returns c_T, mu and log sigma (T, B, Z) and the records.

        h^enc_0 = h^dec_0 = 0, c_0 = 0, and the LSTM cell states start at 0 too. The read at step t
        is steered by h^dec_{t-1} (eq 4), so the first window comes from the read head's bias.
        """
        b, hidden = x.shape[0], self.hidden
        h_enc = c_enc = h_dec = c_dec = x.new_zeros(b, hidden)
        canvas = torch.zeros_like(x)  # c_0
        mus, log_sigmas, canvases, reads, writes = [], [], [], [], []
        for t in range(self.steps):
            x_hat = x - torch.sigmoid(canvas)  # eq 3: the error image
            r, read_params = self.read(x, x_hat, h_dec)  # eq 4
            h_enc, c_enc = self.encoder(torch.cat([r, h_dec], dim=1), (h_enc, c_enc))  # eq 5
            mu, log_sigma = self.q(h_enc).chunk(2, dim=1)  # eq 1-2: Q(Z_t | h^enc_t)
            z = mu + torch.exp(log_sigma) * eps[t]  # eq 6: a sample of Q, reparameterised
            h_dec, c_dec = self.decoder(z, (h_dec, c_dec))  # eq 7
            update, write_params = self.write(h_dec)
            canvas = canvas + update  # eq 8
            mus.append(mu)
            log_sigmas.append(log_sigma)
            if record:
                canvases.append(canvas.detach())
                if self.attention:
                    reads.append(read_params.detach())
                    writes.append(write_params.detach())
        records = ()
        if record:
            records = (torch.stack(canvases),) + ((torch.stack(reads), torch.stack(writes)) if self.attention else ())
        return canvas, torch.stack(mus), torch.stack(log_sigmas), records

    @torch.no_grad()
    def generate(
        self,
        n: int,
        generator: torch.Generator | None = None,
        device: torch.device | str | None = None,
        every_step: bool = True,
        engine: str | Engine | Resolved = "auto",
        z: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Sample from the prior: z_t ~ N(0, I), decode, write (Section 2.3).

        Returns canvas logits of every step, (T, n, C, H, W), or (T, n, H, W) for one channel
        (apply sigmoid for pixel means), and the write attention (T, n, 5) or None without attention.
        every_step=False: only the final step's, (1, n, ...) and (1, n, 5), from the same
        noise; it skips storing T canvases (200 MB for 1000 MNIST samples at T=64).
        engine: "reference" (decode below), "python" or "auto"; sampling has no native loop.
        z: latents (T, n, Z) to decode instead of drawing them (``prior_latents`` draws the same
        ones from the same generator); n is then z's.
        """
        z = self.prior_latents(n, generator, device) if z is None else z

        engine = fast.choose_sampling(self, engine, z.device, z.dtype)
        if engine.name == "reference":
            canvases, writes = self.decode(z, every_step)
        else:
            canvases, writes = fast.decode(self, z, every_step, engine.packed_gemm)
        return (canvases[:, :, 0] if self.channels == 1 else canvases), writes

    def prior_latents(self, n: int, generator: torch.Generator | None = None,
                      device: torch.device | str | None = None) -> torch.Tensor:
        """z_t ~ N(0, I) for n images, (T, n, Z): the noise ``generate`` decodes for the same generator."""
        device = device if device is not None else self.grid_x.device
        dtype = self.grid_x.dtype  # the model's (float64 after .double())
        return torch.randn(self.steps, n, self.embed, device=device, dtype=dtype, generator=generator)

    def decode(self, z: torch.Tensor, every_step: bool = True) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The decoder half for latents z (T, n, Z): eq 7-8 with z_t in place of eq 6's sample.
        Canvases (T or 1, n, C, H, W)."""
        n = z.shape[1]
        h_dec = c_dec = z.new_zeros(n, self.hidden)
        canvas = z.new_zeros(n, self.channels, self.height, self.width)
        canvases, writes = [], []
        for t in range(self.steps):
            h_dec, c_dec = self.decoder(z[t], (h_dec, c_dec))  # eq 7
            update, write_params = self.write(h_dec)
            canvas = canvas + update  # eq 8
            if every_step or t == self.steps - 1:
                canvases.append(canvas)
                writes.append(write_params)
        return torch.stack(canvases), (torch.stack(writes) if self.attention else None)



def _renamed(old: str, old_value, new: str, value, default):
    """A constructor argument given by its new name, its old one (with a FutureWarning) or neither."""
    if old_value is None:
        return default if value is None else value
    if value is not None:
        raise TypeError(f"DRAW() got both {new}= and its old name {old}=; give {new}=")
    warnings.warn(f"DRAW({old}=...) is now DRAW({new}=...), the settings' name; {old}= will go", FutureWarning, stacklevel=3)
    return old_value


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
