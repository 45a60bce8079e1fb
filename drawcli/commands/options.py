"""The options of the commands that load a model (`draw sample`, `draw animate`, `draw
inspect-attention`, `draw evaluate`), declared once.

cli.py builds one frozen object per command from the command line, its Typer options taking
their defaults from these fields, and passes it to the command (``sample_command(options)``);
a Python caller builds the same object. :meth:`ModelOptions.check` answers every mistake that
needs neither torch nor a file; the command calls it, then locates the model, once.

Never imports torch.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from drawcli.core.errors import DrawError
from drawcli.data.catalogue import EVAL_SPLITS
from drawcli.settings import RunSettings, check_command_options

PRECISION = "float32"  # pictures and bounds: float32 unless asked (training defaults to train.precision)
INSPECTED = 8  # inspect-attention's images without -n or --index


def _at_least(flag: str, value, minimum: int = 1) -> None:
    if value is not None and value < minimum:
        raise DrawError(f"{flag} must be at least {minimum}, got {value}")


def _check_timing(fps: float, hold: float) -> None:
    from drawcli.pictures.writers import MAX_FPS  # here: `draw --help` imports this module, not numpy

    if not 0 < fps <= MAX_FPS:
        raise DrawError(f"--fps must be more than 0 and at most {MAX_FPS}, got {fps:g}")
    if not hold >= 0:
        raise DrawError(f"--hold must be 0 or more seconds, got {hold:g}")


@dataclass(frozen=True)
class ModelOptions:
    """What every command that loads a model takes: the model, its checkpoint, where and how it runs,
    the seed and the file written (None: a name that says what it holds)."""

    run: str
    load: str | None = None
    seed: int = 0
    device: str = RunSettings.device
    precision: str = PRECISION
    engine: str = RunSettings.engine
    runs_dir: str | Path = RunSettings.runs_dir
    output: str | Path | None = None

    def check(self) -> None:
        """A one-line DrawError for any option that is wrong on its own (no torch, no files read)."""
        check_command_options(seed=self.seed, device=self.device, precision=self.precision, engine=self.engine)


@dataclass(frozen=True)
class SampleOptions(ModelOptions):
    """`draw sample`: a PNG grid of ``n`` samples from the prior."""

    n: int = 64
    nrow: int | None = None
    scale: int | None = None
    binary: bool = False
    npy: bool = False

    def check(self) -> None:
        super().check()
        _at_least("-n", self.n)
        _at_least("--nrow", self.nrow)
        _at_least("--scale", self.scale)


@dataclass(frozen=True)
class AnimateOptions(ModelOptions):
    """`draw animate`: one frame per glimpse for a grid of samples (or reconstructions of test images)."""

    n: int = 16
    nrow: int | None = None
    scale: int | None = None
    fps: float = 10.0
    hold: float = 2.0
    boxes: bool = False
    reconstruct: bool = False
    progress: bool = True
    data_dir: str | None = None

    def check(self) -> None:
        super().check()
        _at_least("-n", self.n)
        _at_least("--nrow", self.nrow)
        _at_least("--scale", self.scale)
        _check_timing(self.fps, self.hold)


@dataclass(frozen=True)
class InspectOptions(ModelOptions):
    """`draw inspect-attention`: the read and write windows of test images (``n`` or ``index``) or of
    prior samples (``generate``), as an animation, a PNG strip and a table or JSON (``json_path``)."""

    n: int | None = None  # None: INSPECTED
    index: str | Sequence[int] | None = None
    generate: bool = False
    json_path: str | Path | None = None
    scale: int | None = None
    fps: float = AnimateOptions.fps
    hold: float = AnimateOptions.hold
    data_dir: str | None = None

    @property
    def count(self) -> int:
        """How many images -n asks for."""
        return self.n or INSPECTED

    def check(self) -> None:
        super().check()
        _at_least("-n", self.n)
        _at_least("--scale", self.scale)
        _check_timing(self.fps, self.hold)
        if self.generate and self.index is not None:
            raise DrawError("--index picks test images; it cannot be combined with --generate")
        if self.n is not None and self.index is not None:
            raise DrawError("give either -n (the first N test images) or --index (chosen test images), not both")
        if isinstance(self.index, str):
            from drawcli.pictures.viz import parse_indices

            parse_indices(self.index, limit=2**62)  # the syntax now; the range once the test set is read
        if self.json_path is not None and Path(self.json_path).suffix.lower() != ".json":
            raise DrawError(f"{self.json_path}: --json writes JSON; use a .json file name")


@dataclass(frozen=True)
class EvaluateOptions(ModelOptions):
    """`draw evaluate`: bounds on -log p(x) with ``samples`` importance samples per image, on a split."""

    split: str = "test"
    dataset: str | None = None  # None: the run's
    samples: int = 100
    batch_size: int | None = None  # None: from a memory budget
    limit: int | None = None
    data_dir: str | None = None

    def check(self) -> None:
        if self.split not in EVAL_SPLITS:
            raise DrawError(f"--split: expected one of {', '.join(EVAL_SPLITS)}, got {self.split!r}")
        if self.output is not None and not str(self.output).lower().endswith(".json"):
            raise DrawError(f"{self.output}: the results are written as JSON; use a .json file name")
        super().check()
        for flag, value in (("--samples", self.samples), ("--batch-size", self.batch_size), ("--limit", self.limit)):
            if value is not None and value < 1:
                raise DrawError(f"{flag} must be >= 1, got {value}")
