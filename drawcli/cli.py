"""The `draw` command line. Thin: parse, build the command's options, call one function.

Nothing here imports torch at module level, so `draw --help` stays fast;
each command imports its implementation when it runs, and that checks its options before
torch. Options shared by several commands are declared once, as ``Annotated`` aliases; the
commands that load a model take one frozen options object (drawcli/commands/options.py), whose
fields are the defaults here; help texts that name a default take it from the settings dataclasses.
"""

import difflib
import functools
import importlib
import sys
from typing import Annotated, List, Optional

import typer
from typer.core import TyperGroup

from drawcli.commands.options import INSPECTED, AnimateOptions, EvaluateOptions, InspectOptions, SampleOptions
from drawcli.core.errors import DrawError
from drawcli.core.version import __version__
from drawcli.pictures.plot import SIZE, SIZE_PARTS, PlotOptions
from drawcli.settings import SYNONYMS, DataSettings, ModelSettings, RunSettings, TrainSettings

# click's exceptions as typer raises them (recent typer versions vendor their own click).
clickx = importlib.import_module(typer.BadParameter.__module__)


def usage_line(e) -> str:
    """Click's usage errors (unknown option, bad value, missing argument) as one line, with a
    suggestion where a name was mistyped: the same shape as every other error."""
    ctx = getattr(e, "ctx", None)
    where = ctx.command_path if ctx is not None else "draw"
    if isinstance(e, clickx.NoSuchOption):
        near = difflib.get_close_matches(e.option_name, e.possibilities or [], n=1, cutoff=0.6)
        meant = SYNONYMS.get(e.option_name.lstrip("-").replace("-", "_"), "").split(" ")[0]  # --learning-rate: --lr
        flag = f"--{meant.split('.')[1].replace('_', '-')}" if meant else None
        params = ctx.command.params if ctx is not None else []
        if flag and any(flag in [*getattr(p, "opts", []), *getattr(p, "secondary_opts", [])] for p in params):
            near = [flag]
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
            from drawcli.training.distributed import env_from_os, is_quiet_rank

            if not is_quiet_rank():  # in a torchrun job the same error is shown once, by rank 0
                typer.echo(f"error: {e}" if e.is_error else str(e), err=True)
            elif e.every_rank:  # ... unless only this rank met it
                typer.echo(f"error: rank {env_from_os().rank}: {e}", err=True)
            raise typer.Exit(e.exit_code) from None
        except KeyboardInterrupt:
            from drawcli.training.distributed import is_quiet_rank

            if not is_quiet_rank():
                typer.echo("interrupted", err=True)
            raise typer.Exit(130) from None

    return wrapper


def _version(value: bool):
    if value:
        typer.echo(f"draw (drawcli) {__version__}")
        raise typer.Exit()


# ----------------------------------------------------------------------------- shared options
RunArg = Annotated[str, typer.Argument(
    help="A built-in model @NAME (see draw models), a run name under the runs directory, a run directory, a checkpoint file (runs/NAME/checkpoints/epoch_002.pt), a model folder (draw export) or hf:OWNER/NAME.")]
LoadOpt = Annotated[Optional[str], typer.Option("--load", help="Checkpoint: EPOCH, last or best (default best, else last).")]
SeedOpt = Annotated[int, typer.Option("--seed", help="Random seed; the same seed gives the same output.")]
DeviceOpt = Annotated[str, typer.Option("--device", help="auto, cpu, cuda, cuda:N or mps.")]
RunsDirOpt = Annotated[str, typer.Option("--runs-dir", envvar="DRAW_RUNS_DIR", help="Where run names are looked up ($DRAW_RUNS_DIR when set).")]
DataDirOpt = Annotated[Optional[str], typer.Option(
    "--data-dir", help="Data directory (default: the run's, else $DRAW_DATA_DIR or the user cache).")]
PrecisionOpt = Annotated[str, typer.Option(
    "--precision", help="float32, bfloat16 or auto: run the model with bfloat16 products (auto: where the hardware has them).")]
EngineOpt = Annotated[str, typer.Option(
    "--engine", help="auto, native, python or reference: which implementation runs the model (the same numbers; auto: the fastest that can).")]
