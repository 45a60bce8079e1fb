"""Model folders (drawcli/runs/folder.py, drawcli/runs/pretrained.py, drawcli/runs/hub.py): `draw export
DIR/`, loading a folder everywhere a model is taken, DRAW.from_pretrained / save_pretrained / push_to_hub,
hf:OWNER/NAME (offline: huggingface_hub's download is replaced by a local folder), and the one-line
refusals of broken folders."""

from __future__ import annotations

import json
import shutil
import sys

import pytest
import torch

import drawcli
from drawcli.core.errors import DrawError
from drawcli.runs import hub

from helpers import run_cli

pytestmark = pytest.mark.usefixtures("one_thread")

TINY = ("--glimpses", "3", "--hidden", "16", "--latent", "4", "-b", "32", "--device", "cpu", "--set", "train.eval_batch_size=50")


@pytest.fixture
def donor(tmp_path, monkeypatch, env):
    """A one-epoch tiny run 'donor' in tmp_path/runs, the current directory tmp_path."""
    monkeypatch.chdir(tmp_path)
    r = run_cli("train", *TINY, "--epochs", "1", "--name", "donor", env=env)
    assert r.exit_code == 0, r.output
    return tmp_path


def export(env, *args):
    r = run_cli("export", "donor", *args, env=env)
    assert r.exit_code == 0, r.output
    return r


def test_export_then_load_back_gives_bit_identical_samples(donor, env):
    r = export(env, "-o", "donor-model/")
    assert "wrote the model folder donor-model (config.json, model.safetensors" in " ".join(r.output.split())
    folder = donor / "donor-model"
    assert sorted(p.name for p in folder.iterdir()) == ["README.md", "config.json", "model.safetensors"]
    assert not [p for p in donor.iterdir() if p.name.startswith(".")]  # no temporary folder left behind
    for ref, out in (("donor", "a.png"), ("donor-model/", "b.png"), ("donor-model", "c.png")):
        r = run_cli("sample", ref, "-n", "4", "--seed", "3", "--device", "cpu", "-o", out, env=env)
        assert r.exit_code == 0, r.output
    assert (donor / "a.png").read_bytes() == (donor / "b.png").read_bytes() == (donor / "c.png").read_bytes()
    run, folded = drawcli.load("donor", device="cpu"), drawcli.load(folder, device="cpu")
    assert torch.equal(run.sample(5, seed=9), folded.sample(5, seed=9))
    assert folded.name == "donor-model" and folded.checkpoint is None and folded.epoch == 1
    assert folded.training == {"epochs": 1, "steps": 3, "cycles": [{"run": "donor", "epochs": 1, "steps": 3}]}
    assert "epoch 1, step 3" not in repr(run) and "epoch 1" in repr(run)
    config = json.loads((folder / "config.json").read_text())
    assert config["format"] == "drawcli-model" and config["model"]["glimpses"] == 3 and config["image"] == {"channels": 1, "height": 28, "width": 28}
    assert config["data"]["dataset"] == "mnist" and "data_dir" not in config["data"] and "runs_dir" not in config["run"]
    run.save_pretrained(donor / "saved")  # from Python: the same weights, settings and history as draw export's
    saved = drawcli.load(donor / "saved", device="cpu")
    assert saved.training == folded.training and saved.settings == folded.settings
    assert (donor / "saved" / "model.safetensors").read_bytes() == (folder / "model.safetensors").read_bytes()
    # The default output goes to the current folder, named after the model folder.
    r = run_cli("sample", "donor-model", "-n", "4", "--device", "cpu", env=env)
    assert r.exit_code == 0 and (donor / "donor-model-samples-n4-seed0.png").is_file(), r.output


