"""Which models the page offers, and what their cards say. Torch-free.

A client names a model by its id only: ``@NAME`` for a built-in model, the run's name for a run
in the runs directory (or the label of a model given on the command line). The id is looked up
in the list this module builds from the registry and from the names of the runs directory's
folders; nothing a client sends is ever joined to a path.
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

from drawcli.core.errors import DrawError
from drawcli.runs import builtin, names
from drawcli.runs.listing import list_runs, run_info
from drawcli.runs.store import locate


@dataclasses.dataclass(frozen=True)
class Entry:
    """One model of the picker: its id, what drawcli.api.load is given, and its card."""

    id: str
    ref: str  # drawcli.api.load's source: @NAME, a run name (with runs_dir) or a path given on the command line
    card: dict | None = dataclasses.field(default=None, compare=False)  # None: not read (a lookup needs none)


class UnknownModel(DrawError):
    """A model id the catalogue does not hold (HTTP 404)."""


def _number(value):
    return value if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) else None


def _builtin_card(entry: builtin.BuiltinModel) -> dict:
    model = dict(entry.model)
    elbo = next((v for k, v in entry.results.items() if k.startswith("test ELBO (all")), None)
    return {
        "kind": "built-in",
        "description": entry.description,
        "dataset": entry.dataset,
        "settings": {k: model.get(k) for k in _CARD_SETTINGS},
        "shape": [model.get("channels", 1), model.get("height"), model.get("width")],
        "trained": entry.trained,
        "test_elbo": elbo,
        "results": dict(entry.results),
    }


_CARD_SETTINGS = ("glimpses", "hidden", "latent", "attention", "read_n", "write_n")


def _run_card(info: dict) -> dict:
    best = info.get("best_eval") or {}
    iwae = info.get("iwae") or {}
    results = {}
    loss = _number(best.get("loss"))
    if loss is not None:
        results[f"best {best.get('split') or 'eval'} loss during training (epoch {best.get('epoch')})"] = round(loss, 2)
    if _number(iwae.get("iwae")) is not None:
        k = iwae.get("samples")
        what = "ELBO" if k == 1 else f"IWAE bound (K={k})"
        results[f"{iwae.get('split') or 'test'} {what}"] = round(iwae["iwae"], 2)
    test_elbo = loss if best.get("split") == "test" else None
    if _number(iwae.get("iwae")) is not None and iwae.get("samples") == 1 and iwae.get("split", "test") == "test":
        test_elbo = round(iwae["iwae"], 2)
    target = info.get("epochs_target")
    return {
        "kind": "run",
        "description": f"run {info['name']} ({info.get('status')})",
        "dataset": info.get("dataset"),
        "settings": {k: (info.get("model") or {}).get(k) for k in _CARD_SETTINGS},
        "shape": None,  # known once the model is loaded (a folder's pictures set it)
        "trained": f"{info.get('epochs')} epoch{'s' * (info.get('epochs') != 1)}" + (f" of {target}" if target else "")
                   + f", {info.get('steps')} steps",
        "test_elbo": test_elbo,
        "results": results,
    }


def _has_checkpoint(run_dir: Path) -> bool:
    return names.has_checkpoints(run_dir)


class Catalogue:
    """The models a server offers: the ones named on the command line, or else every built-in
    model and every run with a checkpoint in ``runs_dir`` (looked at again on each listing, so a run
    trained while the server runs appears)."""

    def __init__(self, models: list[str] | None, runs_dir: str | Path, device: str = "auto"):
        self.runs_dir = Path(runs_dir)
        self.fixed: dict[str, Entry] | None = None
        if models:
            fixed: dict[str, Entry] = {}
            for ref in models:
                located = locate(ref, None, device, self.runs_dir)  # every mistake answered now, in one line
                if located.builtin is not None:
                    entry = Entry("@" + located.builtin.name, ref, _builtin_card(located.builtin))
                elif located.run_dir is not None and not ref.lower().endswith(".pt"):
                    entry = Entry(located.run_dir.name, str(located.run_dir), _run_card(run_info(located.run_dir)))
                else:
                    kind, what = (("hub", "Hugging Face Hub model") if located.hub is not None else
                                  ("folder", "model folder") if located.folder is not None else ("file", "weights file"))
                    entry = Entry(located.label, ref, {"kind": kind, "description": f"{what} {located.label}",
                                                       "dataset": None, "settings": {}, "shape": None, "trained": None,
                                                       "test_elbo": None, "results": {}})
                if entry.id in fixed:
                    raise DrawError(f"two models are called {entry.id!r}; name each once")
                fixed[entry.id] = entry
            self.fixed = fixed

    def entries(self) -> dict[str, Entry]:
        if self.fixed is not None:
            return dict(self.fixed)
        found = {"@" + e.name: Entry("@" + e.name, "@" + e.name, _builtin_card(e)) for e in builtin.BUILTINS.values()}
        try:
            runs = list_runs(self.runs_dir)
        except DrawError:
            runs = []
        for info in runs:
            run_dir = self.runs_dir / info["name"]
            if _has_checkpoint(run_dir) and (run_dir / names.CONFIG).is_file():
                found[info["name"]] = Entry(info["name"], info["name"], _run_card(info))
        return found

    def get(self, model_id) -> Entry:
        """The entry of a client's model id, or UnknownModel. The id is compared with the built-in
        models' names and the names of the runs directory's folders, never used as a path."""
        if not isinstance(model_id, str) or not model_id:
            raise DrawError("model: expected a model id from /api/models")
        if self.fixed is not None:
            entry = self.fixed.get(model_id)
        elif model_id.startswith(builtin.PREFIX):
            known = {builtin.PREFIX + name for name in builtin.BUILTINS}
            entry = Entry(model_id, model_id) if model_id in known else None
        else:
            entry = None
            try:
                folders = [p for p in self.runs_dir.iterdir() if p.name == model_id]
            except OSError:
                folders = []
            if folders and (folders[0] / names.CONFIG).is_file() and _has_checkpoint(folders[0]):
                entry = Entry(folders[0].name, folders[0].name)
        if entry is None:
            shown = model_id if len(model_id) <= 60 else model_id[:57] + "..."
            raise UnknownModel(f"unknown model {shown!r} (the models are listed by /api/models)")
        return entry

    def checkpoint_identity(self, entry: Entry):
        """What changes when the checkpoint a run's id loads is replaced (a run still training): the
        loaded model is then read again. None for a built-in model."""
        from drawcli.runs.store import file_identity

        if entry.ref.startswith(builtin.PREFIX):
            return None
        try:
            located = locate(entry.ref, None, "cpu", self.runs_dir)
        except DrawError:
            return None
        return None if located.checkpoint is None else (str(located.checkpoint), file_identity(located.checkpoint))

    def listing(self) -> list[dict]:
        return [{"id": e.id, **e.card} for e in self.entries().values()]
