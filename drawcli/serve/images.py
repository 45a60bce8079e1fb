"""Pictures a client sends, made into what a model reads: uint8 (H, W) grey or (C, H, W) colour at the
model's size. Torch-free; Pillow decodes, with the size checked before any pixel is decoded.

A picture arrives base64-encoded (a ``data:image/...;base64,`` prefix is allowed), as PNG, JPEG, GIF,
BMP or WebP. For a grey model it is made grey, inverted when its border is light (ink on paper ->
MNIST's white ink on black), and, with ``fit``, placed as MNIST's digits were: the ink's bounding
box scaled to 20/28 of the side and centred by its centre of mass. A colour model gets the picture
resized to its size.
"""

from __future__ import annotations

import base64
import binascii
import io

import numpy as np

from drawcli.core.errors import DrawError

FORMATS = ("PNG", "JPEG", "GIF", "BMP", "WEBP")
MAX_SIDE = 4096  # pixels, either side, checked before decoding
MAX_PIXELS = 8_000_000
MNIST_BOX = 20 / 28  # MNIST's digits fill a 20x20 box in the 28x28 image


def decode_base64(text) -> bytes:
    if not isinstance(text, str) or not text:
        raise DrawError("image: expected a base64-encoded PNG, JPEG, GIF, BMP or WebP file")
    if text.startswith("data:"):
        head, _, text = text.partition(",")
        if not head.endswith(";base64"):
            raise DrawError("image: a data: URL must be base64-encoded")
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise DrawError("image: not valid base64") from None


def open_picture(data: bytes):
    """A Pillow image, its size checked before decoding; a one-line error for anything else."""
    from PIL import Image, UnidentifiedImageError

    try:
        picture = Image.open(io.BytesIO(data), formats=FORMATS)
    except (UnidentifiedImageError, OSError, ValueError, Image.DecompressionBombError):
        raise DrawError(f"image: not a picture this server reads ({', '.join(FORMATS)})") from None
    w, h = picture.size
    if w < 1 or h < 1 or w > MAX_SIDE or h > MAX_SIDE or w * h > MAX_PIXELS:
        raise DrawError(f"image: {w}x{h} pixels is too large (at most {MAX_SIDE} a side and {MAX_PIXELS} in all)")
    try:
        picture.load()
    except (OSError, ValueError, Image.DecompressionBombError, SyntaxError):
        raise DrawError("image: the file is damaged or truncated") from None
    return picture


def _to_grey(picture) -> np.ndarray:
    from PIL import Image

    if picture.mode in ("RGBA", "LA", "PA") or (picture.mode == "P" and "transparency" in picture.info):
        # Transparent pixels are paper: flatten on white before deciding what is ink.
        rgba = picture.convert("RGBA")
        ground = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        picture = Image.alpha_composite(ground, rgba)
    return np.asarray(picture.convert("L"), dtype=np.uint8)


def _border_is_light(grey: np.ndarray) -> bool:
    edge = np.concatenate([grey[0], grey[-1], grey[:, 0], grey[:, -1]])
    return float(edge.mean()) > 127.5


def fit_like_mnist(grey: np.ndarray, height: int, width: int) -> np.ndarray:
    """White ink on black, (h, w) uint8 -> (height, width): the ink's bounding box scaled (aspect kept)
    to MNIST_BOX of the side, then shifted so that its centre of mass is the image's centre."""
    from PIL import Image

    ink = grey > 25
    out = np.zeros((height, width), np.uint8)
    if not ink.any():
        return out
    ys, xs = np.nonzero(ink)
    crop = grey[ys.min(): ys.max() + 1, xs.min(): xs.max() + 1]
    ch, cw = crop.shape
    box = max(1.0, MNIST_BOX * min(height, width))
    scale = box / max(ch, cw)
    nh, nw = max(1, round(ch * scale)), max(1, round(cw * scale))
    small = np.asarray(Image.fromarray(crop).resize((nw, nh), Image.Resampling.LANCZOS), dtype=np.uint8)
    mass = small.astype(np.float64)
    total = mass.sum()
    if total > 0:
        cy = (mass.sum(axis=1) * np.arange(nh)).sum() / total
        cx = (mass.sum(axis=0) * np.arange(nw)).sum() / total
    else:
        cy, cx = (nh - 1) / 2, (nw - 1) / 2
    top = int(round((height - 1) / 2 - cy))
    left = int(round((width - 1) / 2 - cx))
    top = min(max(top, 0), height - nh)
    left = min(max(left, 0), width - nw)
    out[top: top + nh, left: left + nw] = small
    return out


def prepare(data: bytes, shape: tuple[int, int, int], fit: bool = True, invert: bool | None = None) -> np.ndarray:
    """Picture bytes -> uint8 (H, W) for a grey model or (C, H, W) for a colour one.

    invert: None decides from the border (light border: dark ink on paper, inverted), True or False
    forces it. fit: grey models only (see :func:`fit_like_mnist`); else the whole picture is resized.
    """
    from PIL import Image

    c, h, w = shape
    picture = open_picture(data)
    if c == 1:
        grey = _to_grey(picture)
        if invert is None:
            invert = _border_is_light(grey)
        if invert:
            grey = 255 - grey
        if fit:
            return fit_like_mnist(grey, h, w)
        return np.asarray(Image.fromarray(grey).resize((w, h), Image.Resampling.BOX), dtype=np.uint8)
    if c != 3:
        raise DrawError(f"image: models with {c} channels take no pictures")
    rgb = picture.convert("RGB").resize((w, h), Image.Resampling.BOX)
    return np.ascontiguousarray(np.asarray(rgb, dtype=np.uint8).transpose(2, 0, 1))


def encode(array: np.ndarray) -> str:
    """uint8 array -> base64 text of its bytes, C order (the API's image encoding)."""
    return base64.b64encode(np.ascontiguousarray(array, dtype=np.uint8).tobytes()).decode("ascii")