FpsOpt = Annotated[float, typer.Option("--fps", help="Glimpses per second (GIF delays are rounded to 10 ms).")]
HoldOpt = Annotated[float, typer.Option("--hold", help="Seconds the last frame stays before the loop restarts.")]
ScaleOpt = Annotated[Optional[int], typer.Option("--scale", help="Nearest-neighbour upscaling (default 4 for 28-pixel images).")]
DEFAULT_DEVICE = RunSettings.device
DEFAULT_RUNS_DIR = RunSettings.runs_dir
DEFAULT_ENGINE = RunSettings.engine


@app.callback()
def main_callback(
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True, help="Show the version and exit."),
):
    """DRAW on PyTorch. Run `draw COMMAND --help` for each command's options and examples."""


TRAIN_EXAMPLES = """
Examples (in a clone of the repository; data sets download on first use):

  draw train --config sample_configs/quick.yaml --name quick    (minutes)

  draw train --glimpses 16 --latent 20 --max-steps 300 --name try

  draw train --no-attention --glimpses 10 --max-steps 300 --name noatt

  draw train --resume quick --epochs 8

  draw train --nproc 2 --batch-size 128 --max-steps 100 --name two

  draw train --dataset folder:~/pictures --image-size 32 --name mine
"""


# --steps is the original project's name for T; a newcomer reads it as training steps.
STEPS_WARNING = ("warning: --steps sets glimpses T, the drawing steps per image (now --glimpses); "
                 "optimizer steps are --max-steps")


