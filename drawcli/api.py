"""The Python API: a trained DRAW in one call, and what the commands do with it, as tensors.

    import drawcli
    drawer = drawcli.load("@mnist")              # or a run, a checkpoint file, a model folder, "hf:OWNER/NAME"
    images = drawer.sample(16, seed=0)           # (16, 1, 28, 28) in [0, 1]
    film = drawer.sample_glimpses(4, seed=0)     # every glimpse's canvas and write window
    nats = drawer.elbo(test_images)              # per image, as `draw evaluate --samples 1`

Images going in are uint8 grey levels 0..255, (N, H, W) or (N, C, H, W), as the data sets hold
them (numpy or torch); floats in [0, 1] are taken as grey levels too. They are binarised the way
the model was trained (``settings.data.binarize``), with a seeded generator, so the same seed gives
the same numbers as the command line. Images coming out are pixel means sigmoid(c) in [0, 1],
(N, C, H, W), on the CPU, float32.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import TYPE_CHECKING, Any

from drawcli.core.errors import DrawError

if TYPE_CHECKING:
    import numpy as np
    import torch

    from drawcli.model import DRAW
    from drawcli.runs.store import LoadedRun
    from drawcli.settings import Settings


WORK = ("sample", "evaluate", "inspect-attention")  # what a Drawer runs, each with its own engine


@dataclasses.dataclass(frozen=True)
class Glimpses:
    """The canvas after every glimpse t = 1..T, and where the attention windows went.

    canvases: (T, N, C, H, W), sigmoid(c_t) in [0, 1].
    write, read: (T, N, 5) window parameters (g_x, g_y, delta, sigma2, gamma: the paper's eq 19-24,
    g in 1-based pixel coordinates), or None (no read windows for samples from the prior; neither
    without attention).
    inputs: the binary images the model read (N, C, H, W), or None for samples from the prior.
    """

    canvases: torch.Tensor
    write: torch.Tensor | None
    read: torch.Tensor | None = None
    inputs: torch.Tensor | None = None

    @property
    def images(self) -> torch.Tensor:
        """The final canvas of every image, (N, C, H, W)."""
        return self.canvases[-1]


class Drawer:
    """A trained DRAW, its settings and its device, in eval mode. Made by :func:`load`."""

    def __init__(self, loaded: LoadedRun, engine: str = "auto"):
        self._loaded = loaded
        self._engine_setting = engine
        self._engines: dict = {}

    def engine(self, work: str = "evaluate") -> str:
        """The engine this object runs for ``work``, one of WORK: ``"sample"`` (sample,
        sample_glimpses, decode), ``"evaluate"`` (elbo, iwae) or ``"inspect-attention"`` (attention,
        reconstruct): native, python or reference, resolved from :func:`load`'s ``engine`` as the
        commands resolve it (drawcli.model.engine.resolve)."""
        if work not in WORK:
            raise DrawError(f"work: expected one of {', '.join(WORK)}, got {work!r}")
        return self._resolved(work).name

    def _resolved(self, work: str):
        if work not in self._engines:
            from drawcli.model.engine import resolve_for

            self._engines[work] = resolve_for(self._engine_setting, self.model, self.device, work)
        return self._engines[work]

    # ------------------------------------------------------------------ what it is
    @property
    def model(self) -> DRAW:
        """The ``torch.nn.Module`` (drawcli.model.DRAW), in eval mode."""
        return self._loaded.model

    @property
    def settings(self) -> Settings:
        """The settings it was trained with (drawcli.settings.Settings)."""
        return self._loaded.settings

    @property
    def device(self) -> torch.device:
        return self._loaded.device

    @property
    def name(self) -> str:
        """``@NAME`` for a built-in model, else the run's name."""
        return self._loaded.label

    @property
    def checkpoint(self) -> Path | None:
        """The checkpoint file it was read from (None for a built-in model)."""
        return self._loaded.checkpoint

    @property
    def epoch(self) -> int:
        """The epochs it trained: a run's checkpoint's epoch, or for a model trained in several cycles
        (``@mnist``) all of them (see :attr:`training`)."""
        return self._loaded.epoch

    @property
    def training(self) -> dict | None:
        """Its training history where it is recorded (model folders, built-in models): ``{"epochs",
        "steps", "cycles": [{"run", "epochs", "steps", ...}]}``; None for a run's checkpoint."""
        return self._loaded.training

    # ------------------------------------------------------------------ sharing
    def save_pretrained(self, folder: str | Path, *, force: bool = False) -> Path:
        """Write this model as a model folder (config.json, model.safetensors, README.md card) with the
        settings it was trained with and its training history; ``force`` replaces a model folder."""
        self.model.save_pretrained(folder, settings=self._loaded.saved_settings, training=self._training_record(), force=force)
        return Path(folder)

    def push_to_hub(self, repo_id: str, *, private: bool | None = None, token: str | None = None):
        """Upload :meth:`save_pretrained`'s folder to a Hugging Face Hub repository (the ``hub`` extra)."""
        return self.model.push_to_hub(repo_id, settings=self._loaded.saved_settings, training=self._training_record(),
                                      private=private, token=token)

    def _training_record(self) -> dict | None:
        if self._loaded.training is not None:
            return self._loaded.training
        if self._loaded.checkpoint is None:
            return None
        from drawcli.runs.folder import one_cycle

        return one_cycle(self.name, self.epoch, self._loaded.step, self.settings.train.init_from)

    @property
    def glimpses(self) -> int:
        """T, the drawing steps of one image."""
        return self.model.steps

    @property
    def latent(self) -> int:
        """The size of every z_t."""
        return self.model.embed

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """(C, H, W) of the images it draws."""
        m = self.model
        return (m.channels, m.height, m.width)

    def __repr__(self) -> str:
        c, h, w = self.image_shape
        m = self.model
        attention = f"read {m.read_n}x{m.read_n}, write {m.write_n}x{m.write_n}" if m.attention else "no attention"
        cycles = (self.training or {}).get("cycles") or []
        trained = self._loaded.trained if len(cycles) > 1 or self._loaded.checkpoint is None else f"epoch {self.epoch}"
        return (f"Drawer({self.name!r}: {c}x{h}x{w}, glimpses {self.glimpses}, LSTM {m.hidden}, latent {self.latent}, "
                f"{attention}; {trained}, on {self.device}, {self._loaded.precision})")

    # ------------------------------------------------------------------ drawing
    def sample(self, n: int, seed: int = 0) -> torch.Tensor:
        """``n`` images drawn from the prior, (n, C, H, W) in [0, 1] (as ``draw sample``)."""
        from drawcli.pictures.viz import sample_prior

        probs, _ = sample_prior(self._loaded, _count(n), self._generator(seed), self._resolved("sample"), every_step=False)
        return _channels_first(probs[-1], self.model.channels)

    def sample_glimpses(self, n: int, seed: int = 0) -> Glimpses:
        """``n`` samples glimpse by glimpse: every canvas and write window (as ``draw animate``)."""
        from drawcli.pictures.viz import sample_prior

        probs, write = sample_prior(self._loaded, _count(n), self._generator(seed), self._resolved("sample"))
        return Glimpses(canvases=_channels_first(probs, self.model.channels, steps=True), write=_tensor(write))

    def latents(self, n: int, seed: int = 0) -> torch.Tensor:
        """The latents z_1..z_T of ``sample(n, seed)``'s images, (T, n, Z) float32 on the CPU:
        ``decode(latents(n, seed))`` draws the same pictures, and points between two columns draw
        pictures between them (a latent walk)."""
        from drawcli.pictures.viz import prior_latents

        return prior_latents(self._loaded, _count(n), self._generator(seed)).float().cpu()

    def decode(self, z: Any) -> Glimpses:
        """Draw latents ``z`` (T, N, Z), numpy or torch (e.g. from :meth:`latents`): every canvas and
        write window, as :meth:`sample_glimpses` does for latents it draws itself."""
        import torch

        from drawcli.pictures.viz import sample_prior

        z = torch.as_tensor(z).detach()
        want = (self.glimpses, self.latent)
        if z.dim() != 3 or (z.shape[0], z.shape[2]) != want or z.shape[1] < 1 or not z.is_floating_point():
            raise DrawError(f"z must be floats of shape (T, N, Z) = ({want[0]}, N, {want[1]}) for {self.name}, got {tuple(z.shape)}")
        probs, write = sample_prior(self._loaded, z.shape[1], None, self._resolved("sample"), z=z)
        return Glimpses(canvases=_channels_first(probs, self.model.channels, steps=True), write=_tensor(write))

    def attention(self, images: Any, seed: int = 0) -> Glimpses:
        """Encode and redraw ``images``: every canvas, and the read and write windows of every glimpse
        (as ``draw animate --reconstruct`` and ``draw inspect-attention``)."""
        from drawcli.pictures.viz import reconstruct_images

        x = self._images(images)
        inputs, probs, read, write = reconstruct_images(self._loaded, x, self._generator(seed), self._resolved("inspect-attention"))
        c = self.model.channels
        return Glimpses(canvases=_channels_first(probs, c, steps=True), write=_tensor(write), read=_tensor(read),
                        inputs=_channels_first(inputs, c))

    def reconstruct(self, images: Any, seed: int = 0) -> torch.Tensor:
        """The model's redrawing of ``images`` after the last glimpse, (N, C, H, W) in [0, 1]."""
        return self.attention(images, seed).images

    # ------------------------------------------------------------------ bounds
    def elbo(self, images: Any, seed: int = 0) -> torch.Tensor:
        """The negative evidence lower bound L = L^x + L^z of every image, in nats, (N,) float64
        (as ``draw evaluate --samples 1 --seed SEED``)."""
        return self.bounds(images, samples=1, seed=seed).elbo

    def iwae(self, images: Any, k: int = 100, seed: int = 0) -> torch.Tensor:
        """The K-sample importance-weighted bound on -log p(x) of every image, in nats, (N,) float64
        (as ``draw evaluate --samples K --seed SEED``); tighter than :meth:`elbo` as K grows."""
        return self._bounds(images, _count(k, "k"), seed).iwae

    def bounds(self, images: Any, samples: int = 1, seed: int = 0):
        """Both bounds and the ELBO's parts per image: a :class:`drawcli.evaluation.bounds.Bounds` (``lx``,
        ``lz``, ``elbo``, ``iwae``; ``summary()`` gives the means with standard errors)."""
        return self._bounds(images, _count(samples, "samples"), seed)

    def _bounds(self, images: Any, samples: int, seed: int):
        from drawcli.core.device import autocast
        from drawcli.evaluation.bounds import likelihood_bounds

        x = self._images(images)
        with autocast(self.device, self._loaded.precision):
            return likelihood_bounds(self.model, x, self._binarize(), samples, seed=seed,
                                     engine=self._resolved("evaluate"))

    # ------------------------------------------------------------------ helpers
    def _generator(self, seed: int) -> torch.Generator:
        import torch

        if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
            raise DrawError(f"seed must be an integer >= 0, got {seed!r}")
        return torch.Generator(device=self.device).manual_seed(seed)

    def _binarize(self) -> str:
        """The binarisation ``draw evaluate`` applies to the model's own data set."""
        from drawcli.data.catalogue import get_spec, is_folder
        from drawcli.evaluation.evaluate import eval_binarize

        dataset = self.settings.data.dataset
        spec = None if is_folder(dataset) else get_spec(dataset)
        if spec is None:
            return self.settings.data.binarize
        return eval_binarize(spec, self.settings)

    def _images(self, images: Any) -> np.ndarray:
        """uint8 grey levels in the data sets' layout, (N, H, W) grey or (N, C, H, W), checked."""
        import numpy as np
        import torch

        if isinstance(images, torch.Tensor):
            images = images.detach().cpu()
            if images.is_floating_point():
                images = images.float().numpy()
            else:
                images = images.numpy()
        a = np.asarray(images)
        if a.dtype.kind == "f":
            if a.size and (a.min() < 0 or a.max() > 1):
                raise DrawError("float images must hold grey levels in [0, 1] (uint8 images hold 0..255)")
            a = np.rint(a * 255.0).astype(np.uint8)
        elif a.dtype == np.bool_:
            a = a.astype(np.uint8) * 255
        elif a.dtype != np.uint8:
            raise DrawError(f"images must be uint8 0..255 or floats in [0, 1], got {a.dtype}")
        c, h, w = self.image_shape
        if c == 1 and a.ndim == 4 and a.shape[1] == 1:
            a = a[:, 0]
        want = (h, w) if c == 1 else (c, h, w)
        if a.ndim == len(want):  # one image
            a = a[None]
        if tuple(a.shape[1:]) != want:
            raise DrawError(f"images are {tuple(a.shape[1:])}; {self.name} draws {want}")
        a = np.ascontiguousarray(a)
        return a if a.flags.writeable else a.copy()  # torch.from_numpy warns about read-only arrays (np.frombuffer's)


