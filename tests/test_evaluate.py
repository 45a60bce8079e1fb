"""`draw evaluate`: the ELBO and the importance-weighted bound, checked against exact answers.

* A DRAW with T=1, one latent and 2x2 pixels has a marginal p(x) = int p(x|z) N(z; 0, 1) dz
  that quadrature gives to many digits: the IWAE estimate must converge to it as K grows,
  and the ELBO must stay below it (as NLLs: above).
* A small model trained on real MNIST (DRAW_TEST_MNIST): IWAE with K=100 is tighter than
  the ELBO, and K=1 agrees with the ELBO within its standard error.
* The command on tiny synthetic data sets: eval.json, the paper comparison, clear errors.
"""

from __future__ import annotations

import copy
import io
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from rich.console import Console
from typer.testing import CliRunner

from drawcli.cli import app
from drawcli.commands.evaluate import evaluate_command
from drawcli.commands.options import EvaluateOptions
from drawcli.data.loading import to_input
from drawcli.evaluation.bounds import (
    fixed_binarization,
    iwae_report,
    likelihood_bounds,
    paper_comparison,
    report_line,
    rows_per_pass,
)
from drawcli.model import DRAW
from drawcli.runs import store as runs
from drawcli.runs.checkpoint import build_model, make_checkpoint
from drawcli.settings import (
    DataSettings,
    ModelSettings,
    RunSettings,
    Settings,
    TrainSettings,
)
from drawcli.training.loop import evaluate, train

from helpers import ok, one_error_line, run_cli

pytestmark = pytest.mark.usefixtures("one_thread")


# --------------------------------------------------------------------------- binarisation


def test_fixed_binarization_depends_only_on_seed_and_images():
    g = np.random.default_rng(0)
    images = g.integers(0, 256, size=(25_000, 2, 3), dtype=np.uint8)  # more than one block
    a, scale, info = fixed_binarization(images, "dynamic", seed=5)
    b, _, info_b = fixed_binarization(torch.as_tensor(images), "dynamic", seed=5)
    c, _, info_c = fixed_binarization(images, "dynamic", seed=6)
    assert scale == 1.0 and a.dtype == torch.uint8 and set(a.unique().tolist()) <= {0, 1}
    assert torch.equal(a, b) and info["sha256"] == info_b["sha256"]
    assert not torch.equal(a, c) and info["sha256"] != info_c["sha256"]
    assert info["seed"] == 5 and "seed 5" in info["description"]
    # A Bernoulli sample of the grey levels: pixel means match intensities / 255.
    assert abs(a.double().mean().item() - images.mean() / 255) < 0.005

    t, scale, info = fixed_binarization(images, "threshold", seed=0)
    assert torch.equal(t.float() * scale, to_input(torch.as_tensor(images), "threshold"))
    assert info["seed"] is None

    binary = (g.integers(0, 2, size=(10, 4, 4)) * 255).astype(np.uint8)
    t, scale, info = fixed_binarization(binary, "none", seed=0)
    assert torch.equal(t.float() * scale, torch.as_tensor(binary).float() / 255)  # exactly 0/1
    assert "already binary" in info["description"]
    _, _, info = fixed_binarization(images, "none", seed=0)
    assert "grey levels" in info["description"]


# --------------------------------------------------------------------------- exact marginal


def quadrature_model() -> DRAW:
    """T=1, z of size 1, a 2x2 image: p(x) is a one-dimensional integral.

    Scaled-up decoder weights make p(x|z) depend strongly on z, so the ELBO is well below
    log p(x). The posterior's sigma stays at 1.3 > 1, so its tails are heavier than the
    posterior p(z|x)'s (no heavier than the N(0, 1) prior's) and every importance weight
    p(x, z) / q(z|x) is bounded: the IWAE estimate then converges at its 1/K rate.
    """
    torch.manual_seed(0)
    m = DRAW(height=2, width=2, glimpses=1, hidden=4, latent=1, attention=False)
    with torch.no_grad():
        m.decoder.linear.weight.mul_(4.0)
        m.write_head.weight.normal_(0, 3.0)
        m.write_head.bias.normal_(0, 1.0)
        m.q.weight.zero_()
        m.q.weight[0].normal_(0, 1.0)  # mu depends on the image through h^enc
        m.q.bias.copy_(torch.tensor([0.3, math.log(1.3)]))  # (mu, log sigma), eq 1-2
    return m