@app.command(epilog=TRAIN_EXAMPLES)
@_user_errors
def train(
    glimpses: Annotated[Optional[int], typer.Option("--glimpses", "-T", help=f"Glimpses T: drawing steps per image, not optimizer steps (model.glimpses; default {ModelSettings.glimpses}; old name --steps).")] = None,
    glimpses_alias: Annotated[Optional[int], typer.Option("--steps", "--step", hidden=True, help="Old name of --glimpses.")] = None,
    latent: Annotated[Optional[int], typer.Option("--latent", "-z", "--embed", help=f"Size of each latent z_t (model.latent; default {ModelSettings.latent}).")] = None,
    hidden: Annotated[Optional[int], typer.Option("--hidden", help=f"LSTM units, encoder and decoder (default {ModelSettings.hidden}).")] = None,
    attention: Annotated[Optional[bool], typer.Option("--attention/--no-attention", help=f"Gaussian read/write attention (default {'on' if ModelSettings.attention else 'off'}).")] = None,
    read_n: Annotated[Optional[int], typer.Option("--read-n", help=f"Read glimpse side N (default {ModelSettings.read_n}).")] = None,
    write_n: Annotated[Optional[int], typer.Option("--write-n", help=f"Write patch side N (default {ModelSettings.write_n}).")] = None,
    epochs: Annotated[Optional[int], typer.Option("--epochs", "--epoch", help=f"Training epochs (default {TrainSettings.epochs}).")] = None,
    lr: Annotated[Optional[float], typer.Option("--lr", help=f"Adam learning rate (default {TrainSettings.lr:g}).")] = None,
    batch_size: Annotated[Optional[int], typer.Option("--batch-size", "-b", help=f"Batch size (default {TrainSettings.batch_size}).")] = None,
    max_steps: Annotated[Optional[int], typer.Option("--max-steps", help="Stop at this global step, then evaluate and checkpoint.")] = None,
    eval_samples: Annotated[Optional[int], typer.Option("--eval-samples", help="At the end, report the importance-weighted bound with K samples.")] = None,
    precision: Annotated[Optional[str], typer.Option("--precision", help=f"float32, bfloat16 or auto: bfloat16 LSTM products where the hardware multiplies them natively (train.precision; default {TrainSettings.precision}).")] = None,
    threads: Annotated[Optional[int], typer.Option("--threads", help="CPU threads per process (run.threads; default: the cores idle at start).")] = None,
    engine: Annotated[Optional[str], typer.Option("--engine", help=f"auto, native, python or reference: which implementation runs the model, the same numbers (run.engine; default {RunSettings.engine}: the native C++ loop where it can run).")] = None,
    seed: Annotated[Optional[int], typer.Option("--seed", help=f"Random seed (default {TrainSettings.seed}).")] = None,
    dataset: Annotated[Optional[str], typer.Option("--dataset", help=f"Data set (default {DataSettings.dataset}; see draw download --list).")] = None,
    data_dir: Annotated[Optional[str], typer.Option("--data-dir", help="Data directory (default $DRAW_DATA_DIR or the user cache).")] = None,
    image_size: Annotated[Optional[int], typer.Option("--image-size", help="folder:PATH data sets: resize every picture to S x S (data.image_size; default: all must have the first one's size).")] = None,
    name: Annotated[Optional[str], typer.Option("--name", help="Run name under runs/ (default run1, run2, ...).")] = None,
    device: Annotated[Optional[str], typer.Option("--device", help=f"auto, cpu, cuda, cuda:N or mps (default {RunSettings.device}).")] = None,
    config: Annotated[Optional[str], typer.Option("--config", "-c", help="YAML settings file (e.g. sample_configs/quick.yaml).")] = None,
    set_: Annotated[Optional[List[str]], typer.Option("--set", help="Override any setting: section.key=value (repeatable).")] = None,
    init_from: Annotated[Optional[str], typer.Option("--init-from", help="Start a new run from these weights: a run, a checkpoint file, a model folder, hf:OWNER/NAME or @NAME, taking its model settings (train.init_from); the optimizer and learning-rate schedule start fresh.")] = None,
    resume: Annotated[Optional[str], typer.Option("--resume", help="Continue run NAME from its last.pt (when that is unreadable, from the readable checkpoint with the most steps), or from a checkpoint file: runs/NAME/checkpoints/epoch_002.pt.")] = None,
    nproc: Annotated[Optional[int], typer.Option("--nproc", help="Train in N local processes (torchrun + DDP); --batch-size is the global batch.")] = None,
    tensorboard: Annotated[Optional[bool], typer.Option(
        "--tensorboard/--no-tensorboard", help="TensorBoard logs in RUN_DIR/tb (run.tensorboard; default: when installed).")] = None,
    runs_dir: Annotated[Optional[str], typer.Option("--runs-dir", help=f"Where runs are created and looked up (run.runs_dir; default $DRAW_RUNS_DIR, else {RunSettings.runs_dir}).")] = None,
):
    """Train DRAW; writes runs/NAME/ (config.yaml, metrics.jsonl, checkpoints/)."""
    notes = []
    if glimpses_alias is not None:
        if glimpses is not None and glimpses != glimpses_alias:
            raise DrawError(f"--steps (the old name of --glimpses) {glimpses_alias} and --glimpses {glimpses} disagree; give one of them")
        glimpses = glimpses_alias
        notes.append(STEPS_WARNING)
    flags = {
        "model": {"glimpses": glimpses, "latent": latent, "hidden": hidden, "attention": attention, "read_n": read_n, "write_n": write_n},
        "data": {"dataset": dataset, "data_dir": data_dir, "image_size": image_size},
        "train": {"epochs": epochs, "lr": lr, "batch_size": batch_size, "max_steps": max_steps, "seed": seed,
                  "eval_samples": eval_samples, "precision": precision, "init_from": init_from},
        "run": {"name": name, "device": device, "runs_dir": runs_dir, "threads": threads, "tensorboard": tensorboard,
                "engine": engine},
    }
    from drawcli.commands.train import train_command

    train_command(config, flags, set_, resume=resume, nproc=nproc, argv=sys.argv, notes=notes)


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
    name: Annotated[Optional[str], typer.Argument(help="A data set: see draw download --list (mnist, fashion-mnist, binarized-mnist, two-digit-mnist, svhn, cifar10).")] = None,
    list_only: Annotated[bool, typer.Option("--list", help="Show every data set and whether it is present and verified.")] = False,
    source: Annotated[Optional[str], typer.Option("--from", help="Install from a local folder or base URL holding the same files.")] = None,
    force: Annotated[bool, typer.Option("--force", help="Download again even if present and verified.")] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="Print nothing but errors.")] = False,
    data_dir: Annotated[Optional[str], typer.Option("--data-dir", help="Data directory (default $DRAW_DATA_DIR or the user cache).")] = None,
    config: Annotated[Optional[str], typer.Option("--config", "-c", help="YAML settings file (its data.data_dir is used).")] = None,
    extra: Annotated[bool, typer.Option("--extra", help="Also the set's optional files (svhn: extra_32x32.mat, 1.3 GB).")] = False,
):
    """Download a data set from verified mirrors (sha256-checked) into the data directory."""
    from drawcli.settings import build_settings

    settings = build_settings(config, {"data": {"data_dir": data_dir}})
    from drawcli.commands.download import download_command

    download_command(name, settings.data.data_dir, source=source, force=force, quiet=quiet, list_only=list_only, extra=extra)


