"""`draw export`: a run's checkpoint as a model folder or a weights file, written atomically.

The output's name decides which:

- ``NAME.pt``: a weights file (weights, settings, epoch and step in a PyTorch zip, loaded weights-only);
- ``DIR/`` (a trailing slash), an existing folder, or a name without a dot: a model folder
  (drawcli/runs/folder.py: config.json, model.safetensors and a README.md card, the kind @NAME ships);
- anything else (``x.txt``, ``model.v2``) is refused: write ``model.v2/`` for a folder.

Neither holds optimizer or random state or the training machine's folders. Both are used like a
checkpoint file by `draw sample`, `draw evaluate`, `drawcli.load` and `draw train --init-from`; neither
can be resumed. The card gives the test ELBO and IWAE bound with the `draw evaluate` commands that
measured them, from the run's eval-*.json files for the exported checkpoint ("not measured" where
there are none), and the test loss its training logged at that step (metrics.jsonl).
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

from drawcli.core.errors import DrawError
from drawcli.core.progress import make_console
from drawcli.runs import names, store
from drawcli.runs.metrics import read_metrics

EVAL_FORMAT = "drawcli-eval"  # drawcli/evaluation/evaluate.py's


def output_kind(output: str) -> str:
    """'file' (NAME.pt) or 'folder' (DIR/, an existing folder, a name without a dot); one line otherwise."""
    out = Path(output).expanduser()
    if output.endswith(("/", os.sep)) or out.is_dir():
        return "folder"
    if out.name.lower().endswith(".pt"):
        return "file"
    if "." not in out.name:
        return "folder"
    raise DrawError(f"{output}: give NAME.pt for a weights file, or DIR/ for a model folder (config.json, model.safetensors, README.md)")


def _size(n: int) -> str:
    return f"{n / 1e6:.1f} MB" if n >= 100_000 else f"{n / 1e3:.0f} kB"


def export_command(run: str, load: str | None, output: str, runs_dir: str, force: bool = False) -> Path:
    """Write RUN's checkpoint (--load, default best, else last) to OUTPUT; returns the path."""
    from drawcli.runs import builtin

    kind = output_kind(output)
    out = Path(output).expanduser()
    located = store.locate(run, load, "cpu", runs_dir)
    if located.builtin is not None:
        raise DrawError(f"{run} is a model folder already: {builtin.folder_path(located.builtin)}")
    if located.folder is not None or located.hub is not None:
        raise DrawError(f"{run} is a model folder already")
    if kind == "file" and out.exists() and not force:
        raise DrawError(f"{out} exists; use --force to replace it")
    if not out.parent.is_dir():
        raise DrawError(f"{out.parent}: no such folder")
    located, ckpt, note = store.read_checkpoint(located)
    if note:
        make_console().print(note, highlight=False)
    source = Path(located.checkpoint)
    what = f"{located.label}'s {source.name}, epoch {ckpt['epoch']}, step {ckpt['step']}"
    if kind == "file":
        if out.resolve() == source.resolve():
            raise DrawError(f"{out} is the checkpoint being exported; write the weights file elsewhere")
        digest = builtin.export_weights(ckpt, out)
        make_console().print(f"wrote {out} ({_size(out.stat().st_size)}): {what}; sha256 {digest}", highlight=False)
        return out
    from drawcli.runs.folder import WEIGHTS, one_cycle
    from drawcli.runs.pretrained import save_folder

    run_name = located.run_dir.name if located.run_dir is not None else source.stem
    training = one_cycle(run_name, ckpt["epoch"], ckpt["step"], ckpt["settings"].get("train", {}).get("init_from"))
    results = measured(located.run_dir, run_name, ckpt) if located.run_dir is not None else []
    digest = save_folder(out, ckpt["model_config"], ckpt["model"], settings=ckpt["settings"], training=training,
                         results=results, force=force)
    make_console().print(
        f"wrote the model folder {out} (config.json, {WEIGHTS} {_size((out / WEIGHTS).stat().st_size)}, README.md): {what}; "
        f"{WEIGHTS} sha256 {digest}", highlight=False)
    return out


# ----------------------------------------------------------------------------- the card's numbers
def _load_option(checkpoint: str | None) -> str:
    stem = Path(checkpoint).stem if checkpoint else ""
    found = re.fullmatch(r"epoch_(\d+)", stem)
    if found:
        return f" --load {int(found.group(1))}"
    return f" --load {stem}" if stem in ("best", "last") else ""


def _command(run: str, result: dict) -> str:
    command = f"draw evaluate {run}{_load_option(result.get('checkpoint'))} --samples {result['samples']}"
    if result.get("limit") is not None:
        command += f" --limit {result['limit']}"
    if result.get("seed"):
        command += f" --seed {result['seed']}"
    return command


def _row(what: str, result: dict, key: str, run: str, samples: int) -> dict:
    part = f" (first {result['images']})" if result.get("limit") is not None else ""
    return {"what": what + part, "nats": float(result[key]), "stderr": result.get(f"{key}_stderr"), "images": result["images"],
            "samples": samples, "command": _command(run, result)}


def measured(run_dir: Path, run: str, ckpt: dict) -> list[dict]:
    """The test ELBO and IWAE bound of the checkpoint's weights from the run's eval-*.json files (the
    whole test set preferred, then the most images; for the IWAE bound the largest K), and the test
    loss its training logged at that step. [] when nothing was measured."""
    dataset = ckpt["settings"].get("data", {}).get("dataset")
    found = []
    for path in sorted(Path(run_dir).glob(names.EVAL_GLOB)):
        try:
            result = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        if (isinstance(result, dict) and result.get("format") == EVAL_FORMAT and result.get("split") == "test"
                and result.get("dataset") == dataset and (result.get("epoch"), result.get("step")) == (ckpt["epoch"], ckpt["step"])
                and isinstance(result.get("elbo"), (int, float)) and isinstance(result.get("images"), int)):
            found.append(result)
    rows = []
    if found:
        elbo = max(found, key=lambda r: (r["images"], -r["samples"]))
        rows.append(_row("ELBO", elbo, "elbo", run, 1))
        iwae = [r for r in found if r["samples"] > 1]
        if iwae:
            best = max(iwae, key=lambda r: (r["limit"] is None, r["samples"], r["images"]))
            rows.append(_row("IWAE bound", best, "iwae", run, best["samples"]))
    logged = [r for r in read_metrics(Path(run_dir) / names.METRICS)
              if r.get("kind") == "eval" and r.get("split") == "test" and r.get("step") == ckpt["step"]
              and isinstance(r.get("loss"), (int, float))]
    if logged:
        rows.append({"what": "test loss during training", "nats": float(logged[-1]["loss"]), "stderr": None, "images": "all",
                     "samples": 1, "command": f"draw train (metrics.jsonl, epoch {ckpt['epoch']})"})
    return rows
