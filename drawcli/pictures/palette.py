"""Colours and pixels: the fixed palettes of the frames, grey and colour conversions, and the
quantisation of colour frames for GIF. Pure numpy, no torch.

Grey frames are indices into PALETTE (254 grey levels and the two window colours); colour frames
(C = 3) are RGB, quantised to COLOUR_PALETTE only when a GIF is written (drawcli/pictures/writers.py).
"""

from __future__ import annotations

import math

import numpy as np

WRITE_COLOR = (255, 0, 0)  # red, as in the paper's figures
READ_COLOR = (0, 255, 0)  # green
PAD_VALUE = 72  # dark grey: separates cells whose background is black without glaring
PROGRESS_VALUE = 200  # light grey: the done part of the timeline bar under animations

# Frames with windows are palette images: indices 0..253 are grey levels, 254 and 255 the
# window colours. GIF is a palette format anyway; choosing the palette here makes every
# frame exact and skips pillow's per-frame colour quantisation (the slowest step by far),
# and a frame takes one byte per pixel instead of three.
GREY_LEVELS = 254
WRITE_INDEX, READ_INDEX = 254, 255
PALETTE = np.zeros((256, 3), dtype=np.uint8)
PALETTE[:GREY_LEVELS] = np.rint(np.arange(GREY_LEVELS) * 255 / (GREY_LEVELS - 1))[:, None]
PALETTE[WRITE_INDEX], PALETTE[READ_INDEX] = WRITE_COLOR, READ_COLOR
GREY_INDEX = np.rint(np.arange(256) * (GREY_LEVELS - 1) / 255).astype(np.uint8)  # grey 0..255 -> index

# Colour models (C = 3) are drawn as RGB frames (..., H, W, 3); grey ones stay indexed as above.
# A GIF still needs a palette, so colour frames are quantised once, when written, to a fixed
# one: a 6x7x6 RGB cube (green gets the extra level: the eye tells greens apart best), then the
# two greys of the padding and the timeline bar, then the two window colours. Fixed, so every
# frame is an exact palette image and pillow's slow per-frame quantisation is still skipped.
# Ordered (Bayer) dithering hides the cube's coarse steps: over a 4x4 block the mean colour is
# within about one unit of the true one, and the pattern is the same in every frame, so it
# does not flicker. Pure red, pure green and black are cube colours, so they survive exactly.
CUBE_LEVELS = (6, 7, 6)  # red, green, blue
CUBE_SIZE = math.prod(CUBE_LEVELS)  # 252
PAD_INDEX_RGB, PROGRESS_INDEX_RGB = CUBE_SIZE, CUBE_SIZE + 1
OUTLINE_COLOR = (0, 0, 0)
COLOUR_PALETTE = np.zeros((256, 3), dtype=np.uint8)
COLOUR_PALETTE[:CUBE_SIZE] = np.stack(
    np.meshgrid(*(np.rint(np.arange(k) * 255 / (k - 1)) for k in CUBE_LEVELS), indexing="ij"), axis=-1
).reshape(-1, 3)  # index = (r * 7 + g) * 6 + b
COLOUR_PALETTE[PAD_INDEX_RGB], COLOUR_PALETTE[PROGRESS_INDEX_RGB] = (PAD_VALUE,) * 3, (PROGRESS_VALUE,) * 3
COLOUR_PALETTE[WRITE_INDEX], COLOUR_PALETTE[READ_INDEX] = WRITE_COLOR, READ_COLOR
BAYER = np.array([[0, 8, 2, 10], [12, 4, 14, 6], [3, 11, 1, 9], [15, 7, 13, 5]])  # 4x4 ordered-dither ranks


def to_uint8(probs: np.ndarray) -> np.ndarray:
    """Float intensities in [0, 1] -> uint8 0..255 (imageio writes float frames as black GIFs)."""
    p = np.nan_to_num(np.asarray(probs, dtype=np.float32), nan=0.0)
    return np.clip(np.rint(p * 255.0), 0, 255).astype(np.uint8)


def to_indexed(grey: np.ndarray) -> np.ndarray:
    """Grey uint8 -> PALETTE indices, so windows can be drawn in colour."""
    return GREY_INDEX[grey]


def to_rgb(indexed: np.ndarray) -> np.ndarray:
    """PALETTE indices (..., H, W) -> RGB (..., H, W, 3)."""
    return PALETTE[indexed]


def is_colour(probs: np.ndarray, grey_ndim: int) -> bool:
    """Whether canvas probs carry a channel axis: grey arrays have ``grey_ndim`` axes, colour one more."""
    return probs.ndim == grey_ndim + 1


def quantise(frames: np.ndarray) -> np.ndarray:
    """RGB frames (T, H, W, 3) -> COLOUR_PALETTE indices (T, H, W), ordered-dithered.

    Colours that are palette entries of their own (padding, timeline bar, windows) map
    to them exactly; anything else to the cube, level = floor(v * (k-1)/255 + threshold)
    with the Bayer threshold of the pixel's place in the frame. One frame at a time:
    the float temporaries stay the size of one frame.
    """
    t, h, w, _ = frames.shape
    threshold = (np.tile(BAYER, (-(-h // 4), -(-w // 4)))[:h, :w, None] + 0.5) / 16
    top = np.array(CUBE_LEVELS, dtype=np.float64) - 1
    weights = np.array([CUBE_LEVELS[1] * CUBE_LEVELS[2], CUBE_LEVELS[2], 1])
    exact = {_key(COLOUR_PALETTE[i]): i for i in (PAD_INDEX_RGB, PROGRESS_INDEX_RGB, WRITE_INDEX, READ_INDEX)}
    out = np.empty((t, h, w), dtype=np.uint8)
    for f in range(t):
        levels = np.minimum(np.floor(frames[f] * (top / 255) + threshold), top).astype(np.int64)
        index = levels @ weights
        keys = _key(frames[f])
        for key, i in exact.items():
            index[keys == key] = i
        out[f] = index
    return out


def _key(rgb: np.ndarray) -> np.ndarray:
    """RGB (..., 3) -> one integer per colour, to compare colours in one operation."""
    rgb = np.asarray(rgb, dtype=np.int64)
    return (rgb[..., 0] << 16) | (rgb[..., 1] << 8) | rgb[..., 2]