SAMPLE_EXAMPLES = """
Examples (@mnist ships with drawcli; a run you trained works the same):

  draw sample @mnist

  draw sample @mnist -n 16 --nrow 4 --scale 6 -o digits.png

  draw sample @mnist --binary --npy --seed 3
"""


@app.command(epilog=SAMPLE_EXAMPLES)
@_user_errors
def sample(
    run: RunArg,
    n: Annotated[int, typer.Option("-n", "--number", help="Samples from the prior.")] = SampleOptions.n,
    nrow: Annotated[Optional[int], typer.Option("--nrow", help="Samples per grid row (default: a near-square grid).")] = SampleOptions.nrow,
    scale: Annotated[Optional[int], typer.Option("--scale", help="Nearest-neighbour upscaling (default 4: a 28-pixel digit becomes 112 pixels).")] = SampleOptions.scale,
    binary: Annotated[bool, typer.Option("--binary", help="Draw Bernoulli pixels instead of the means sigmoid(c_T).")] = SampleOptions.binary,
    npy: Annotated[bool, typer.Option("--npy", help="Also save the raw (n, H, W) float32 array next to the PNG.")] = SampleOptions.npy,
    load: LoadOpt = SampleOptions.load,
    seed: SeedOpt = SampleOptions.seed,
    device: DeviceOpt = SampleOptions.device,
    precision: PrecisionOpt = SampleOptions.precision,
    engine: EngineOpt = SampleOptions.engine,
    output: Annotated[Optional[str], typer.Option("-o", "--output", help="PNG file (default RUN_DIR/samples-CKPT-nN-seedS.png; NAME-samples-nN-seedS.png here for @NAME).")] = SampleOptions.output,
    runs_dir: RunsDirOpt = SampleOptions.runs_dir,
):
    """A PNG grid of samples from the prior: sigmoid(c_T), the final canvas."""
    from drawcli.commands.pictures import sample_command

    sample_command(SampleOptions(
        run, load=load, seed=seed, device=device, precision=precision, engine=engine, runs_dir=runs_dir, output=output,
        n=n, nrow=nrow, scale=scale, binary=binary, npy=npy,
    ))


ANIMATE_EXAMPLES = """
Examples (@mnist ships with drawcli; a run you trained works the same):

  draw animate @mnist -o out.gif

  draw animate @mnist --boxes -n 16 --fps 12 --hold 3 -o boxes.gif

  draw animate @mnist --reconstruct -o recon.gif   (needs MNIST's test set)

  draw animate @mnist -o out.mp4      (needs: pip install imageio-ffmpeg)
"""


@app.command(epilog=ANIMATE_EXAMPLES)
@_user_errors
def animate(
    run: RunArg,
    output: Annotated[Optional[str], typer.Option("-o", "--output", help="GIF or MP4 file (default RUN_DIR/animation-CKPT-nN-seedS.gif).")] = AnimateOptions.output,
    n: Annotated[int, typer.Option("-n", "--number", help="Samples (or test images with --reconstruct) in the grid.")] = AnimateOptions.n,
    nrow: Annotated[Optional[int], typer.Option("--nrow", help="Images per grid row (default: a near-square grid).")] = AnimateOptions.nrow,
    scale: ScaleOpt = AnimateOptions.scale,
    fps: FpsOpt = AnimateOptions.fps,
    hold: HoldOpt = AnimateOptions.hold,
    boxes: Annotated[bool, typer.Option("--boxes", help="Overlay each sample's write window (red).")] = AnimateOptions.boxes,
    reconstruct: Annotated[bool, typer.Option("--reconstruct", help="Animate reconstructions of test images, with read (green) and write (red) windows.")] = AnimateOptions.reconstruct,
    progress: Annotated[bool, typer.Option(
        "--progress/--no-progress", help="Timeline bar under the frames (it also stops the GIF encoder merging glimpses that change nothing).")] = AnimateOptions.progress,
    load: LoadOpt = AnimateOptions.load,
    seed: SeedOpt = AnimateOptions.seed,
    device: DeviceOpt = AnimateOptions.device,
    precision: PrecisionOpt = AnimateOptions.precision,
    engine: EngineOpt = AnimateOptions.engine,
    runs_dir: RunsDirOpt = AnimateOptions.runs_dir,
    data_dir: DataDirOpt = AnimateOptions.data_dir,
):
    """Animate the drawing: one frame per glimpse t = 1..T of sigmoid(c_t); loops forever."""
    from drawcli.commands.pictures import animate_command

    animate_command(AnimateOptions(
        run, load=load, seed=seed, device=device, precision=precision, engine=engine, runs_dir=runs_dir, output=output,
        n=n, nrow=nrow, scale=scale, fps=fps, hold=hold, boxes=boxes, reconstruct=reconstruct, progress=progress,
        data_dir=data_dir,
    ))


