"""What each API call computes, with drawcli.api's Drawer: JSON-ready answers. These run in worker
threads (drawcli/serve/app.py), never on the event loop.

Images go out as base64 text of uint8 bytes in C order, with their shape beside them: a grid is
(n, C, H, W), a film (T, C, H, W); pixel means sigmoid(c) are scaled to 0..255 as the PNGs of
`draw sample` are. Attention windows are lists of [g_x, g_y, delta, sigma2, gamma] per glimpse, in
the paper's 1-based pixel coordinates (drawcli.model.ATTENTION_FIELDS).
"""

from __future__ import annotations

import collections
import threading

import numpy as np

from drawcli.core.errors import DrawError
from drawcli.serve.catalogue import Catalogue, Entry
from drawcli.serve.images import encode


def _uint8(images) -> np.ndarray:
    from drawcli.pictures.palette import to_uint8

    return to_uint8(np.asarray(images, dtype=np.float32))


def _windows(params) -> list | None:
    if params is None:
        return None
    return np.round(np.asarray(params, dtype=np.float64), 4).tolist()


def model_info(drawer, entry: Entry) -> dict:
    """What the page needs to draw a model's pictures and windows, known once it is loaded."""
    m = drawer.model
    return {"id": entry.id, "shape": list(drawer.image_shape), "glimpses": drawer.glimpses, "latent": drawer.latent,
            "attention": bool(m.attention), "read_n": int(m.read_n) if m.attention else None,
            "write_n": int(m.write_n) if m.attention else None, "epoch": drawer.epoch,
            "engine": drawer.engine("sample"), "device": str(drawer.device), "binarize": drawer.settings.data.binarize}


def sample(drawer, n: int, seed: int) -> dict:
    """``n`` samples from the prior (the final canvases), as `draw sample -n N --seed S` draws them."""
    images = drawer.sample(n, seed=seed).numpy()
    return {"n": n, "seed": seed, "shape": list(images.shape), "images": encode(_uint8(images))}


def glimpses(drawer, n: int, seed: int, index: int) -> dict:
    """Sample ``index`` of ``sample(n, seed)`` glimpse by glimpse: its T canvases and write windows."""
    z = drawer.latents(n, seed=seed)[:, index: index + 1]
    film = drawer.decode(z)
    canvases = film.canvases[:, 0].numpy()
    return {"n": n, "seed": seed, "index": index, "shape": list(canvases.shape), "canvases": encode(_uint8(canvases)),
            "write": _windows(None if film.write is None else film.write[:, 0].numpy()), "read": None}


def reconstruct(drawer, image: np.ndarray, seed: int) -> dict:
    """The model reads ``image`` (uint8, the model's size) and draws it again: every canvas, the read
    and write windows, the binary image it read, and the ELBO's terms in nats (as `draw evaluate
    --samples 1 --seed SEED` scores it)."""
    seen = drawer.attention(image, seed=seed)
    bounds = drawer.bounds(image, samples=1, seed=seed)
    canvases = seen.canvases[:, 0].numpy()
    c, h, w = drawer.image_shape
    return {
        "seed": seed,
        "shape": list(canvases.shape),
        "image": encode(image.reshape(c, h, w)),
        "input": encode(_uint8(seen.inputs[0].numpy())),
        "canvases": encode(_uint8(canvases)),
        "read": _windows(None if seen.read is None else seen.read[:, 0].numpy()),
        "write": _windows(None if seen.write is None else seen.write[:, 0].numpy()),
        "elbo": round(float(bounds.elbo[0]), 3),
        "lx": round(float(bounds.lx[0]), 3),
        "lz": round(float(bounds.lz[0]), 3),
    }


def slerp(a: np.ndarray, b: np.ndarray, steps: int) -> np.ndarray:
    """``steps`` points from a to b (both ends included) along the great circle between the two
    flattened latents, their norms interpolated linearly: points stay as far from the origin as
    Gaussian latents are, where a straight line would pass through the unlikely middle."""
    fa, fb = a.reshape(-1).astype(np.float64), b.reshape(-1).astype(np.float64)
    na, nb = np.linalg.norm(fa), np.linalg.norm(fb)
    ua, ub = fa / max(na, 1e-12), fb / max(nb, 1e-12)
    omega = float(np.arccos(np.clip(ua @ ub, -1.0, 1.0)))
    out = []
    for t in np.linspace(0.0, 1.0, steps):
        if omega < 1e-6:
            u = (1 - t) * ua + t * ub
        else:
            u = (np.sin((1 - t) * omega) * ua + np.sin(t * omega) * ub) / np.sin(omega)
        out.append(u * ((1 - t) * na + t * nb))
    return np.stack(out).reshape(steps, *a.shape).astype(np.float32)


def walk(drawer, n: int, seed: int, a: int, b: int, steps: int) -> dict:
    """A latent walk from sample ``a`` to sample ``b`` of ``sample(n, seed)``: ``steps`` pictures, the
    first and last being the two samples."""
    z = drawer.latents(n, seed=seed).numpy()  # (T, n, Z)
    path = slerp(z[:, a], z[:, b], steps)  # (steps, T, Z)
    images = drawer.decode(np.ascontiguousarray(path.transpose(1, 0, 2))).images.numpy()
    return {"n": n, "seed": seed, "a": a, "b": b, "steps": steps, "shape": list(images.shape), "images": encode(_uint8(images))}


class Models:
    """Loaded models by id: at most ``keep`` at once (the least recently used is dropped), each
    loaded once however many requests ask for it at the same time."""

    def __init__(self, catalogue: Catalogue, device: str = "auto", engine: str = "auto", keep: int = 3):
        self.catalogue, self.device, self.engine, self.keep = catalogue, device, engine, keep
        self._loaded: collections.OrderedDict[str, tuple[tuple, object]] = collections.OrderedDict()
        self._lock = threading.Lock()
        self._loading: dict[str, threading.Lock] = {}

    def get(self, model_id) -> tuple[Entry, object]:
        """(entry, drawer) for a client's model id; loads it (in the calling worker thread) when it is
        not loaded yet or its checkpoint file was replaced since."""
        entry = self.catalogue.get(model_id)
        key = (entry.id, self.catalogue.checkpoint_identity(entry))
        with self._lock:
            hit = self._loaded.get(entry.id)
            if hit is not None and hit[0] == key:
                self._loaded.move_to_end(entry.id)
                return entry, hit[1]
            gate = self._loading.setdefault(entry.id, threading.Lock())
        with gate:
            with self._lock:
                hit = self._loaded.get(entry.id)
                if hit is not None and hit[0] == key:
                    return entry, hit[1]
            drawer = self._load(entry)
            with self._lock:
                self._loaded[entry.id] = (key, drawer)
                self._loaded.move_to_end(entry.id)
                while len(self._loaded) > self.keep:
                    self._loaded.popitem(last=False)
            return entry, drawer

    def _load(self, entry: Entry):
        from drawcli.api import load

        drawer = load(entry.ref, device=self.device, runs_dir=self.catalogue.runs_dir, engine=self.engine)
        c = drawer.image_shape[0]
        if c not in (1, 3):
            raise DrawError(f"{entry.id} draws {c}-channel images; the page shows grey and colour (3) models")
        return drawer