def all_2x2_images() -> torch.Tensor:
    bits = [[(i >> b) & 1 for b in range(4)] for i in range(16)]
    return (torch.tensor(bits, dtype=torch.uint8) * 255).reshape(16, 2, 2)


def exact_nll(model: DRAW, images: torch.Tensor) -> torch.Tensor:
    """-log int p(x|z) N(z; 0, 1) dz on a fine grid, in float64.

    With T=1 the decoder starts from zero states (eq 7) and the canvas is one write (eq 8,
    c_0 = 0), so p(x|z) is the decoder and write head applied to z alone.
    """
    d = copy.deepcopy(model).double()
    z = torch.linspace(-12, 12, 24_001, dtype=torch.float64).unsqueeze(1)
    zeros = torch.zeros(len(z), d.hidden, dtype=torch.float64)
    with torch.no_grad():
        h, _ = d.decoder(z, (zeros, zeros))
        logits, _ = d.write(h)
        logits = logits[:, 0]  # (J, 1, 2, 2): one channel
    x = images.double() / 255
    log_px_z = -torch.nn.functional.binary_cross_entropy_with_logits(
        logits.unsqueeze(0).expand(len(x), -1, -1, -1), x.unsqueeze(1).expand(-1, len(z), -1, -1), reduction="none"
    ).sum((2, 3))
    log_prior = -0.5 * z.squeeze(1) ** 2 - 0.5 * math.log(2 * math.pi)
    dz = (z[1, 0] - z[0, 0]).item()
    return -(torch.logsumexp(log_px_z + log_prior, 1) + math.log(dz))


def test_iwae_converges_to_the_exact_marginal_and_the_elbo_stays_below():
    model = quadrature_model()
    images = all_2x2_images()
    nll = exact_nll(model, images)
    # The quadrature is a distribution over the 16 possible images: it sums to one.
    assert torch.exp(-nll).sum().item() == pytest.approx(1.0, abs=1e-9)

    reps = 16  # independent estimates per image, averaged, so the test sees the bias, not noise
    repeated = images.repeat(reps, 1, 1)
    errors, elbo_gap = {}, None
    for k in (1, 10, 1000):
        b = likelihood_bounds(model, repeated, "none", k, seed=3)
        iwae = b.iwae.reshape(reps, 16).mean(0)
        errors[k] = (iwae - nll).abs().mean().item()
        if k == 1000:
            elbo_gap = b.elbo.reshape(reps, 16).mean(0) - nll  # the ELBO averaged over 16,000 samples
    # The bias of the K-sample bound shrinks like 1/K (Burda et al., 2016): about 0.3, 0.04
    # and 0.004 nats here.
    assert errors[1000] < 0.015, errors
    assert errors[10] < errors[1] / 3, errors
    assert errors[1000] < errors[10] / 3, errors
    # The ELBO is a looser bound: above the exact NLL for every image, clearly on average.
    assert (elbo_gap > 0.03).all(), elbo_gap
    assert elbo_gap.mean().item() > 0.2


def test_samples_split_over_passes_when_k_copies_do_not_fit():
    model = quadrature_model()
    images = all_2x2_images()
    nll = exact_nll(model, images)
    seen = []
    b = likelihood_bounds(model, images.repeat(2, 1, 1), "none", 1000, seed=4, batch_size=300, progress=seen.append)
    assert b.rows_per_pass == 300  # one image per pass, its 1000 samples in passes of 300, 300, 300, 100
    assert seen == list(range(1, 33))
    assert (b.iwae.reshape(2, 16).mean(0) - nll).abs().mean().item() < 0.03