INSPECT_EXAMPLES = """
Examples (@mnist ships with drawcli; test images need: draw download mnist):

  draw inspect-attention @mnist -n 4

  draw inspect-attention @mnist --index 0,5,7 --json attention.json

  draw inspect-attention @mnist --generate -n 4 -o prior.gif
"""


@app.command("inspect-attention", epilog=INSPECT_EXAMPLES)
@_user_errors
def inspect_attention(
    run: RunArg,
    n: Annotated[Optional[int], typer.Option("-n", "--number", help=f"The first N test images (default {INSPECTED}).")] = InspectOptions.n,
    index: Annotated[Optional[str], typer.Option("--index", help="Test images to inspect, e.g. 0,5,7 or 10-15.")] = InspectOptions.index,
    generate: Annotated[bool, typer.Option("--generate", help="Inspect samples from the prior instead (write windows only).")] = InspectOptions.generate,
    json_path: Annotated[Optional[str], typer.Option("--json", help="Write g_x, g_y, delta, sigma2, gamma per image and step to this file.")] = InspectOptions.json_path,
    output: Annotated[Optional[str], typer.Option("-o", "--output", help="GIF or MP4 file (default RUN_DIR/attention-CKPT-....gif); the PNG strip goes beside it.")] = InspectOptions.output,
    scale: ScaleOpt = InspectOptions.scale,
    fps: FpsOpt = InspectOptions.fps,
    hold: HoldOpt = InspectOptions.hold,
    load: LoadOpt = InspectOptions.load,
    seed: SeedOpt = InspectOptions.seed,
    device: DeviceOpt = InspectOptions.device,
    precision: PrecisionOpt = InspectOptions.precision,
    engine: EngineOpt = InspectOptions.engine,
    runs_dir: RunsDirOpt = InspectOptions.runs_dir,
    data_dir: DataDirOpt = InspectOptions.data_dir,
):
    """Show where the model reads (green) and writes (red) at every glimpse: GIF, PNG strip, table or JSON."""
    from drawcli.commands.pictures import inspect_attention_command

    inspect_attention_command(InspectOptions(
        run, load=load, seed=seed, device=device, precision=precision, engine=engine, runs_dir=runs_dir, output=output,
        n=n, index=index, generate=generate, json_path=json_path, scale=scale, fps=fps, hold=hold, data_dir=data_dir,
    ))


EVALUATE_EXAMPLES = """
Examples (@mnist ships with drawcli; MNIST's test set downloads on first use):

  draw evaluate @mnist --samples 1 --limit 100      (an ELBO, in seconds)

  draw evaluate @mnist --limit 100      (the IWAE bound, K = 100: ~30 s)

  draw evaluate @mnist -k 1 --limit 100 --seed 3 -o results/mnist.json

  draw evaluate quick --load 2 -k 1000 --device cuda      (your run, all 10k)
"""


