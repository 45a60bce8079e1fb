"""The picture commands: `draw sample`, `draw animate`, `draw inspect-attention`.

Grey and colour models alike: a colour model's canvases keep their channel axis,
(T, n, C, H, W), and drawcli.pictures.frames draws them as RGB.

Each checks its options, loads the model (drawcli.runs.store.load_run: a run or a built-in @NAME),
runs it under the requested precision, and hands numpy arrays on: drawcli.pictures.frames builds
the frames and drawcli.pictures.writers writes the files.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Sequence

import numpy as np

from drawcli.core.errors import DrawError
from drawcli.runs.store import LoadedRun


def parse_indices(spec: str | Sequence[int], limit: int) -> list[int]:
    """'0,5,7' or '10-15' (inclusive ranges may be mixed in) -> indices checked against ``limit``."""
    if isinstance(spec, str):
        out: list[int] = []
        for part in spec.split(","):
            part = part.strip()
            m = re.fullmatch(r"(\d+)(?:-(\d+))?", part)
            if not m:
                raise DrawError(f"--index: expected comma-separated image numbers like 0,5,7 or 10-15, got {spec!r}")
            lo, hi = int(m.group(1)), int(m.group(2) or m.group(1))
            if hi < lo:
                raise DrawError(f"--index: empty range {part!r}")
            out.extend(range(lo, hi + 1))
    else:
        out = [int(i) for i in spec]
    if not out:
        raise DrawError("--index: no image numbers given")
    bad = [i for i in out if not 0 <= i < limit]
    if bad:
        raise DrawError(f"--index: {bad[0]} is out of range: the test set has {limit} images (0..{limit - 1})")
    return out


# ----------------------------------------------------------------------------- runs and models
@contextlib.contextmanager
def running(loaded: LoadedRun):
    """No gradients, the loaded precision (autocast), and one CPU thread while the model runs.

    DRAW's per-step ops are tiny (a few hundred rows at most), so extra threads
    only add synchronisation; on a busy machine each op then waits for a second
    core and sampling 64 images took seconds instead of well under one.
    """
    import torch

    from drawcli.core.device import autocast

    with torch.no_grad(), autocast(loaded.device, loaded.precision):
        if loaded.device.type != "cpu":
            yield
            return
        before = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            yield
        finally:
            torch.set_num_threads(before)


def seeded_generator(loaded: LoadedRun, seed: int):
    """A generator on the model's device seeded with ``seed`` (the commands check --seed)."""
    import torch

    return torch.Generator(device=loaded.device).manual_seed(seed)


def require_attention(loaded: LoadedRun, what: str) -> None:
    if not loaded.model.attention:
        raise DrawError(
            f"{_named(loaded)} was trained without attention (model.attention: false), "
            f"so it has no read or write windows {what}"
        )


def _named(loaded: LoadedRun) -> str:
    return f"run {loaded.label!r}" if loaded.run_dir is not None else f"the built-in model {loaded.label}"


def load_test_images(loaded: LoadedRun, data_dir: str | None) -> np.ndarray:
    """The run's test images, uint8 (N, H, W), or (N, C, H, W) for colour; a missing data set is
    the usual one-line error.

    A registry set reads only its test file: pictures never need the 47 MB training set. A
    ``folder:PATH`` set is read as training read it (its data.* settings, from its cache when
    the folder is unchanged), and its held-out test split is shown.
    """
    import dataclasses

    from drawcli.data.catalogue import get_spec, is_folder
    from drawcli.data.loading import load_images, resolve_data_dir
    from drawcli.settings import load_data

    data = loaded.settings.data
    root = resolve_data_dir(data_dir or data.data_dir)
    if is_folder(data.dataset):
        # The test split even for a run that validated: that is what "test images" says.
        name, images = data.dataset, load_data(dataclasses.replace(data, validation=False), root).eval
    else:
        spec = get_spec(data.dataset)
        name, images = spec.name, load_images(spec, root / spec.name, "test_images")
    model = loaded.model
    shape = (model.height, model.width) if model.channels == 1 else (model.channels, model.height, model.width)
    if images.shape[1:] != shape:
        def describe(s) -> str:
            return f"{s[-1]}x{s[-2]}" + (f" with {s[0]} channels" if len(s) == 3 else " grey")

        raise DrawError(f"{name} images are {describe(images.shape[1:])} but the model draws {describe(shape)}")
    return images


