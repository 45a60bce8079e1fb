"""Old home of the picture code, now split by concern: palette.py (colours and pixels), grids.py
(upscaling and grids), frames.py (the frames of the commands, attention windows) and writers.py
(PNG, GIF, MP4).

Only re-exports remain, for the two modules that still import from here
(drawcli/commands/pictures.py, drawcli/training/tensorboard_log.py); delete this file once they
import from the modules above. Import nothing new from it.
"""

from drawcli.pictures.frames import (
    add_progress,
    animation_frames,
    inspect_animation,
    inspect_strip,
    strip_rgb,
    strip_steps,
)
from drawcli.pictures.grids import default_scale, grid_for, image_cells, upscale
from drawcli.pictures.palette import to_uint8
from drawcli.pictures.writers import MAX_FPS, check_animation_path, write_animation, write_png

__all__ = ["MAX_FPS", "add_progress", "animation_frames", "check_animation_path", "default_scale", "grid_for",
           "image_cells", "inspect_animation", "inspect_strip", "strip_rgb", "strip_steps", "to_uint8", "upscale",
           "write_animation", "write_png"]
