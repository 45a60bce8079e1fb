"""`draw models`: the built-in models (drawcli/builtin.py) with their settings and measured numbers.

Reads the registry only (pure data): it imports no torch and opens no weights file.
"""

from __future__ import annotations

import dataclasses
import json

from drawcli import builtin


def list_models() -> list[dict]:
    """Every registry entry as plain data, written @NAME on the command line."""
    return [{"ref": builtin.PREFIX + entry.name, **dataclasses.asdict(entry)} for entry in builtin.BUILTINS.values()]


def _model_text(model: dict) -> str:
    parts = [f"T={model.get('steps')}", f"hidden {model.get('hidden')}", f"z {model.get('embed')}"]
    if model.get("attention", True):
        parts.append(f"read {model.get('read_n')}x{model.get('read_n')}, write {model.get('write_n')}x{model.get('write_n')}")
    else:
        parts.append("no attention")
    return ", ".join(parts)


def _results_text(results: dict) -> str:
    return "; ".join(f"{key} {value:.2f}" if isinstance(value, float) else f"{key} {value}" for key, value in results.items())


def models_command(as_json: bool = False, console=None) -> list[dict]:
    """Print the built-in models as a table, or as JSON with ``as_json``; return them."""
    models = list_models()
    if as_json:
        print(json.dumps(models, indent=2))
        return models
    from rich.table import Table

    from drawcli.progress import make_console

    console = console or make_console()
    if not models:
        console.print("no built-in models in this version (train one with: draw train)", highlight=False)
        return models
    table = Table(title="built-in models (use as: draw sample @NAME)")
    for column in ("model", "data set", "settings", "trained", "measured (nats per image)", "description"):
        table.add_column(column)
    for m in models:
        table.add_row(m["ref"], m["dataset"], _model_text(m["model"]), m["trained"], _results_text(m["results"]) or "-",
                      m["description"])
    console.print(table)
    return models
