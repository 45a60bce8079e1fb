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


def _results_lines(results: dict) -> list[str]:
    return [f"{key}: {value:.2f}" if isinstance(value, float) else f"{key}: {value}" for key, value in results.items()]


def models_command(as_json: bool = False, console=None) -> list[dict]:
    """Print the built-in models, a block each (fits an 80-column terminal), or as JSON with
    ``as_json``; return them."""
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
    for m in models:
        console.print(f"[bold]{m['ref']}[/bold]  {m['description']}", highlight=False)
        table = Table(show_header=False, box=None, padding=(0, 2, 0, 2))
        table.add_column(style="dim", no_wrap=True)
        table.add_column(overflow="fold")
        table.add_row("data set", m["dataset"])
        table.add_row("settings", _model_text(m["model"]))
        table.add_row("trained", m["trained"])
        table.add_row("measured", "\n".join(_results_lines(m["results"])) or "-")
        table.add_row("try", f"draw animate {m['ref']} -o {m['name']}.gif")
        console.print(table)
    console.print("(nats per image; draw models --json for scripts)", style="dim", highlight=False)
    return models