def test_rows_per_pass_follows_the_memory_budget():
    paper = DRAW()  # T=64, 256 units, z 100
    cpu = torch.device("cpu")
    small, large = rows_per_pass(paper, cpu, budget=2**26), rows_per_pass(paper, cpu, budget=2**28)
    assert 50 < small < large and large == pytest.approx(4 * small, rel=0.01)
    assert rows_per_pass(paper, cpu, budget=1) == 1
    assert rows_per_pass(paper, cpu) >= 500  # the default CPU budget still batches well


# --------------------------------------------------------------------------- a trained model


@pytest.fixture(scope="module")
def trained(mnist_splits):
    settings = Settings(
        model=ModelSettings(glimpses=4, hidden=64, latent=8, attention=False),
        train=TrainSettings(epochs=1, batch_size=64, lr=3e-3, max_steps=200, eval_batch_size=500, log_every=100),
    )
    result = train(settings, mnist_splits.train[:12_800], mnist_splits.eval[:100], torch.device("cpu"))
    return result.model, torch.as_tensor(mnist_splits.eval[:300])


def test_iwae_is_tighter_than_the_elbo_on_a_trained_model(trained):
    model, images = trained
    k100 = iwae_report(model, images, "dynamic", 100, seed=0)
    k1 = iwae_report(model, images, "dynamic", 1, seed=0)
    assert k100["elbo"] < 180  # it did learn: the same model untrained scores about 550 nats

    # K=100: a tighter bound on average, by far more than the paired standard error.
    assert k100["iwae"] < k100["elbo"]
    assert k100["elbo_minus_iwae"] > 5 * k100["elbo_minus_iwae_stderr"] > 0
    # K=1: the same bound as the ELBO (sampled instead of analytic KL), within its standard
    # error, and even within a few standard errors of the paired difference.
    assert abs(k1["iwae"] - k1["elbo"]) < k1["elbo_stderr"]
    assert abs(k1["elbo_minus_iwae"]) < 4 * k1["elbo_minus_iwae_stderr"]
    # Same images and binarisation: the ELBO from 1 and from 100 samples agree.
    assert abs(k1["elbo"] - k100["elbo"]) < k1["elbo_stderr"]
    assert k1["binarization"]["sha256"] == k100["binarization"]["sha256"]
    # ... and with the training loop's ELBO, which binarises with its own seed.
    train_elbo = evaluate(model, images, "dynamic", batch_size=300)["loss"]
    assert abs(train_elbo - k1["elbo"]) < k1["elbo_stderr"]
    for key in ("elbo", "elbo_lx", "elbo_lz", "iwae"):
        assert k100[f"{key}_stderr"] > 0
    assert k100["elbo"] == pytest.approx(k100["elbo_lx"] + k100["elbo_lz"])
    line = report_line(k100, "test")
    assert f"IWAE (K=100) {k100['iwae']:.2f}" in line and "300 images" in line


# --------------------------------------------------------------------------- the paper


def test_paper_comparison_matches_only_the_table_3_setup():
    paper = {"height": 28, "width": 28, "glimpses": 64, "hidden": 256, "latent": 100, "attention": True, "read_n": 2, "write_n": 5}
    same = paper_comparison(paper, "binarized-mnist", "test", 10_000, 10_000)
    assert same == {"table2": 80.97, "row": "DRAW", "comparable": True, "applies": True, "differences": []}
    plain = paper_comparison(dict(paper, attention=False, read_n=7), "binarized-mnist", "test", 10_000, 10_000)
    assert plain["table2"] == 87.40 and plain["comparable"]  # the windows do not matter without attention
    assert paper_comparison(paper, "binarized-mnist", "test", 10_000, 10_000, "binarized-mnist")["comparable"]
    other = paper_comparison(dict(paper, glimpses=16, latent=20), "mnist", "valid", 100, 10_000, "mnist")
    assert not other["comparable"] and other["table2"] == 80.97
    text = "; ".join(other["differences"])
    for part in ("T 16", "z size 20 (paper 100)", "trained on mnist", "data set mnist", "split valid", "first 100 of 10000"):
        assert part in text
    assert other["applies"]
    for config, dataset in ((dict(paper, height=60, width=60), "two-digit-mnist"), (dict(paper, channels=3), "mnist"),
                            (paper, "fashion-mnist")):
        none = paper_comparison(config, dataset, "test", 10_000, 10_000, dataset)
        assert not none["applies"] and not none["comparable"]