def reconstruct_images(loaded: LoadedRun, images: np.ndarray, generator, engine: str = "auto"):
    """Encode and redraw test images: (inputs (B,[C,]H,W), canvas probs (T,B,[C,]H,W), read, write) as numpy.

    The input is binarised as in training (the run's data.binarize, seeded), so
    the picture shows what the model actually read. engine: see drawcli/model/engine.py.
    """
    import torch

    from drawcli.data.loading import to_input

    with running(loaded):
        x = to_input(torch.from_numpy(images).to(loaded.device), loaded.settings.data.binarize, generator)
        out = loaded.model(x, record=True, generator=generator, engine=engine)
    probs = torch.sigmoid(out.canvases.float()).cpu().numpy()
    read = None if out.read is None else out.read.float().cpu().numpy()
    write = None if out.write is None else out.write.float().cpu().numpy()
    return x.cpu().numpy(), probs, read, write


def prior_latents(loaded: LoadedRun, n: int, generator):
    """The latents (T, n, Z) that :func:`sample_prior` decodes for the same generator, on the model's device."""
    return loaded.model.prior_latents(n, generator=generator, device=loaded.device)


def sample_prior(loaded: LoadedRun, n: int, generator, engine: str = "auto", every_step: bool = True, z=None):
    """Prior samples: canvas probs (T, n, [C,] H, W) and write windows (T, n, 5) or None, as numpy;
    only the last step's, (1, n, ...), without ``every_step``. ``z``: latents (T, n, Z) to decode
    (from :func:`prior_latents`, or between two of them) instead of drawing new ones; n is then z's."""
    import torch

    with running(loaded):
        if z is not None:
            z = torch.as_tensor(z).to(loaded.device, loaded.model.grid_x.dtype)
        logits, write = loaded.model.generate(n, generator=generator, device=loaded.device, engine=engine, every_step=every_step,
                                              z=z)
        probs = torch.sigmoid(logits.float()).cpu().numpy()
    return probs, (None if write is None else write.float().cpu().numpy())


# ----------------------------------------------------------------------------- draw sample
def binary_pixels(loaded: LoadedRun, probs: np.ndarray, generator) -> np.ndarray:
    """Bernoulli pixels drawn from the means ``probs`` (`draw sample --binary`), on the model's device
    with the generator that drew the samples, so that a seed gives one picture."""
    import torch

    with running(loaded):
        return torch.bernoulli(torch.from_numpy(probs).to(loaded.device), generator=generator).cpu().numpy()


# ----------------------------------------------------------------------------- draw inspect-attention
def attention_records(read: np.ndarray | None, write: np.ndarray, labels: Sequence[dict]) -> list[dict]:
    """Per image and step, the window parameters as plain floats (JSON-ready)."""
    from drawcli.model import ATTENTION_FIELDS

    def fields(row) -> dict:
        return {k: round(float(v), 6) for k, v in zip(ATTENTION_FIELDS, row)}

    records = []
    for i, label in enumerate(labels):
        steps = []
        for t in range(write.shape[0]):
            step = {"t": t + 1}
            if read is not None:
                step["read"] = fields(read[t, i])
            step["write"] = fields(write[t, i])
            steps.append(step)
        records.append({**label, "steps": steps})
    return records


def attention_tables(read: np.ndarray | None, write: np.ndarray, read_n: int, write_n: int):
    """Rich tables: mean ± standard deviation over images of each parameter, per step."""
    from rich.table import Table

    from drawcli.model import ATTENTION_FIELDS

    heads = {"g_x": "g_x", "g_y": "g_y", "delta": "δ", "sigma2": "σ²", "gamma": "γ"}
    tables = []
    for name, params, side in (("read", read, read_n), ("write", write, write_n)):
        if params is None:
            continue
        n = params.shape[1]
        table = Table(title=f"{name} window ({side}x{side} filters): mean ± std over {n} image{'s' * (n != 1)}")
        table.add_column("t", justify="right")
        for f in ATTENTION_FIELDS:
            table.add_column(heads[f], justify="right", no_wrap=True)
        mean, std = params.mean(axis=1), params.std(axis=1)
        decimals = [column_decimals(mean[:, j]) for j in range(mean.shape[1])]
        for t in range(params.shape[0]):
            table.add_row(str(t + 1), *(f"{m:.{d}f} ± {s:.{d}f}" for m, s, d in zip(mean[t], std[t], decimals)))
        tables.append(table)
    return tables


def column_decimals(values: np.ndarray) -> int:
    """Decimals that give a column's largest value three significant digits (0 to 4), used for
    its means and standard deviations alike: '14.1 ± 0.0', '0.512 ± 0.034', never '±9.5e-07'."""
    largest = float(np.max(np.abs(values))) if values.size else 0.0
    if not np.isfinite(largest) or largest == 0:
        return 2
    return int(min(4, max(0, 2 - np.floor(np.log10(largest)))))


