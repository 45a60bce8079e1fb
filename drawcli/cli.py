"""The `draw` command line. Thin: parse, build settings, call one function.

Nothing here imports torch at module level, so `draw --help` stays fast;
each command imports its implementation when it runs.
"""

from __future__ import annotations

import difflib
import functools
import importlib
import sys
from typing import List, Optional

import typer
from typer.core import TyperGroup

from drawcli import __version__
from drawcli.errors import DrawError

# click's exceptions as typer raises them (recent typer versions vendor their own click).
clickx = importlib.import_module(typer.BadParameter.__module__)


def usage_line(e) -> str:
    """Click's usage errors (unknown option, bad value, missing argument) as one line, with a
    suggestion where a name was mistyped: the same shape as every other error."""
    ctx = getattr(e, "ctx", None)
    where = ctx.command_path if ctx is not None else "draw"
    if isinstance(e, clickx.NoSuchOption):
        near = difflib.get_close_matches(e.option_name, e.possibilities or [], n=1, cutoff=0.6)
        hint = f"did you mean {near[0]}?" if near else f"see {where} --help"
        return f"{where}: unknown option {e.option_name} ({hint})"
    text = e.format_message()
    name = getattr(e, "command_name", None)
    if name is None and text.startswith("No such command") and "'" in text:
        name = text.split("'")[1]  # older click: a plain UsageError
    if name is not None:
        commands = list(ctx.command.list_commands(ctx)) if ctx is not None and hasattr(ctx.command, "list_commands") else []
        near = difflib.get_close_matches(name, commands, n=1, cutoff=0.6)
        hint = f"did you mean '{near[0]}'?" if near else f"commands: {', '.join(commands)}"
        return f"unknown command {name!r} ({hint})"
    message = " ".join(text.split())  # one line, whatever click wrapped
    message = message[:1].lower() + message[1:]
    if message.endswith("."):
        message = message[:-1]
    if isinstance(e, clickx.MissingParameter):
        message += f" (see {where} --help)"
    return f"{where}: {message}"


class OneLineErrors(TyperGroup):
    """Usage errors end like all others: one `error:` line on stderr and exit code 2, not a box."""

    def main(self, args=None, prog_name=None, complete_var=None, standalone_mode=True, **extra):
        try:
            code = super().main(args=args, prog_name=prog_name, complete_var=complete_var, standalone_mode=False, **extra)
        except clickx.ClickException as e:
            if type(e).__name__ == "NoArgsIsHelpError":
                code = 2  # `draw` alone: the help was printed
            else:
                typer.echo(f"error: {usage_line(e)}", err=True)
                code = e.exit_code
        except typer.Abort:
            typer.echo("interrupted", err=True)
            code = 130
        code = code if isinstance(code, int) else 0
        if standalone_mode:
            sys.exit(code)
        return code


