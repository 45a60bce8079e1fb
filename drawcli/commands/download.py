"""`draw download NAME` and `draw download --list`: the console around drawcli/data/download.py."""

from __future__ import annotations

from pathlib import Path

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from drawcli.core.errors import DrawError
from drawcli.core.progress import make_console
from drawcli.data import download, transfer, verify
from drawcli.data.catalogue import DATASETS, get_spec
from drawcli.data.loading import resolve_data_dir


def _list(console: Console, root: Path, names: list[str]) -> None:
    table = Table(title=f"Data sets in {escape(str(root))}", title_justify="left")
    table.add_column("name", style="bold")
    table.add_column("download", justify="right")
    table.add_column("unpacked", justify="right")
    table.add_column("status")
    table.add_column("description")
    for name in names:
        spec = DATASETS[name]
        statuses = verify.verify_dataset(spec, root / spec.name)
        missing, bad = verify.problems(spec, statuses)
        if bad:
            status = f"[red]corrupt: {escape(', '.join(bad))}[/red]"
        elif not missing:
            status = "[green]present and verified[/green]"
        elif len(missing) == len(statuses):
            status = "[dim]missing[/dim]"
        else:
            status = f"[yellow]incomplete: missing {escape(', '.join(missing))}[/yellow]"
        fetched = transfer.human_size(spec.download_size)
        fetched = fetched if spec.download_size == spec.size else f"~{fetched}"  # mirrors' gzip levels differ
        table.add_row(escape(name), fetched, transfer.human_size(spec.size), status, escape(spec.description))
    console.print(table)


def download_command(
    name: str | None,
    data_dir: str | None,
    source: str | None = None,
    force: bool = False,
    quiet: bool = False,
    list_only: bool = False,
    console: Console | None = None,
    extra: bool = False,
) -> None:
    """`draw download NAME [--from PATH_OR_URL] [--force] [--quiet] [--data-dir D]` and `draw download --list`.

    ``extra``: also the set's optional files (svhn's extra_32x32.mat, 1.3 GB).
    """
    console = console if console is not None else make_console()
    root = resolve_data_dir(data_dir)
    if list_only:
        _list(console, root, [get_spec(name).name] if name else list(DATASETS))
        return
    if not name:
        raise DrawError(
            f"name the data set to download: one of {', '.join(DATASETS)} "
            f"(`draw download --list` shows what is installed)"
        )
    spec = get_spec(name)
    directory = root / spec.name
    if extra and not spec.extras:
        raise DrawError(f"--extra: data set {spec.name!r} has no optional files "
                        f"(only {', '.join(n for n, d in DATASETS.items() if d.extras) or 'none'} has)")
    if source is not None:
        download.check_source(source)  # a --from that names nothing is an error, installed or not
    if not force and all(s == verify.OK for s in verify.verify_dataset(spec, directory, extra).values()):
        if not quiet:
            console.print(f"{spec.name}: present and verified in {directory}; nothing to download "
                          f"(--force downloads it again)", markup=False, highlight=False, soft_wrap=True)
        return
    count = download.install_dataset(spec, directory, source=source, force=force, console=console, quiet=quiet, extras=extra)
    if not quiet:
        console.print(f"{spec.name}: {count} file(s) installed and verified in {directory}",
                      markup=False, highlight=False, soft_wrap=True)