def _count(n: int, what: str = "n") -> int:
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise DrawError(f"{what} must be an integer >= 1, got {n!r}")
    return n


def _checkpoint_choice(checkpoint: Any) -> str | None:
    """load()'s ``checkpoint`` as --load spells it: None, an epoch number (int or digits), last or best."""
    if checkpoint is None:
        return None
    if isinstance(checkpoint, int) and not isinstance(checkpoint, bool) and checkpoint >= 0:
        return str(checkpoint)
    if isinstance(checkpoint, str) and (checkpoint.isdigit() or checkpoint in ("last", "best")):
        return checkpoint
    raise DrawError(f"checkpoint: expected an epoch number, 'last' or 'best', got {checkpoint!r}")


def _tensor(array):
    import torch

    return None if array is None else torch.as_tensor(array).float()


def _channels_first(array, channels: int, steps: bool = False):
    """numpy (…, H, W) grey or (…, C, H, W) colour -> a float32 CPU tensor with its channel axis."""
    import torch

    t = torch.as_tensor(array).float()
    grey_dims = 4 if steps else 3
    return t.unsqueeze(-3) if channels == 1 and t.dim() == grey_dims else t


def load(source: str | Path, *, device: str = "auto", checkpoint: int | str | None = None, runs_dir: str | Path | None = None,
         precision: str = "float32", engine: str = "auto") -> Drawer:
    """A trained DRAW, ready to draw and to score images.

    source: a built-in model (``"@mnist"``, see ``draw models``), a run name under ``runs_dir``,
    a run directory, a checkpoint or weights file (``runs/NAME/checkpoints/epoch_012.pt``), a model
    folder (config.json + model.safetensors, as ``draw export`` and ``save_pretrained`` write it) or a
    model on the Hugging Face Hub, ``"hf:OWNER/NAME"`` (needs ``pip install "drawcli[hub]"``).
    checkpoint: for a run, which of its checkpoints: an epoch number (``3`` or ``"3"``), ``"last"`` or
    ``"best"`` (default None: best, else last).
    runs_dir: where run names are looked up (default ``$DRAW_RUNS_DIR``, else ``runs``).
    device: ``"auto"`` (CUDA, then MPS, then CPU), ``"cpu"``, ``"cuda"``, ``"cuda:N"``, ``"mps"``.
    precision: ``"float32"``, ``"bfloat16"`` or ``"auto"``, for the products of the LSTMs.
    engine: ``"auto"`` (the native C++ engine where it runs, else the Python one), ``"native"``,
    ``"python"`` or ``"reference"`` (drawcli/model/draw.py's plain loops); the numbers agree.

    Raises :class:`drawcli.DrawError` with one line that says what is wrong.
    """
    from drawcli.runs.names import default_runs_dir
    from drawcli.runs.store import load_run, locate

    ref, device = str(source), str(device)
    runs_dir = default_runs_dir() if runs_dir is None else runs_dir
    checkpoint = _checkpoint_choice(checkpoint)
    located = locate(ref, checkpoint, device, runs_dir)
    from drawcli.model.engine import ENGINES

    if engine not in ENGINES:
        raise DrawError(f"engine: expected one of {', '.join(ENGINES)}, got {engine!r}")
    return Drawer(load_run(ref, checkpoint, device, runs_dir, located, precision), engine)


