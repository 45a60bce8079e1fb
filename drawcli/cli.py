"""The `draw` command line. Thin: parse, build settings, call one function.

Nothing here imports torch at module level, so `draw --help` stays fast;
each command imports its implementation when it runs.
"""

from __future__ import annotations

import functools
import sys
from typing import List, Optional

import typer

from drawcli import __version__
from drawcli.errors import DrawError

app = typer.Typer(
    name="draw",
    help="DRAW (Gregor et al., ICML 2015): train recurrent attentive image generators, sample, animate and inspect attention.",
    no_args_is_help=True,
    add_completion=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)


def _user_errors(fn):
    """Errors a user can cause end as one line on stderr and exit code 1, never a traceback."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except DrawError as e:
            typer.echo(f"error: {e}", err=True)
            raise typer.Exit(1) from None
        except KeyboardInterrupt:
            typer.echo("interrupted", err=True)
            raise typer.Exit(130) from None

    return wrapper


def _version(value: bool):
    if value:
        typer.echo(f"draw (drawcli) {__version__}")
        raise typer.Exit()


@app.callback()
def main_callback(
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True, help="Show the version and exit."),
):
    """DRAW on PyTorch. Run `draw COMMAND --help` for each command's options and examples."""


TRAIN_EXAMPLES = """
Examples:

  draw train --config sample_configs/quick.yaml --name quick

  draw train --steps 50 --read-n 2 --write-n 5 --lr 1e-3

  draw train --no-attention --steps 64 --set train.grad_clip=10

  draw train --resume quick --epochs 20
"""


@app.command(epilog=TRAIN_EXAMPLES)
@_user_errors
def train(
    steps: Optional[int] = typer.Option(None, "--steps", "--step", "-T", help="Glimpses T (model.steps; default 64)."),
    embed: Optional[int] = typer.Option(None, "--embed", "-z", help="Latent size per step (model.embed; default 100)."),
    hidden: Optional[int] = typer.Option(None, "--hidden", help="LSTM units, encoder and decoder (default 256)."),
    attention: Optional[bool] = typer.Option(None, "--attention/--no-attention", help="Gaussian read/write attention (default on)."),
    read_n: Optional[int] = typer.Option(None, "--read-n", help="Read glimpse side N (default 2)."),
    write_n: Optional[int] = typer.Option(None, "--write-n", help="Write patch side N (default 5)."),
    epochs: Optional[int] = typer.Option(None, "--epochs", "--epoch", help="Training epochs (default 100)."),
    lr: Optional[float] = typer.Option(None, "--lr", help="Adam learning rate (default 1e-3)."),
    batch_size: Optional[int] = typer.Option(None, "--batch-size", "-b", help="Batch size (default 128)."),
    max_steps: Optional[int] = typer.Option(None, "--max-steps", help="Stop at this global step, then evaluate and checkpoint."),
    seed: Optional[int] = typer.Option(None, "--seed", help="Random seed (default 0)."),
    dataset: Optional[str] = typer.Option(None, "--dataset", help="mnist, fashion-mnist or binarized-mnist."),
    data_dir: Optional[str] = typer.Option(None, "--data-dir", help="Data directory (default $DRAW_DATA_DIR or the user cache)."),
    name: Optional[str] = typer.Option(None, "--name", help="Run name under runs/ (default run1, run2, ...)."),
    device: Optional[str] = typer.Option(None, "--device", help="auto, cpu, cuda, cuda:N or mps (default auto)."),
    config: Optional[str] = typer.Option(None, "--config", "-c", help="YAML settings file (e.g. sample_configs/quick.yaml)."),
    set_: Optional[List[str]] = typer.Option(None, "--set", help="Override any setting: section.key=value (repeatable)."),
    resume: Optional[str] = typer.Option(None, "--resume", help="Continue run NAME from its last.pt."),
):
    """Train DRAW; writes runs/NAME/ (config.yaml, metrics.jsonl, checkpoints/)."""
    from drawcli.settings import build_settings

    flags = {
        "model": {"steps": steps, "embed": embed, "hidden": hidden, "attention": attention, "read_n": read_n, "write_n": write_n},
        "data": {"dataset": dataset, "data_dir": data_dir},
        "train": {"epochs": epochs, "lr": lr, "batch_size": batch_size, "max_steps": max_steps, "seed": seed},
        "run": {"name": name, "device": device},
    }
    from drawcli.train_run import run_train, settings_for_resume

    if resume is not None:
        base = build_settings(config, flags, set_)  # validates flags before touching the run
        settings, run_dir, ckpt = settings_for_resume(resume, base.run.runs_dir, config, flags, set_)
        run_train(settings, resume=(run_dir, ckpt))
    else:
        run_train(build_settings(config, flags, set_))


DOWNLOAD_EXAMPLES = """
Examples:

  draw download mnist

  draw download --list

  draw download fashion-mnist --data-dir ~/data

  draw download mnist --from /media/usb/mnist

  draw download mnist --force
"""


@app.command(epilog=DOWNLOAD_EXAMPLES)
@_user_errors
def download(
    name: Optional[str] = typer.Argument(None, help="mnist, fashion-mnist or binarized-mnist."),
    list_only: bool = typer.Option(False, "--list", help="Show every data set and whether it is present and verified."),
    source: Optional[str] = typer.Option(None, "--from", help="Install from a local folder or base URL holding the same files."),
    force: bool = typer.Option(False, "--force", help="Download again even if present and verified."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="Print nothing but errors."),
    data_dir: Optional[str] = typer.Option(None, "--data-dir", help="Data directory (default $DRAW_DATA_DIR or the user cache)."),
    config: Optional[str] = typer.Option(None, "--config", "-c", help="YAML settings file (its data.data_dir is used)."),
):
    """Download a data set from verified mirrors (sha256-checked) into the data directory."""
    from drawcli.settings import build_settings

    settings = build_settings(config, {"data": {"data_dir": data_dir}})
    from drawcli.download import download_command

    download_command(name, settings.data.data_dir, source=source, force=force, quiet=quiet, list_only=list_only)


def main() -> None:
    app(prog_name="draw")


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