app = typer.Typer(
    cls=OneLineErrors,
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
            from drawcli.distributed import is_quiet_rank

            if not is_quiet_rank():  # in a torchrun job the same error is shown once, by rank 0
                typer.echo(f"error: {e}", err=True)
            raise typer.Exit(e.exit_code) from None
        except KeyboardInterrupt:
            from drawcli.distributed import is_quiet_rank

            if not is_quiet_rank():
                typer.echo("interrupted", err=True)
            raise typer.Exit(130) from None

    return wrapper


def _version(value: bool):
    if value:
        typer.echo(f"draw (drawcli) {__version__}")
        raise typer.Exit()


def _locate(run: str, load: Optional[str], runs_dir: str, device: str) -> None:
    """Answer a wrong run name, --load or --device before the command imports torch (seconds)."""
    from drawcli.runs import locate

    locate(run, load, device, runs_dir)


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

  draw train --nproc 2 --batch-size 256 --device cpu
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
    eval_samples: Optional[int] = typer.Option(None, "--eval-samples", help="At the end, report the importance-weighted bound with K samples."),
    precision: Optional[str] = typer.Option(None, "--precision", help="float32, bfloat16 or auto: bfloat16 LSTM products where the hardware multiplies them natively (train.precision)."),
    threads: Optional[int] = typer.Option(None, "--threads", help="CPU threads per process (run.threads; default: the cores idle at start)."),
    seed: Optional[int] = typer.Option(None, "--seed", help="Random seed (default 0)."),
    dataset: Optional[str] = typer.Option(None, "--dataset", help="mnist, fashion-mnist or binarized-mnist."),
    data_dir: Optional[str] = typer.Option(None, "--data-dir", help="Data directory (default $DRAW_DATA_DIR or the user cache)."),
    name: Optional[str] = typer.Option(None, "--name", help="Run name under runs/ (default run1, run2, ...)."),
    device: Optional[str] = typer.Option(None, "--device", help="auto, cpu, cuda, cuda:N or mps (default auto)."),
    config: Optional[str] = typer.Option(None, "--config", "-c", help="YAML settings file (e.g. sample_configs/quick.yaml)."),
    set_: Optional[List[str]] = typer.Option(None, "--set", help="Override any setting: section.key=value (repeatable)."),
    resume: Optional[str] = typer.Option(None, "--resume", help="Continue run NAME from its last.pt."),
    nproc: Optional[int] = typer.Option(None, "--nproc", help="Train in N local processes (torchrun + DDP); --batch-size is the global batch."),
    tensorboard: Optional[bool] = typer.Option(
        None, "--tensorboard/--no-tensorboard", help="TensorBoard logs in RUN_DIR/tb (run.tensorboard; default: when installed)."
    ),
    runs_dir: Optional[str] = typer.Option(None, "--runs-dir", help="Where runs are created and looked up (run.runs_dir; default runs)."),
):
    """Train DRAW; writes runs/NAME/ (config.yaml, metrics.jsonl, checkpoints/)."""
    from drawcli.settings import build_settings

    flags = {
        "model": {"steps": steps, "embed": embed, "hidden": hidden, "attention": attention, "read_n": read_n, "write_n": write_n},
        "data": {"dataset": dataset, "data_dir": data_dir},
        "train": {"epochs": epochs, "lr": lr, "batch_size": batch_size, "max_steps": max_steps, "seed": seed,
                  "eval_samples": eval_samples, "precision": precision},
        "run": {"name": name, "device": device, "runs_dir": runs_dir, "threads": threads, "tensorboard": tensorboard},
    }
    from drawcli.train_run import resume_run, run_train

    if nproc is not None and nproc < 1:
        raise DrawError(f"--nproc must be at least 1, got {nproc}")
    if nproc is not None and nproc > 1:
        from pathlib import Path

        from drawcli import runs
        from drawcli.distributed import launch, strip_nproc

        base = build_settings(config, flags, set_)  # refuse bad settings once, before launching
        if base.train.batch_size % nproc:
            raise DrawError(f"--batch-size {base.train.batch_size} (the global batch) must be divisible by --nproc {nproc}")
        if resume is not None:  # the answers one process would give, before N processes start
            runs.check_not_locked(runs.resolve_run(resume, Path(base.run.runs_dir)))
        else:
            runs.check_new_run(Path(base.run.runs_dir), base.run.name)
        launch(nproc, ["train", *strip_nproc(sys.argv[sys.argv.index("train") + 1 :])])
        return
    if resume is not None:
        base = build_settings(config, flags, set_)  # validates flags before touching the run
        resume_run(resume, base.run.runs_dir, config, flags, set_)
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


SAMPLE_EXAMPLES = """
Examples:

  draw sample run1

  draw sample run1 -n 16 --nrow 4 --scale 6 -o digits.png

  draw sample runs/run1 --load 20 --binary --npy --seed 3
"""


