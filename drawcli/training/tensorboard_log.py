"""TensorBoard logging for `draw train`: a training callback that writes RUN_DIR/tb/.

``run.tensorboard`` decides: ``auto`` logs when ``torch.utils.tensorboard`` imports (the
``tensorboard`` package is installed), ``true`` requires it, ``false`` never logs.

What is written, all against the global step, so ``tensorboard --logdir runs`` lines runs up:

* every log row: ``loss/train``, ``L_x/train``, ``L_z/train`` (nats per image, means over
  the row's steps), ``optim/lr``, ``optim/grad_norm`` (before clipping, mean over the row's
  steps) and ``speed/img_per_s``;
* every evaluation (each epoch's end): ``loss/SPLIT``, ``L_x/SPLIT``, ``L_z/SPLIT``;
* every evaluation, two images: ``samples/prior``, a grid of prior samples sigmoid(c_T), and
  ``samples/glimpses``, one sample's canvas sigmoid(c_t) for t = 1..T, row by row. The latent
  noise comes from this logger's own generator, seeded the same way every epoch, so the
  pictures of successive epochs show the same z and the training random streams are never
  touched (exact resume holds with and without TensorBoard).

Resume: a resumed run appends a new event file to the same folder. Events a crashed run wrote
after its last checkpoint are hidden (``purge_step``), so the curves never go back in time.
The writer is flushed at every evaluation and closed on interrupt, at the end, and on errors.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from drawcli.core.errors import DrawError

INSTALL_HINT = 'pip install "drawcli[tensorboard]"'
SAMPLES = 64  # prior samples in the grid image
SCALE = 2  # nearest-neighbour upscaling of the images
STRIP_ROW = 16  # glimpses per row of the glimpse strip
FLUSH_SECS = 15


def _summary_writer_class():
    """(torch's SummaryWriter or None, why not): None when the tensorboard package is not importable."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        return None, "the tensorboard package is not installed"
    except Exception as e:  # noqa: BLE001 - installed but broken (e.g. a protobuf it cannot use)
        first = (str(e).strip().splitlines() or [type(e).__name__])[0][:160]
        return None, f"torch.utils.tensorboard does not import ({first})"
    return SummaryWriter, ""


def use_tensorboard(mode: str) -> bool:
    """Whether to log, from ``run.tensorboard``; ``true`` without the package is a DrawError."""
    if mode == "false":
        return False
    writer_class, why = _summary_writer_class()
    if mode == "true" and writer_class is None:
        raise DrawError(f"run.tensorboard is true but {why}: {INSTALL_HINT}")
    return writer_class is not None


def _images(model, n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(prior grid, glimpse strip) as uint8 (H, W) images, from the model's own device and dtype.

    Uses only its own torch.Generator: no global or training random state is read or advanced.
    """
    import torch

    device = next(model.parameters()).device
    generator = torch.Generator(device=device).manual_seed(seed)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            logits, _ = model.generate(n, generator=generator, device=device, every_step=True)
            probs = torch.sigmoid(logits.float()).cpu().numpy()  # (T, n, [C,] H, W)
    finally:
        model.train(was_training)
    if probs.ndim == 5:  # colour (T, n, C, H, W): the same layout for every channel, stacked as HWC
        pairs = [_images_from(probs[:, :, c], n) for c in range(probs.shape[2])]
        return np.stack([g for g, _ in pairs], -1), np.stack([s for _, s in pairs], -1)
    return _images_from(probs, n)


def _images_from(probs: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    """(prior grid, glimpse strip) of one channel's probabilities (T, n, H, W)."""
    from drawcli.pictures.grids import grid_for, upscale
    from drawcli.pictures.palette import to_uint8

    steps = probs.shape[0]
    cells = upscale(to_uint8(probs), SCALE)  # (T, n, h, w)
    h, w = cells.shape[-2:]
    grid = grid_for(n, None, h, w).place(cells[-1])
    strip = grid_for(steps, min(steps, STRIP_ROW), h, w).place(cells[:, 0])
    return grid, strip


class TensorBoardLogger:
    """Training callback (rank 0 only) writing TensorBoard event files to ``log_dir``."""

    def __init__(self, log_dir: str | Path, seed: int = 0, samples: int = SAMPLES, images: bool = True):
        self.log_dir = Path(log_dir)
        self.seed = seed
        self.samples = samples
        self.images = images
        self.writer = None
        self.model = None

    # -- callbacks
    def on_start(self, info: dict) -> None:
        writer_class, why = _summary_writer_class()
        if writer_class is None:  # checked before training by use_tensorboard; uninstalled since?
            raise DrawError(f"cannot log to TensorBoard: {why}: {INSTALL_HINT}")
        self.model = info.get("model")
        start = int(info.get("start_step", 0))
        # A resumed run continues after its checkpoint's step: anything logged beyond it by a run
        # that died before saving is hidden, so no curve goes back in time.
        purge = start + 1 if start > 0 else None
        try:
            self.log_dir.mkdir(parents=True, exist_ok=True)
            self.writer = writer_class(log_dir=str(self.log_dir), purge_step=purge, flush_secs=FLUSH_SECS)
        except OSError as e:
            raise DrawError(f"cannot write TensorBoard logs to {self.log_dir}: {e.strerror or e}") from None

    def on_log(self, row: dict) -> None:
        if self.writer is None:
            return
        step = row["step"]
        for tag, key in (("loss/train", "loss"), ("L_x/train", "lx"), ("L_z/train", "lz"), ("optim/lr", "lr"),
                         ("optim/grad_norm", "grad_norm"), ("speed/img_per_s", "img_per_s")):
            if row.get(key) is not None:
                self.writer.add_scalar(tag, row[key], step)

    def on_epoch(self, row: dict) -> None:
        if self.writer is None or row.get("kind", "eval") != "eval":
            return
        step, split = row["step"], row.get("split", "eval")
        for tag, key in (("loss", "loss"), ("L_x", "lx"), ("L_z", "lz")):
            self.writer.add_scalar(f"{tag}/{split}", row[key], step)
        if self.images and self.model is not None:
            grid, strip = _images(self.model, self.samples, self.seed)
            layout = "HWC" if grid.ndim == 3 else "HW"
            self.writer.add_image("samples/prior", grid, step, dataformats=layout)
            self.writer.add_image("samples/glimpses", strip, step, dataformats=layout)
        self.writer.flush()

    def on_interrupt(self, ckpt: dict) -> None:
        self.close()

    def on_end(self, summary: dict) -> None:
        self.close()

    def close(self) -> None:
        """Flush and close the event file; safe to call more than once (and after errors)."""
        writer, self.writer, self.model = self.writer, None, None
        if writer is not None:
            writer.close()