def test_the_results_table_drops_the_paper_column_where_table_2_has_no_number():
    from drawcli.commands.evaluate import _footnotes, results_table

    paper = {"height": 28, "width": 28, "steps": 64, "hidden": 256, "embed": 100, "attention": True, "read_n": 2, "write_n": 5}
    result = {"run": "r", "epoch": 1, "images": 10, "dataset": "two-digit-mnist", "split": "test", "samples": 1,
              "elbo": 200.0, "elbo_lx": 120.0, "elbo_lz": 80.0, "iwae": 200.0, "elbo_minus_iwae": 0.0,
              "binarization": {"description": "fixed", "sha256": "ab"}, "notes": [],
              "paper": paper_comparison(dict(paper, height=60, width=60), "two-digit-mnist", "test", 10, 10)}
    assert len(results_table(result).columns) == 3
    assert any("has no number for two-digit-mnist" in line for line in _footnotes(result))
    assert not any("80.97" in line for line in _footnotes(result))
    result["paper"] = paper_comparison(paper, "binarized-mnist", "test", 10, 10)
    assert len(results_table(result).columns) == 4


# --------------------------------------------------------------------------- the command


def write_idx(path: Path, images: np.ndarray) -> None:
    header = bytes([0, 0, 8, 3]) + b"".join(int(d).to_bytes(4, "big") for d in images.shape)
    path.write_bytes(header + images.tobytes())


def write_amat(path: Path, images: np.ndarray) -> None:
    path.write_text("".join(" ".join(map(str, row)) + "\n" for row in images.reshape(len(images), -1)))


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> Path:
    """Tiny stand-ins for mnist (grey levels) and binarized-mnist (0/1 .amat) in a data directory."""
    root = tmp_path_factory.mktemp("evaldata")
    g = np.random.default_rng(1)
    (root / "mnist").mkdir()
    write_idx(root / "mnist" / "train-images-idx3-ubyte", g.integers(0, 256, (64, 28, 28), dtype=np.uint8))
    write_idx(root / "mnist" / "t10k-images-idx3-ubyte", g.integers(0, 256, (48, 28, 28), dtype=np.uint8))
    (root / "binarized-mnist").mkdir()
    for split, n in (("train", 8), ("valid", 5), ("test", 4)):
        write_amat(root / "binarized-mnist" / f"binarized_mnist_{split}.amat", g.integers(0, 2, (n, 28, 28)))
    return root


def make_run(runs_dir: Path, name: str, model: ModelSettings, data_dir: Path | None, epochs=(1,), dataset="mnist") -> Path:
    """A run directory as `draw train` leaves it: config.yaml and checkpoints per epoch."""
    # run_train records binarize=none for a pre-binarised set: what it really did.
    binarize = "none" if dataset == "binarized-mnist" else "dynamic"
    data = DataSettings(dataset=dataset, binarize=binarize, data_dir=str(data_dir) if data_dir else None)
    settings = Settings(model=model, data=data, run=RunSettings(name=name))
    run_dir = runs_dir / name
    (run_dir / "checkpoints").mkdir(parents=True)
    runs.write_config(run_dir, settings)
    torch.manual_seed(0)
    net = build_model(settings, 28, 28)
    optimizer = torch.optim.Adam(net.parameters())
    rng = {"data": torch.Generator().get_state(), "noise": torch.Generator().get_state()}
    for epoch in epochs:
        ckpt = make_checkpoint(net, optimizer, settings, epoch, 10 * epoch, rng, {"loss": 500.0}, 500.0)
        runs.RunRecorder(run_dir).on_checkpoint(ckpt, is_best=epoch == epochs[0])
    return run_dir


TINY = ModelSettings(glimpses=2, hidden=8, latent=2, attention=True, read_n=2, write_n=3)