def test_a_folder_evaluates_animates_and_starts_a_run(donor, env):
    export(env, "-o", "m")  # a name without a dot is a folder too
    r = run_cli("evaluate", "./m", "--samples", "2", "--device", "cpu", env=env)
    assert r.exit_code == 0, r.output
    assert "evaluating m (epoch 1, step 3) on 40 mnist test images" in " ".join(r.output.split())
    result = json.loads((donor / "m-eval-test-k2.json").read_text())
    assert result["run"] == "m" and result["epoch"] == 1 and result["training"]["cycles"][0]["run"] == "donor"
    r = run_cli("animate", "m", "-n", "2", "--device", "cpu", "-o", "m.gif", env=env)
    assert r.exit_code == 0 and (donor / "m.gif").stat().st_size > 100, r.output
    r = run_cli("train", *TINY, "--epochs", "1", "--init-from", "m", "--name", "again", env=env)
    assert r.exit_code == 0, r.output
    assert "initial weights: m, epoch 1, step 3; a fresh optimizer and learning-rate schedule" in r.output
    r = run_cli("train", *TINY, "--hidden", "8", "--init-from", "m/", "--name", "other", env=env)
    assert r.exit_code != 0 and "train.init_from m/: another model (model.hidden is 16 there and 8 here, from --hidden)" in r.output
    r = run_cli("sample", "m", "--load", "2", env=env)
    assert r.exit_code != 0 and "--load picks a run's checkpoint; m is a model folder with one set of weights" in r.output


def test_the_card_gives_the_measured_numbers_with_their_commands(donor, env):
    export(env, "-o", "plain/")
    card = (donor / "plain" / "README.md").read_text()
    assert "| ELBO | not measured |" in card and "| IWAE | not measured |" in card
    assert "| test loss during training |" in card and "draw train (metrics.jsonl, epoch 1)" in card
    assert "license: mit" in card and "## License" in card and "datasets:\n- mnist" in card and 'drawcli.load("path/to/plain")' in card
    r = run_cli("evaluate", "donor", "--samples", "3", "--device", "cpu", env=env)
    assert r.exit_code == 0, r.output
    result = json.loads((donor / "runs" / "donor" / "eval-test-k3-best.json").read_text())
    export(env, "-o", "measured/")
    card = (donor / "measured" / "README.md").read_text()
    assert f"| ELBO | {result['elbo']:.2f} ± {result['elbo_stderr']:.2f} | 40 | 1 | `draw evaluate donor --load best --samples 3` |" in card
    assert f"| IWAE bound | {result['iwae']:.2f} ± {result['iwae_stderr']:.2f} | 40 | 3 | `draw evaluate donor --load best --samples 3` |" in card
    assert "not measured" not in card


def test_export_output_rules_and_force(donor, env):
    export(env, "-o", "out/")
    for args, message in [
        (("-o", "out/"), "out exists; use --force to replace it"),
        (("-o", "model.v2"), "model.v2: give NAME.pt for a weights file, or DIR/ for a model folder"),
        (("-o", "runs/", "--force"), "holds other files than a model folder's"),
        (("-o", "no/such/"), "error: no: no such folder"),
        (("-o", "out/", "--load", "7"), "run 'donor' has no checkpoint for epoch 7"),
    ]:
        r = run_cli("export", "donor", *args, env=env)
        assert r.exit_code != 0 and message in r.output, (args, r.output)
    assert (donor / "runs" / "donor" / "config.yaml").is_file()  # --force never removes a folder of other files
    before = (donor / "out" / "model.safetensors").read_bytes()
    (donor / "out" / "README.md").write_text("mine")
    export(env, "-o", "out", "--force")
    assert (donor / "out" / "model.safetensors").read_bytes() == before and (donor / "out" / "README.md").read_text() != "mine"
    (donor / "empty").mkdir()
    export(env, "-o", "empty")  # an existing empty folder is filled
    assert (donor / "empty" / "config.json").is_file()
    r = run_cli("export", "out/", "-o", "again/", env=env)
    assert r.exit_code != 0 and "out/ is a model folder already" in r.output
    export(env, "-o", "w.pt")  # the .pt weights file as before
    assert torch.equal(drawcli.load("w.pt", device="cpu").sample(2, seed=1), drawcli.load("out", device="cpu").sample(2, seed=1))


# ----------------------------------------------------------------------------- refusals
@pytest.fixture
def folder(donor, env):
    export(env, "-o", "f/")
    return donor / "f"


