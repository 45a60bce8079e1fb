"""Checkpoints: plain types and tensors only, written atomically, loaded weights-only.

A checkpoint is a dict:
  format: "drawcli-checkpoint", format_version: 1, package_version: str,
  model_config: dict (DRAW constructor arguments), model: state_dict,
  optimizer: state_dict | absent, epoch: int (completed epochs), step: int,
  settings: dict (Settings.to_dict()), rng: {torch, cuda?, data}: tensors,
  metrics: dict of floats (test losses at save time), best_loss: float | None.
"""

from __future__ import annotations

import os
import pickle
import re
import zipfile
from pathlib import Path
from typing import Any

from drawcli.errors import DrawError

FORMAT = "drawcli-checkpoint"
FORMAT_VERSION = 1


def atomic_save(obj: Any, path: Path) -> None:
    """torch.save to a temp file in the same directory, fsync, then os.replace.

    A crash or a full disk leaves the previous file intact and no temp file behind.
    """
    import torch

    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as e:
        try:
            tmp.unlink()
        except FileNotFoundError:
            pass
        if isinstance(e, OSError):
            raise DrawError(f"cannot write checkpoint {path}: {e.strerror or e}") from None
        raise


def atomic_link(src: Path, dst: Path) -> None:
    """Make dst hold src's checkpoint without another copy on disk where possible (hard link)."""
    import shutil

    tmp = dst.with_name(f".{dst.name}.tmp{os.getpid()}")
    try:
        try:
            os.link(src, tmp)
        except OSError:
            shutil.copyfile(src, tmp)
        os.replace(tmp, dst)
    except OSError as e:
        try:
            tmp.unlink()
        except FileNotFoundError:
            pass
        raise DrawError(f"cannot write checkpoint {dst}: {e.strerror or e}") from None


def load(path: Path, map_location="cpu") -> dict:
    """Load and sanity-check a drawcli checkpoint; any problem is a one-line DrawError."""
    import torch

    path = Path(path)
    if not path.is_file():
        raise DrawError(f"checkpoint not found: {path}")
    if path.stat().st_size == 0:
        raise DrawError(f"{path}: checkpoint is empty (0 bytes)")
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as e:
        # weights_only refuses anything but plain types and tensors: a crafted pickle lands here.
        first = str(e).strip().splitlines()[0] if str(e).strip() else "unsupported content"
        raise DrawError(f"{path}: refused to load: not a plain-data checkpoint ({first[:160]})") from None
    except (RuntimeError, EOFError, OSError, ValueError, zipfile.BadZipFile, KeyError) as e:
        msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise DrawError(f"{path}: not a readable checkpoint (truncated or corrupt?): {msg[:160]}") from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        raise DrawError(f"{path}: not a drawcli checkpoint")
    for key in ("model_config", "model", "settings", "epoch", "step"):
        if key not in ckpt:
            raise DrawError(f"{path}: checkpoint lacks {key!r}")
    return ckpt


def epoch_file(epoch: int) -> str:
    return f"epoch_{epoch:03d}.pt"


def list_epochs(ckpt_dir: Path) -> list[int]:
    out = []
    for p in Path(ckpt_dir).glob("epoch_*.pt"):
        m = re.fullmatch(r"epoch_(\d+)\.pt", p.name)
        if m:
            out.append(int(m.group(1)))
    return sorted(out)