def create_model(*, height: int = 28, width: int = 28, channels: int = 1, **model: Any) -> DRAW:
    """An untrained DRAW (a ``torch.nn.Module``) for images of ``channels`` x ``height`` x ``width``.

    ``model`` takes the ``model.*`` settings by their documented names: ``glimpses`` (T),
    ``hidden`` (LSTM units), ``latent`` (the size of z_t), ``attention``, ``read_n``, ``write_n``;
    the rest keep their defaults (the paper's MNIST model). Values are checked as in a settings
    file: a wrong name or value raises :class:`drawcli.DrawError` naming it.
    """
    from drawcli.runs.checkpoint import build_model
    from drawcli.settings import Settings, apply_overrides, check_against_image

    for name, value in (("height", height), ("width", width), ("channels", channels)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise DrawError(f"{name} must be an integer >= 1, got {value!r}")
    settings = apply_overrides(Settings(), {"model": model}, together=False)  # the image is height x width, not mnist's
    check_against_image(settings, height, width)
    return build_model(settings, height, width, channels)


def load_images(dataset: str = "mnist", split: str = "test", *, limit: int | None = None,
                data_dir: str | Path | None = None) -> np.ndarray:
    """A data set's images as the commands read them: uint8, (N, H, W) grey or (N, C, H, W) colour.

    dataset: a name of ``draw download --list`` (``"mnist"``, ``"binarized-mnist"``, ``"svhn"``, ...)
    or ``"folder:PATH"``. split: ``"test"``, ``"valid"`` (the data set's own, else the last 10k
    training images) or ``"train"``. limit: the first ``limit`` images. data_dir: where data sets
    live (default ``$DRAW_DATA_DIR``, else the per-user cache); a missing data set is downloaded
    there first, as ``draw download`` would (progress on stderr).
    """
    from rich.console import Console

    from drawcli.data.loading import resolve_data_dir
    from drawcli.evaluation.evaluate import SPLITS, load_split
    from drawcli.settings import Settings, apply_overrides

    if split not in SPLITS:
        raise DrawError(f"split: expected one of {', '.join(SPLITS)}, got {split!r}")
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
        raise DrawError(f"limit must be an integer >= 1, got {limit!r}")
    data = apply_overrides(Settings(), {"data": {"dataset": dataset}}).data  # the name checked as in a settings file
    images, _ = load_split(data, resolve_data_dir(None if data_dir is None else str(data_dir)), split,
                           Console(stderr=True))
    return images[:limit] if limit is not None else images