@app.command(epilog=SAMPLE_EXAMPLES)
@_user_errors
def sample(
    run: str = typer.Argument(..., help="Run name under the runs directory (e.g. run1) or path to a run directory."),
    n: int = typer.Option(64, "-n", "--number", help="Samples from the prior."),
    nrow: Optional[int] = typer.Option(None, "--nrow", help="Samples per grid row (default: a near-square grid)."),
    scale: Optional[int] = typer.Option(None, "--scale", help="Nearest-neighbour upscaling (default 4: a 28-pixel digit becomes 112 pixels)."),
    binary: bool = typer.Option(False, "--binary", help="Draw Bernoulli pixels instead of the means sigmoid(c_T)."),
    npy: bool = typer.Option(False, "--npy", help="Also save the raw (n, H, W) float32 array next to the PNG."),
    load: Optional[str] = typer.Option(None, "--load", help="Checkpoint: EPOCH, last or best (default best, else last)."),
    seed: int = typer.Option(0, "--seed", help="Random seed; the same seed gives the same picture."),
    device: str = typer.Option("auto", "--device", help="auto, cpu, cuda, cuda:N or mps."),
    output: Optional[str] = typer.Option(None, "-o", "--output", help="PNG file (default RUN_DIR/samples-CKPT-nN-seedS.png)."),
    runs_dir: str = typer.Option("runs", "--runs-dir", help="Where run names are looked up."),
):
    """A PNG grid of samples from the prior: sigmoid(c_T), the final canvas."""
    _locate(run, load, runs_dir, device)
    from drawcli.viz import sample_command

    sample_command(
        run, load=load, n=n, nrow=nrow, scale=scale, binary=binary, npy=npy, seed=seed, device=device, output=output, runs_dir=runs_dir
    )


ANIMATE_EXAMPLES = """
Examples:

  draw animate run1 -o out.gif

  draw animate run1 --boxes -n 16 --fps 12 --hold 3

  draw animate run1 --reconstruct -o recon.gif

  draw animate run1 -o out.mp4    (needs: pip install imageio-ffmpeg)
"""


@app.command(epilog=ANIMATE_EXAMPLES)
@_user_errors
def animate(
    run: str = typer.Argument(..., help="Run name under the runs directory (e.g. run1) or path to a run directory."),
    output: Optional[str] = typer.Option(None, "-o", "--output", help="GIF or MP4 file (default RUN_DIR/animation-CKPT-nN-seedS.gif)."),
    n: int = typer.Option(16, "-n", "--number", help="Samples (or test images with --reconstruct) in the grid."),
    nrow: Optional[int] = typer.Option(None, "--nrow", help="Images per grid row (default: a near-square grid)."),
    scale: Optional[int] = typer.Option(None, "--scale", help="Nearest-neighbour upscaling (default 4 for 28-pixel images)."),
    fps: float = typer.Option(10.0, "--fps", help="Glimpses per second (GIF delays are rounded to 10 ms)."),
    hold: float = typer.Option(2.0, "--hold", help="Seconds the last frame stays before the loop restarts."),
    boxes: bool = typer.Option(False, "--boxes", help="Overlay each sample's write window (red)."),
    reconstruct: bool = typer.Option(False, "--reconstruct", help="Animate reconstructions of test images, with read (green) and write (red) windows."),
    progress: bool = typer.Option(
        True, "--progress/--no-progress", help="Timeline bar under the frames (it also stops the GIF encoder merging glimpses that change nothing)."
    ),
    load: Optional[str] = typer.Option(None, "--load", help="Checkpoint: EPOCH, last or best (default best, else last)."),
    seed: int = typer.Option(0, "--seed", help="Random seed; the same seed gives the same animation."),
    device: str = typer.Option("auto", "--device", help="auto, cpu, cuda, cuda:N or mps."),
    runs_dir: str = typer.Option("runs", "--runs-dir", help="Where run names are looked up."),
    data_dir: Optional[str] = typer.Option(None, "--data-dir", help="Data directory for --reconstruct (default: the run's, else $DRAW_DATA_DIR or the user cache)."),
):
    """Animate the drawing: one frame per glimpse t = 1..T of sigmoid(c_t); loops forever."""
    _locate(run, load, runs_dir, device)
    from drawcli.viz import animate_command

    animate_command(
        run,
        output=output,
        load=load,
        n=n,
        nrow=nrow,
        scale=scale,
        fps=fps,
        hold=hold,
        boxes=boxes,
        reconstruct=reconstruct,
        progress=progress,
        seed=seed,
        device=device,
        runs_dir=runs_dir,
        data_dir=data_dir,
    )


INSPECT_EXAMPLES = """
Examples:

  draw inspect-attention run1

  draw inspect-attention run1 --index 0,5,7 --json attention.json

  draw inspect-attention run1 --generate -n 4 -o prior.gif
"""