def refused(ref, env) -> str:
    """The one error line `draw sample REF` and drawcli.load(REF) give (the same line)."""
    r = run_cli("sample", str(ref), "--device", "cpu", env=env)
    with pytest.raises(DrawError) as e:
        drawcli.load(ref, device="cpu")
    assert r.exit_code != 0 and r.output.splitlines() == [f"error: {e.value}"], r.output
    return str(e.value)


def test_a_tampered_header_is_refused_naming_the_file(folder, env):
    path = folder / "model.safetensors"
    raw = path.read_bytes()
    path.write_bytes(raw.replace(b'"dtype":"F32"', b'"dtype":"F31"', 1))
    assert refused(folder, env).startswith(f"{path}: not a valid safetensors file: tensor ")
    path.write_bytes(raw[:8] + b"\xff" + raw[9:])
    assert refused(folder, env) == f"{path}: not a valid safetensors file: the header is not UTF-8 (byte 0)"


def test_a_truncated_file_is_refused_naming_the_file(folder, env):
    path = folder / "model.safetensors"
    raw = path.read_bytes()
    path.write_bytes(raw[: len(raw) - 100])
    message = refused(folder, env)
    assert message.startswith(f"{path}: not a valid safetensors file: the tensors need ") and message.endswith("truncated")
    path.write_bytes(raw[:20])
    assert "runs past the end of the file (20 bytes): truncated" in refused(folder, env)


@pytest.mark.parametrize("change, message", [
    (lambda c: c["model"].update(hiden=c["model"].pop("hidden")), "model.hiden: unknown key (did you mean 'hidden'?)"),
    (lambda c: c.update(imag=c.pop("image")), "imag: unknown key (did you mean 'image'?)"),
    (lambda c: c["train"].update(lrr=0.1), "train.lrr: unknown key (did you mean 'lr'?)"),
    (lambda c: c["image"].update(height=0), "image.height: expected a whole number >= 1, got 0"),
    (lambda c: c["training"].update(epochs=5), "training.epochs is 5, but its cycles add up to 1"),
    (lambda c: c.update(format_version=99), "written by a newer drawcli"),
    (lambda c: c["data"].update(data_dir="/x"), "data.data_dir: a training machine's folder does not belong in a model folder"),
])
def test_a_config_with_unknown_keys_or_wrong_values_is_refused(folder, env, change, message):
    path = folder / "config.json"
    config = json.loads(path.read_text())
    change(config)
    path.write_text(json.dumps(config))
    assert refused(folder, env).startswith(f"{path}: {message}")


def test_weights_that_do_not_match_the_config_are_refused(folder, env):
    path = folder / "config.json"
    config = json.loads(path.read_text())
    config["model"]["hidden"] = 8
    path.write_text(json.dumps(config))
    message = refused(folder, env)
    assert message.startswith(f"{folder / 'model.safetensors'}: the weights do not match {path} (image 1x28x28, glimpses=3, "
                              "hidden=8, latent=4, attention=true, read_n=2, write_n=5): ") and "expected" in message
    (folder / "config.json").write_text('{"format": "drawcli-model", "format": 1}')
    assert refused(folder, env) == f"{path}: 'format' is given twice"
    (folder / "config.json").unlink()
    assert refused(folder, env) == f"{folder} is not a model folder: it has no config.json"


# ----------------------------------------------------------------------------- the Python API and the Hub
def test_save_and_from_pretrained_need_no_huggingface_hub(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "huggingface_hub", None)  # as if the extra were not installed
    model = drawcli.create_model(glimpses=3, hidden=16, latent=4)
    assert isinstance(model, drawcli.DRAW) and hasattr(model, "from_pretrained")
    model.save_pretrained(tmp_path / "bare")
    again = drawcli.DRAW.from_pretrained(tmp_path / "bare")
    assert not again.training and all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), again.state_dict().values()))
    loaded = drawcli.load(tmp_path / "bare", device="cpu")
    assert "training not recorded" in repr(loaded) and loaded.settings.data.dataset == "mnist"
    with pytest.raises(DrawError, match=r"^me/nothing: no such folder here; to download it from the Hugging Face Hub, pip install 'drawcli\[hub\]'"):
        drawcli.DRAW.from_pretrained("me/nothing")
    with pytest.raises(DrawError, match=r"^hf:me/tiny: a model on the Hugging Face Hub needs the hub extra: pip install 'drawcli\[hub\]'"):
        drawcli.load("hf:me/tiny")
    with pytest.raises(DrawError, match=r"the Hugging Face Hub needs the hub extra"):
        model.push_to_hub("me/tiny")
    with pytest.raises(DrawError, match=r"hf:me: a Hub model is written hf:OWNER/NAME"):
        drawcli.load("hf:me")


