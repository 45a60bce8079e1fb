"""The picture files: PNG, GIF (imageio's pillow plugin) and MP4 (imageio's ffmpeg plugin, optional),
each written atomically (encoded in memory, then put in place). No torch.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from drawcli.core.errors import DrawError
from drawcli.core.files import replace_atomically
from drawcli.pictures.palette import COLOUR_PALETTE, GREY_INDEX, PAD_VALUE, PALETTE, quantise, to_rgb

MAX_FPS = 50  # GIF delays have 10 ms resolution and viewers slow anything under 20 ms
ANIMATION_SUFFIXES = (".gif", ".mp4")


def _write_encoded(path: Path, data: bytes) -> None:
    """Put bytes that are already encoded in place. Encoding in memory first keeps imageio's
    writers away from the file system: a writer that failed to open its file would retry in
    its finaliser and print a traceback after the one-line error."""
    replace_atomically(path, lambda tmp: tmp.write_bytes(data))


def write_png(path: Path, image: np.ndarray) -> None:
    import imageio.v3 as iio

    _write_encoded(path, iio.imwrite("<bytes>", image, extension=".png"))


def gif_durations(frames: int, fps: float, hold: float) -> list[int]:
    """Per-frame GIF delays in milliseconds; the last frame stays ``hold`` seconds.

    GIF stores delays in hundredths of a second, so they are rounded to 10 ms.
    """
    frame_ms = max(20, 10 * round(100 / fps))
    last = max(frame_ms, 10 * round(100 * hold))
    return [frame_ms] * (frames - 1) + [last]


def ffmpeg_available() -> bool:
    """imageio's ffmpeg plugin needs the imageio-ffmpeg package and its bundled binary."""
    try:
        import imageio_ffmpeg
    except ImportError:
        return False
    try:
        imageio_ffmpeg.get_ffmpeg_exe()
    except RuntimeError:
        return False
    return True


def check_animation_path(path: Path) -> None:
    suffix = path.suffix.lower()
    if suffix not in ANIMATION_SUFFIXES:
        raise DrawError(f"{path}: the animation must be a .gif or .mp4 file")
    if suffix == ".mp4" and not ffmpeg_available():
        raise DrawError(
            f"{path}: writing MP4 needs imageio's ffmpeg plugin (pip install imageio-ffmpeg); or write a .gif instead"
        )


def write_animation(path: Path, frames: np.ndarray, fps: float, hold: float) -> tuple[int, int, int]:
    """Frames -> looping GIF, or MP4 by the suffix. Indexed frames (T, H, W) hold PALETTE indices
    (grey models); RGB frames (T, H, W, 3) are colour ones, quantised to COLOUR_PALETTE for a GIF.

    Returns what the file holds: (frames, width, height). A GIF has one frame per glimpse and
    holds the last by its delay; a video repeats the last frame and pads odd sides by a pixel.
    """
    import imageio.v3 as iio

    check_animation_path(path)
    rgb = frames.ndim == 4
    t, h, w = frames.shape[:3]
    if path.suffix.lower() == ".gif":
        durations = gif_durations(t, fps, hold)
        indexed, palette = (quantise(frames), COLOUR_PALETTE) if rgb else (frames, PALETTE)
        # mode "L" hands pillow the indices untouched; its GIF writer then uses our palette.
        data = iio.imwrite(
            "<bytes>", indexed, extension=".gif", is_batch=True, mode="L", palette=palette.tobytes(), duration=durations, loop=0
        )
        _write_encoded(path, data)
        return t, w, h
    import imageio.v2 as iio2

    # Video has one frame rate: hold the last frame by repeating it; yuv420p needs even sides.
    if rgb:  # colour frames go to the video as they are, not through the GIF palette
        even = np.full((h + h % 2, w + w % 2, 3), PAD_VALUE, dtype=np.uint8)
    else:
        even = np.full((h + h % 2, w + w % 2), GREY_INDEX[PAD_VALUE], dtype=np.uint8)
    repeats = max(0, math.ceil(hold * fps) - 1)

    def write(tmp: Path) -> None:
        tmp.write_bytes(b"")  # an unwritable folder fails here, in our hands, not inside ffmpeg
        with iio2.get_writer(tmp, format="FFMPEG", mode="I", fps=fps, codec="libx264", macro_block_size=2) as writer:
            for i in range(t + repeats):
                even[:h, :w] = frames[min(i, t - 1)]
                writer.append_data(even if rgb else to_rgb(even))

    replace_atomically(path, write)
    return t + repeats, even.shape[1], even.shape[0]
