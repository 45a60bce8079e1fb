"""`draw export`: a run's checkpoint as a weights file, the kind `@NAME` ships (weights, settings, epoch
and step; no optimizer or random state, none of the training machine's folders), written atomically.

The file is used like a checkpoint file by `draw sample`, `draw evaluate`, `drawcli.load` and
`draw train --init-from`; it cannot be resumed.
"""

from __future__ import annotations

from pathlib import Path

from drawcli.core.errors import DrawError
from drawcli.core.progress import make_console
from drawcli.runs import store


def export_command(run: str, load: str | None, output: str, runs_dir: str, force: bool = False) -> Path:
    """Write RUN's checkpoint (--load, default best, else last) to OUTPUT; returns the path."""
    from drawcli.runs import builtin

    out = Path(output).expanduser()
    if not out.name.lower().endswith(".pt"):
        raise DrawError(f"{output}: a weights file is a PyTorch file; use a .pt file name")
    located = store.locate(run, load, "cpu", runs_dir)
    if located.builtin is not None:
        raise DrawError(f"{run} is a weights file already: {builtin.weights_path(located.builtin)}")
    if out.exists() and not force:
        raise DrawError(f"{out} exists; use --force to replace it")
    if not out.parent.is_dir():
        raise DrawError(f"{out.parent}: no such folder")
    located, ckpt, note = store.read_checkpoint(located)
    if note:
        make_console().print(note, highlight=False)
    source = located.checkpoint
    if out.resolve() == Path(source).resolve():
        raise DrawError(f"{out} is the checkpoint being exported; write the weights file elsewhere")
    digest = builtin.export_weights(ckpt, out)
    size = out.stat().st_size
    make_console().print(
        f"wrote {out} ({f'{size / 1e6:.1f} MB' if size >= 100_000 else f'{size / 1e3:.0f} kB'}): {located.label}'s {Path(source).name}, epoch {ckpt['epoch']}, "
        f"step {ckpt['step']}; sha256 {digest}",
        highlight=False,
    )
    return out