def test_a_drawer_saves_its_settings_and_history(tmp_path):
    mnist = drawcli.load("@mnist", device="cpu")
    mnist.save_pretrained(tmp_path / "copy")
    copy = drawcli.load(tmp_path / "copy", device="cpu")
    assert copy.training == mnist.training and copy.epoch == 400 and copy.settings == mnist.settings
    assert torch.equal(copy.sample(2, seed=5), mnist.sample(2, seed=5))


def test_hf_refs_load_through_huggingface_hubs_download(folder, env, monkeypatch):
    huggingface_hub = pytest.importorskip("huggingface_hub")
    calls = []

    def snapshot_download(repo_id, revision=None, allow_patterns=None, **kwargs):
        calls.append((repo_id, revision, sorted(allow_patterns)))
        return str(folder)

    monkeypatch.setattr(huggingface_hub, "snapshot_download", snapshot_download)
    drawer = drawcli.load("hf:me/tiny", device="cpu")
    assert drawer.name == "hf:me/tiny" and torch.equal(drawer.sample(3, seed=2), drawcli.load(folder, device="cpu").sample(3, seed=2))
    model = drawcli.DRAW.from_pretrained("me/tiny", revision="v1")
    assert isinstance(model, drawcli.DRAW) and model.hidden == 16
    assert calls[0] == ("me/tiny", None, ["README.md", "config.json", "model.safetensors"]) and calls[1][:2] == ("me/tiny", "v1")
    r = run_cli("sample", "hf:me/tiny", "-n", "4", "--device", "cpu", env=env)
    assert r.exit_code == 0 and (folder.parent / "tiny-samples-n4-seed0.png").is_file(), r.output

    def offline(**kwargs):
        raise OSError("no network here\nmore")

    monkeypatch.setattr(huggingface_hub, "snapshot_download", offline)
    with pytest.raises(DrawError, match=r"^hf:me/tiny: cannot download it from the Hugging Face Hub: no network here$"):
        drawcli.load("hf:me/tiny")


def test_push_to_hub_uploads_the_folder(tmp_path, monkeypatch):
    huggingface_hub = pytest.importorskip("huggingface_hub")
    seen = {}

    class FakeApi:
        def __init__(self, token=None):
            seen["token"] = token

        def create_repo(self, repo_id, private=None, exist_ok=False):
            seen["repo"] = (repo_id, private, exist_ok)

        def upload_folder(self, repo_id, folder_path, commit_message, revision=None):
            shutil.copytree(folder_path, tmp_path / "uploaded")
            return "done"

    monkeypatch.setattr(huggingface_hub, "HfApi", FakeApi)
    model = drawcli.create_model(glimpses=3, hidden=16, latent=4)
    assert model.push_to_hub("me/tiny", private=True, token="t") == "done"
    assert seen == {"token": "t", "repo": ("me/tiny", True, True)}
    again = drawcli.DRAW.from_pretrained(tmp_path / "uploaded")
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), again.state_dict().values()))
    assert "# tiny" in (tmp_path / "uploaded" / "README.md").read_text()


def test_hub_references_are_checked_without_torch():
    assert hub.hub_repo("hf:me/tiny@main") == ("me/tiny", "main")
    for bad in ("hf:me", "hf:me/", "hf:/x", "hf:me/a/b", "hf:me/x@", "hf:me/../x"):
        with pytest.raises(DrawError, match="a Hub model is written hf:OWNER/NAME"):
            hub.hub_repo(bad)
