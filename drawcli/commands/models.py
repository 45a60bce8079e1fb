"""`draw models`: the built-in models (drawcli/runs/builtin.py) with their settings and measured numbers.

Reads the registry only (pure data): it imports no torch and opens no weights file.
"""

from __future__ import annotations

import dataclasses
import json

from drawcli.runs import builtin


def list_models() -> list[dict]:
    """Every registry entry as plain data, written @NAME on the command line. The model's settings
    carry the names `draw runs --json` and the settings files use (glimpses, latent), not the
    model constructor's (steps, embed)."""
    out = []
    for entry in builtin.BUILTINS.values():
        data = dataclasses.asdict(entry)
        data["model"] = {SETTING_NAMES.get(k, k): v for k, v in entry.model.items()}
        out.append({"ref": builtin.PREFIX + entry.name, **data})
    return out


SETTING_NAMES = {"steps": "glimpses", "embed": "latent"}  # DRAW's arguments -> their settings keys


def _model_text(model: dict) -> str:
    parts = [f"T={model.get('glimpses')} glimpses", f"LSTM {model.get('hidden')}", f"z {model.get('latent')}"]
    if model.get("attention", True):
        parts.append(f"read {model.get('read_n')}x{model.get('read_n')}, write {model.get('write_n')}x{model.get('write_n')}")
    else:
        parts.append("no attention")
    return ", ".join(parts)


def _results_lines(results: dict) -> list[str]:
    return [f"{key}: {value:.2f}" if isinstance(value, float) else f"{key}: {value}" for key, value in results.items()]


def models_command(as_json: bool = False, console=None) -> list[dict]:
    """Print the built-in models, a block each (label, then value; long values wrap on a terminal
    and stay whole otherwise, never padded with spaces), or as JSON with ``as_json``; return them."""
    models = list_models()
    if as_json:
        print(json.dumps(models, indent=2))
        return models
    from rich.text import Text

    from drawcli.core.progress import make_console

    console = console or make_console()
    if not models:
        console.print("no built-in models in this version (train one with: draw train)", highlight=False)
        return models
    width = 10
    for m in models:
        console.print(Text.assemble((m["ref"], "bold"), "  " + m["description"]), highlight=False)
        rows = [("data set", m["dataset"]), ("settings", _model_text(m["model"])), ("trained", m["trained"])]
        rows += [("measured" if i == 0 else "", line) for i, line in enumerate(_results_lines(m["results"]) or ["-"])]
        rows.append(("try", f"draw animate {m['ref']} -o {m['name']}.gif"))
        for label, value in rows:  # Text, not markup: nothing in the registry is interpreted
            console.print(Text.assemble(("  " + label.ljust(width), "dim"), str(value)), highlight=False)
        console.print()
    console.print("(nats per image; draw models --json for scripts)", style="dim", highlight=False)
    return models