@app.command(epilog=EVALUATE_EXAMPLES)
@_user_errors
def evaluate(
    run: RunArg,
    load: LoadOpt = EvaluateOptions.load,
    split: Annotated[str, typer.Option("--split", help="test, valid (binarized-mnist's own, else the last 10k of train) or train.")] = EvaluateOptions.split,
    dataset: Annotated[Optional[str], typer.Option("--dataset", help="Data set to evaluate on (default: the run's).")] = EvaluateOptions.dataset,
    samples: Annotated[int, typer.Option("--samples", "-k", help="Importance samples K per image (K=1 gives the ELBO).")] = EvaluateOptions.samples,
    batch_size: Annotated[Optional[int], typer.Option("--batch-size", "-b", help="Image copies per forward pass, K per image (default: from a memory budget).")] = EvaluateOptions.batch_size,
    limit: Annotated[Optional[int], typer.Option("--limit", help="Evaluate only the first N images of the split.")] = EvaluateOptions.limit,
    seed: Annotated[int, typer.Option("--seed", help="Seed of the fixed binarisation and the posterior samples.")] = EvaluateOptions.seed,
    device: DeviceOpt = EvaluateOptions.device,
    precision: PrecisionOpt = EvaluateOptions.precision,
    engine: EngineOpt = EvaluateOptions.engine,
    runs_dir: RunsDirOpt = EvaluateOptions.runs_dir,
    data_dir: DataDirOpt = EvaluateOptions.data_dir,
    output: Annotated[Optional[str], typer.Option("-o", "--output", help="JSON file (default RUN_DIR/eval-SPLIT-kK[-limitN]-CKPT.json; NAME-eval-....json here for @NAME).")] = EvaluateOptions.output,
):
    """Bounds on -log p(x) in nats (ELBO = L_x + L_z, importance-weighted with K samples) beside the paper's Table 2; writes RUN_DIR/eval-....json."""
    from drawcli.commands.evaluate import evaluate_command

    evaluate_command(EvaluateOptions(
        run, load=load, seed=seed, device=device, precision=precision, engine=engine, runs_dir=runs_dir, output=output,
        split=split, dataset=dataset, samples=samples, batch_size=batch_size, limit=limit, data_dir=data_dir,
    ))


PLOT_EXAMPLES = """
Examples (runs you trained, e.g. quick: see draw train --help):

  draw plot quick

  draw plot quick --parts --x epoch --log

  draw plot quick other -o curves.png --paper

  draw plot runs/quick --ymax 150 --size 1200x700 -o compare.svg
"""


@app.command(epilog=PLOT_EXAMPLES)
@_user_errors
def plot(
    runs: Annotated[List[str], typer.Argument(help="Run names under the runs directory, run directories or checkpoint files in them; several go in one figure.")],
    output: Annotated[Optional[str], typer.Option("-o", "--output", help="PNG, SVG or PDF file (default RUN_DIR/curves.png for one run, curves.png for several).")] = None,
    x: Annotated[Optional[str], typer.Option("--x", help="Horizontal axis: step or epoch (default: step, or epoch when a run changed its batch size on resume; the change is marked).")] = PlotOptions.x,
    parts: Annotated[bool, typer.Option("--parts", help="Also plot L_x and L_z, each in its own panel.")] = PlotOptions.parts,
    log: Annotated[bool, typer.Option("--log/--linear", help="Logarithmic or linear loss axis.")] = PlotOptions.log,
    paper: Annotated[bool, typer.Option("--paper", help="Horizontal lines at the paper's 80.97 (attention) / 87.40 (no attention) for MNIST runs.")] = PlotOptions.paper,
    ymin: Annotated[Optional[float], typer.Option("--ymin", help="Lower limit of the loss axis.")] = PlotOptions.ymin,
    ymax: Annotated[Optional[float], typer.Option("--ymax", help="Upper limit of the loss axis (hides the first steps' large losses).")] = PlotOptions.ymax,
    size: Annotated[Optional[str], typer.Option("--size", help=f"WIDTHxHEIGHT in pixels (default {SIZE[0]}x{SIZE[1]}, or {SIZE_PARTS[0]}x{SIZE_PARTS[1]} with --parts).")] = PlotOptions.size,
    lr: Annotated[bool, typer.Option("--lr", help="Also plot the learning rate (dashed, on a second axis).")] = PlotOptions.lr,
    runs_dir: RunsDirOpt = DEFAULT_RUNS_DIR,
):
    """Learning curves from metrics.jsonl: train loss per log step, evaluation loss per epoch (needs matplotlib)."""
    from drawcli.commands.plot import plot_command

    options = PlotOptions(x=x, parts=parts, log=log, paper=paper, ymin=ymin, ymax=ymax, size=size, lr=lr)
    plot_command(runs, output, options, runs_dir)