def test_cli_writes_eval_json_and_the_table(tmp_path, data_dir):
    run_dir = make_run(tmp_path / "runs", "tiny", TINY, data_dir, epochs=(1, 2))
    args = ["evaluate", "tiny", "--runs-dir", str(tmp_path / "runs"), "--samples", "3", "--device", "cpu", "--load", "2"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    saved = json.loads((run_dir / "eval-test-k3-epoch_002.json").read_text())
    assert saved["format"] == "drawcli-eval" and saved["run"] == "tiny"
    assert saved["checkpoint"].endswith("epoch_002.pt") and (saved["epoch"], saved["step"]) == (2, 20)
    assert (saved["dataset"], saved["split"], saved["images"], saved["samples"]) == ("mnist", "test", 48, 3)
    assert saved["settings"]["model"]["glimpses"] == 2 and saved["settings"]["run"]["name"] == "tiny"
    assert saved["binarization"]["mode"] == "dynamic" and saved["binarization"]["seed"] == 0
    for key in ("elbo", "elbo_lx", "elbo_lz", "iwae"):
        assert saved[key] > 0 and saved[f"{key}_stderr"] > 0
    assert saved["elbo"] == pytest.approx(saved["elbo_lx"] + saved["elbo_lz"])
    assert saved["seconds"] > 0 and saved["paper"]["comparable"] is False
    assert not list(run_dir.glob(".eval*.tmp*"))  # the atomic write left no temp file
    out = result.stdout
    assert "IWAE bound, K=3" in out and "(80.97)*" in out and "not comparable" in out and "T 2 (paper 64)" in out
    assert "K=3: 48/48 images" in out  # plain progress lines when not on a terminal

    # The function returns what it wrote; the same seed gives the same numbers.
    again = evaluate_command(
        EvaluateOptions(str(run_dir), load="2", samples=3, device="cpu"), console=Console(file=io.StringIO())
    )
    reread = json.loads((run_dir / "eval-test-k3-epoch_002.json").read_text())
    assert reread == again
    for key in ("elbo", "elbo_lx", "elbo_lz", "iwae", "iwae_stderr"):
        assert again[key] == saved[key]
    assert again["binarization"] == saved["binarization"]


def test_binarized_mnist_is_used_as_is_and_matches_the_paper_setup(tmp_path, data_dir):
    paper = ModelSettings(glimpses=64, hidden=256, latent=100, attention=True, read_n=2, write_n=5)
    run_dir = make_run(tmp_path / "runs", "paper", paper, None, dataset="binarized-mnist")
    quiet = Console(file=io.StringIO())
    common = {"runs_dir": tmp_path / "runs", "data_dir": str(data_dir), "samples": 2, "device": "cpu"}
    test = evaluate_command(EvaluateOptions("paper", dataset="binarized-mnist", **common), console=quiet)
    assert test["binarization"]["mode"] == "none" and "already binary" in test["binarization"]["description"]
    assert test["images"] == 4 and test["paper"]["comparable"] and test["paper"]["table2"] == 80.97
    valid = evaluate_command(EvaluateOptions("paper", dataset="binarized-mnist", split="valid", limit=3, **common), console=quiet)
    assert valid["images"] == 3 and valid["split"] == "valid"
    assert not valid["paper"]["comparable"] and any("split valid" in d for d in valid["paper"]["differences"])
    # Each result keeps its own file: the quick one on valid did not replace the one on test.
    assert json.loads((run_dir / "eval-binarized-mnist-test-k2-best.json").read_text())["split"] == "test"
    assert json.loads((run_dir / "eval-binarized-mnist-valid-k2-limit3-best.json").read_text())["split"] == "valid"

    console = Console(record=True, width=140, file=io.StringIO())
    evaluate_command(EvaluateOptions("paper", dataset="binarized-mnist", **common), console=console)
    text = console.export_text()
    assert "80.97" in text and "(80.97)*" not in text and "same setup as the paper" in text

    # The same architecture trained on grey-level MNIST is not the paper's setup.
    make_run(tmp_path / "runs", "paper-mnist", paper, None)
    other = evaluate_command(EvaluateOptions("paper-mnist", dataset="binarized-mnist", **common), console=quiet)
    assert other["paper"]["differences"] == ["trained on mnist (paper binarized-mnist)"]
    assert other["binarization"]["mode"] == "none"


def test_clear_errors(tmp_path, data_dir):
    runs_dir = tmp_path / "runs"
    (runs_dir / "empty" / "checkpoints").mkdir(parents=True)
    runs.write_config(runs_dir / "empty", Settings())
    make_run(runs_dir, "tiny", TINY, data_dir)
    cases = [
        (["empty"], "has no checkpoints yet"),
        (["tiny", "--load", "7"], "no checkpoint for epoch 7"),
        (["tiny", "--split", "dev"], "--split: expected one of test, valid, train"),
        (["tiny", "--samples", "0"], "--samples must be >= 1"),
        (["tiny", "--split", "valid"], "too few training images"),
        (["nope"], "run 'nope' not found"),
    ]
    for extra, message in cases:
        result = CliRunner().invoke(app, ["evaluate", *extra, "--runs-dir", str(runs_dir), "--device", "cpu"])
        assert result.exit_code == 1, (extra, result.output)
        assert message in result.stderr, (extra, result.stderr)
        assert result.stderr.count("\n") == 1 and result.stderr.startswith("error: ")
        assert "Traceback" not in result.output
    assert not list(runs_dir.glob("*/eval*.json"))


def test_progress_estimates_the_total_time_early_and_says_the_time_left():
    """The first batches give an estimate in one line (after ESTIMATE_AFTER seconds, or a tenth of the
    work); plain lines then say the time left. A fake clock: nothing here depends on real time."""
    from drawcli.core.progress import Reporter

    now = [0.0]
    out = io.StringIO()
    bar = Reporter(Console(file=out, width=200), unit="images", estimate=True, clock=lambda: now[0])
    bar.begin("K=100", 10000)
    for done in range(26, 10001, 26):
        now[0] = done * 0.084  # 84 s per 1000 images: 14 minutes for 10,000
        bar.tick(done)
    now[0] = 840.0
    bar.tick(10000)
    lines = out.getvalue().splitlines()
    assert lines[0] == "K=100: 52/10000 images in 4.4 s; about 14 min in all, 14 min left (estimated from them)", lines[0]
    assert "K=100: 1014/10000 images (85.2 s, about 13 min left)" in lines
    assert lines[-1].startswith("K=100: 10000/10000 images (840.0 s)")
    assert len(lines) < 30  # a line every tenth, or every minute: not every batch


def test_evaluate_prints_the_estimate_in_its_first_progress_line(tmp_path, data_dir):
    make_run(tmp_path / "runs", "tiny", TINY, data_dir)
    args = ["evaluate", "tiny", "--runs-dir", str(tmp_path / "runs"), "--samples", "2", "--batch-size", "4", "--device", "cpu"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    progress = [line for line in lines if line.startswith("K=2: ")]
    assert "in all" in progress[0] and "left (estimated from them)" in progress[0], progress
    assert progress[-1].startswith("K=2: 48/48 images")


def test_evaluations_keep_their_own_files_and_check_the_output_before_the_work(tiny_run, env, tmp_path):
    common = ["--device", "cpu", "--limit", "8"]
    ok(run_cli("evaluate", "tiny", *common, "--samples", "2", env=env))
    ok(run_cli("evaluate", "tiny", *common, "--samples", "1", "--split", "train", env=env))
    named = sorted(p.name for p in tiny_run.glob("eval-*.json"))
    assert named == ["eval-test-k2-limit8-best.json", "eval-train-k1-limit8-best.json"]
    out = tmp_path / "mine" / "result.json"
    ok(run_cli("evaluate", "tiny", *common, "-o", out, env=env))
    assert json.loads(out.read_text())["samples"] == 100

    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    r = run_cli("evaluate", "tiny", *common, "--samples", "2", "-o", blocker / "x.json", env=env)
    one_error_line(r, f"cannot write {blocker / 'x.json'}: {blocker} is not a folder")
    assert "IWAE bound, K=2" not in r.stdout  # refused before the work (issue 26 item 5)
    one_error_line(run_cli("evaluate", "tiny", "-o", "x.txt", env=env), "x.txt: the results are written as JSON")