@app.command("inspect-attention", epilog=INSPECT_EXAMPLES)
@_user_errors
def inspect_attention(
    run: str = typer.Argument(..., help="Run name under the runs directory (e.g. run1) or path to a run directory."),
    n: Optional[int] = typer.Option(None, "-n", "--number", help="The first N test images (default 8)."),
    index: Optional[str] = typer.Option(None, "--index", help="Test images to inspect, e.g. 0,5,7 or 10-15."),
    generate: bool = typer.Option(False, "--generate", help="Inspect samples from the prior instead (write windows only)."),
    json_path: Optional[str] = typer.Option(None, "--json", help="Write g_x, g_y, delta, sigma2, gamma per image and step to this file."),
    output: Optional[str] = typer.Option(None, "-o", "--output", help="GIF or MP4 file (default RUN_DIR/attention-CKPT-....gif); the PNG strip goes beside it."),
    scale: Optional[int] = typer.Option(None, "--scale", help="Nearest-neighbour upscaling (default 4 for 28-pixel images)."),
    fps: float = typer.Option(10.0, "--fps", help="Glimpses per second."),
    hold: float = typer.Option(2.0, "--hold", help="Seconds the last frame stays before the loop restarts."),
    load: Optional[str] = typer.Option(None, "--load", help="Checkpoint: EPOCH, last or best (default best, else last)."),
    seed: int = typer.Option(0, "--seed", help="Random seed (binarisation and latent noise)."),
    device: str = typer.Option("auto", "--device", help="auto, cpu, cuda, cuda:N or mps."),
    runs_dir: str = typer.Option("runs", "--runs-dir", help="Where run names are looked up."),
    data_dir: Optional[str] = typer.Option(None, "--data-dir", help="Data directory (default: the run's, else $DRAW_DATA_DIR or the user cache)."),
):
    """Show where the model reads (green) and writes (red) at every glimpse: GIF, PNG strip, table or JSON."""
    _locate(run, load, runs_dir, device)
    from drawcli.viz import inspect_attention_command

    inspect_attention_command(
        run,
        load=load,
        n=n,
        index=index,
        generate=generate,
        json_path=json_path,
        output=output,
        scale=scale,
        fps=fps,
        hold=hold,
        seed=seed,
        device=device,
        runs_dir=runs_dir,
        data_dir=data_dir,
    )


EVALUATE_EXAMPLES = """
Examples:

  draw evaluate run1

  draw evaluate run1 --samples 1000 --load best --device cuda

  draw evaluate run1 --split valid --samples 1

  draw evaluate runs/paper --dataset binarized-mnist --limit 1000 --seed 3

  draw evaluate run1 -o results/run1-test.json
"""


@app.command(epilog=EVALUATE_EXAMPLES)
@_user_errors
def evaluate(
    run: str = typer.Argument(..., help="Run name under the runs directory (e.g. run1) or path to a run directory."),
    load: Optional[str] = typer.Option(None, "--load", help="Checkpoint: EPOCH, last or best (default best, else last)."),
    split: str = typer.Option("test", "--split", help="test, valid (binarized-mnist's own, else the last 10k of train) or train."),
    dataset: Optional[str] = typer.Option(None, "--dataset", help="mnist, fashion-mnist or binarized-mnist (default: the run's)."),
    samples: int = typer.Option(100, "--samples", "-k", help="Importance samples K per image (K=1 gives the ELBO)."),
    batch_size: Optional[int] = typer.Option(None, "--batch-size", "-b", help="Image copies per forward pass, K per image (default: from a memory budget)."),
    limit: Optional[int] = typer.Option(None, "--limit", help="Evaluate only the first N images of the split."),
    seed: int = typer.Option(0, "--seed", help="Seed of the fixed binarisation and the posterior samples."),
    device: str = typer.Option("auto", "--device", help="auto, cpu, cuda, cuda:N or mps."),
    runs_dir: str = typer.Option("runs", "--runs-dir", help="Where run names are looked up."),
    data_dir: Optional[str] = typer.Option(None, "--data-dir", help="Data directory (default: the run's, else $DRAW_DATA_DIR or the user cache)."),
    output: Optional[str] = typer.Option(None, "-o", "--output", help="JSON file (default RUN_DIR/eval-SPLIT-kK[-limitN]-CKPT.json)."),
):
    """Bounds on -log p(x) in nats (ELBO = L_x + L_z, importance-weighted with K samples) beside the paper's Table 2; writes RUN_DIR/eval-....json."""
    from drawcli.datasets import EVAL_SPLITS

    if split not in EVAL_SPLITS:
        raise DrawError(f"--split: expected one of {', '.join(EVAL_SPLITS)}, got {split!r}")
    if output is not None and not output.lower().endswith(".json"):
        raise DrawError(f"{output}: the results are written as JSON; use a .json file name")
    _locate(run, load, runs_dir, device)
    from drawcli.evaluate import evaluate_command

    evaluate_command(
        run,
        load=load,
        split=split,
        dataset=dataset,
        samples=samples,
        batch_size=batch_size,
        limit=limit,
        seed=seed,
        device=device,
        runs_dir=runs_dir,
        data_dir=data_dir,
        output=output,
    )