RUNS_EXAMPLES = """
Examples:

  draw runs

  draw runs --runs-dir ~/experiments/runs

  draw runs --json
"""


@app.command("runs", epilog=RUNS_EXAMPLES)
@_user_errors
def runs_command(
    runs_dir: Annotated[str, typer.Option("--runs-dir", envvar="DRAW_RUNS_DIR", help="The runs folder to list ($DRAW_RUNS_DIR when set).")] = "runs",
    as_json: Annotated[bool, typer.Option("--json", help="Print the same data as JSON, for scripts.")] = False,
):
    """The runs in a runs folder: data, model, complete epochs, steps, best loss, tightest IWAE bound (with its K), last change and status (finished, stopped at max-steps, interrupted, failed, empty, locked)."""
    from drawcli.commands.runs import runs_command as list_command

    list_command(runs_dir, as_json=as_json)


MODELS_EXAMPLES = """
Examples:

  draw models

  draw models --json
"""


@app.command("models", epilog=MODELS_EXAMPLES)
@_user_errors
def models_command(
    as_json: Annotated[bool, typer.Option("--json", help="Print the same data as JSON, for scripts.")] = False,
):
    """The built-in models (use one as @NAME with sample, animate, inspect-attention and evaluate), with their settings and measured numbers."""
    from drawcli.commands.models import models_command as list_command

    list_command(as_json=as_json)


EXPORT_EXAMPLES = """
Examples (runs you trained, e.g. quick: see draw train --help):

  draw export quick -o quick/      (a model folder: config.json, model.safetensors, README.md)

  draw sample quick/ -n 16

  draw export quick -o quick.pt

  draw export quick --load 3 -o quick-epoch3.pt      (then: draw sample quick-epoch3.pt)

  draw train --config sample_configs/quick.yaml --init-from quick.pt --name again
"""


@app.command("export", epilog=EXPORT_EXAMPLES)
@_user_errors
def export_command(
    run: Annotated[str, typer.Argument(help="A run name under the runs directory, a run directory, or a checkpoint file.")],
    output: Annotated[str, typer.Option("-o", "--output", help="A model folder to write (DIR/, or any name without a dot: config.json, model.safetensors, README.md), or a weights file (NAME.pt).")],
    load: LoadOpt = None,
    force: Annotated[bool, typer.Option("--force", help="Replace OUTPUT if it exists (a folder only when it holds a model folder's files alone).")] = False,
    runs_dir: RunsDirOpt = DEFAULT_RUNS_DIR,
):
    """Write a run's checkpoint as a model folder (safetensors weights, config.json, a model card; the kind @NAME ships) or a .pt weights file: for sample, evaluate, drawcli.load and train --init-from."""
    from drawcli.commands.export import export_command as export

    export(run, load, output, runs_dir, force=force)


SERVE_EXAMPLES = """
Examples (needs the serve extra: pip install "drawcli[serve]"):

  draw serve      (the built-in models and every run in ./runs)

  draw serve @mnist quick --port 8000

  draw serve --runs-dir ~/experiments/runs

  draw serve --host 0.0.0.0      (anyone on the network can use it)
"""


@app.command("serve", epilog=SERVE_EXAMPLES)
@_user_errors
def serve(
    models: Annotated[Optional[List[str]], typer.Argument(
        help="Models to offer: @NAME, run names under the runs directory, run directories or checkpoint files (default: every built-in model and every run with a checkpoint).")] = None,
    host: Annotated[str, typer.Option("--host", help="Address to listen on; anything but a loopback address lets the network in.")] = "127.0.0.1",
    port: Annotated[int, typer.Option("--port", help="Port to listen on (0: any free port).")] = 8765,
    runs_dir: RunsDirOpt = DEFAULT_RUNS_DIR,
    device: DeviceOpt = DEFAULT_DEVICE,
    engine: EngineOpt = DEFAULT_ENGINE,
    workers: Annotated[int, typer.Option("--workers", help="Model calls running at the same time (threads).")] = 2,
):
    """A local web page to explore trained models: samples, the glimpse player, draw your own digit, latent walks."""
    from drawcli.commands.serve import serve_command

    serve_command(models, host, port, runs_dir, device=device, engine=engine, workers=workers)


def main() -> None:
    app(prog_name="draw")


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