PLOT_EXAMPLES = """
Examples:

  draw plot run1

  draw plot quick paper -o curves.png --paper

  draw plot run1 --parts --x epoch --log

  draw plot runs/a runs/b --ymax 150 --size 1200x700 -o compare.svg
"""


@app.command(epilog=PLOT_EXAMPLES)
@_user_errors
def plot(
    runs: List[str] = typer.Argument(..., help="Run names under the runs directory or run directories; several go in one figure."),
    output: Optional[str] = typer.Option(None, "-o", "--output", help="PNG, SVG or PDF file (default RUN_DIR/curves.png for one run, curves.png for several)."),
    x: str = typer.Option("step", "--x", help="Horizontal axis: step or epoch."),
    parts: bool = typer.Option(False, "--parts", help="Also plot L_x and L_z, each in its own panel."),
    log: bool = typer.Option(False, "--log/--linear", help="Logarithmic or linear loss axis."),
    paper: bool = typer.Option(False, "--paper", help="Horizontal lines at the paper's 80.97 (attention) / 87.40 (no attention) for MNIST runs."),
    ymin: Optional[float] = typer.Option(None, "--ymin", help="Lower limit of the loss axis."),
    ymax: Optional[float] = typer.Option(None, "--ymax", help="Upper limit of the loss axis (hides the first steps' large losses)."),
    size: Optional[str] = typer.Option(None, "--size", help="WIDTHxHEIGHT in pixels (default 1000x600, or 1500x500 with --parts)."),
    runs_dir: str = typer.Option("runs", "--runs-dir", help="Where run names are looked up."),
):
    """Learning curves from metrics.jsonl: train loss per log step, evaluation loss per epoch (needs matplotlib)."""
    from drawcli.plot import plot_command

    plot_command(runs, output, x=x, parts=parts, log=log, paper=paper, ymin=ymin, ymax=ymax, size=size, runs_dir=runs_dir)


RUNS_EXAMPLES = """
Examples:

  draw runs

  draw runs --runs-dir ~/experiments/runs

  draw runs --json
"""


@app.command("runs", epilog=RUNS_EXAMPLES)
@_user_errors
def runs_command(
    runs_dir: str = typer.Option("runs", "--runs-dir", help="The runs folder to list."),
    as_json: bool = typer.Option(False, "--json", help="Print the same data as JSON, for scripts."),
):
    """The runs in a runs folder: data, model, progress, best loss, IWAE, last change and status (finished, interrupted, empty, locked)."""
    from drawcli.runs_list import runs_command as list_command

    list_command(runs_dir, as_json=as_json)


MODELS_EXAMPLES = """
Examples:

  draw models

  draw models --json
"""


@app.command("models", epilog=MODELS_EXAMPLES)
@_user_errors
def models_command(
    as_json: bool = typer.Option(False, "--json", help="Print the same data as JSON, for scripts."),
):
    """The built-in models (use one as @NAME with sample, animate, inspect-attention and evaluate), with their settings and measured numbers."""
    from drawcli.models_list import models_command as list_command

    list_command(as_json=as_json)


def main() -> None:
    app(prog_name="draw")


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
