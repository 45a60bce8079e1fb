"""The docs cannot go stale: every `draw …` command line in README.md and docs/*.md (and every
example at the end of a command's --help) names a real command and only options it has; every
settings key the docs mention exists; every relative link and image resolves; every `drawcli/…` path
and `drawcli.…` name exists; the Python examples of README.md, docs/sharing.md and docs/api.md run;
the README starts with the install commands, docs/training.md documents every `draw train` flag
and setting, and the examples' outputs in a clone are ignored by git.

Command lines are checked against Typer's command tree (Click's, as typer bundles it) without running them.
"""

from __future__ import annotations

import dataclasses
import importlib
import re
import shlex
import shutil
import subprocess
from pathlib import Path

import pytest
import typer
import typer.main
import yaml

from drawcli.cli import app
from drawcli.settings import ALIASES, Settings

ROOT = Path(__file__).resolve().parent.parent
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]

FENCE = re.compile(r"^```[^\n]*\n(.*?)^```", re.S | re.M)
INLINE = re.compile(r"`(draw [^`]+)`")
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")
KEY = re.compile(r"(?<![\w./-])(model|data|train|run)\.([a-z_]+)\b(?![(/.])(?!\s+=)")  # not Python: model.fused = False
CODE_PATH = re.compile(r"(?<![\w./~:-])drawcli/[\w./-]*\w/?")  # not ~/.cache/drawcli/native/, nor git show REV:drawcli/...
CODE_NAME = re.compile(r"(?<![\w./])drawcli(?:\.[A-Za-z_]\w*)+")  # not torch.ops.drawcli.loop_forward
FILE_SUFFIXES = {"py", "yaml", "yml", "jsonl", "json", "pt", "md", "sh", "log", "safetensors"}


def command_lines(text: str) -> list[str]:
    """Every `draw …` invocation: lines of fenced blocks (continuations joined, `$ ` prompts and
    comments dropped, split at && ; |) and inline code spans that start with `draw `."""
    found = []
    for block in FENCE.findall(text):
        joined = re.sub(r"\\\n\s*", " ", block)
        for line in joined.splitlines():
            line = line.strip().removeprefix("$ ")
            for part in re.split(r"&&|;|\|", line):
                part = part.strip()
                if part.startswith("draw "):
                    found.append(part)
    found += [m.strip() for m in INLINE.findall(text)]
    return found


def _words(line: str) -> list[str]:
    line = line.split(" #", 1)[0]  # a trailing shell comment
    line = re.sub(r"\s+\(.*\)$", "", line)  # a trailing "(minutes)"-style note in a help epilog
    try:
        return shlex.split(line)
    except ValueError:  # an unbalanced quote in prose: the words as they stand
        return line.split()


def check_command(line: str, root=None) -> str | None:
    """None when ``line`` names a command of `draw` and only options it has, else what is wrong."""
    root = root or typer.main.get_command(app)
    words = _words(line)
    if not words or words[0] != "draw":
        return f"{line!r}: not a draw command"
    words = words[1:]
    if not words or words[0] in ("--help", "-h", "--version"):
        return None
    name, args = words[0], words[1:]
    if name.isupper():  # a placeholder: draw COMMAND --help
        return None
    command = getattr(root, "commands", {}).get(name)
    if command is None:
        return f"{line!r}: no command {name!r} (commands: {', '.join(sorted(root.commands))})"
    options = {opt for param in command.params for opt in (*param.opts, *param.secondary_opts) if opt.startswith("-")}
    options |= {"--help", "-h"}
    for word in args:
        if word == "--":
            break
        if word.startswith("-") and len(word) > 1 and not re.fullmatch(r"-\d[\d.e-]*", word):
            flag = word.split("=", 1)[0]
            if flag not in options:
                return f"{line!r}: draw {name} has no option {flag}"
    return None


SETTING_KEYS = {f"{section.name}.{key.name}" for section in dataclasses.fields(Settings)
                for key in dataclasses.fields(getattr(Settings(), section.name))}
SETTING_KEYS |= {f"{section}.{old}" for section, old in ALIASES}


def check_keys(text: str) -> list[str]:
    """The settings keys ``text`` names that do not exist (file names like train.py, and the
    lines that show the error for a wrong key, are not keys)."""
    named = set()
    for line in text.splitlines():
        if "unknown key" in line:
            continue
        named |= {f"{a}.{b}" for a, b in KEY.findall(line) if b not in FILE_SUFFIXES}
    return sorted(named - SETTING_KEYS)


def anchors(text: str) -> set[str]:
    """The #anchors GitHub gives a Markdown text's headings: lower case, punctuation dropped,
    spaces to hyphens, -1, -2 ... on repeats."""
    found: set[str] = set()
    for heading in re.findall(r"^#{1,6}\s+(.*?)\s*$", FENCE.sub("", text), re.M):
        slug = unique = re.sub(r"[^\w\- ]", "", heading.lower()).replace(" ", "-")
        repeat = 0
        while unique in found:
            repeat += 1
            unique = f"{slug}-{repeat}"
        found.add(unique)
    return found


def check_links(text: str, where: Path) -> list[str]:
    """Relative links and image paths of a Markdown file that do not resolve, and #anchors that name
    no heading of their page."""
    bad = []
    for target in LINK.findall(text):
        if re.match(r"[a-z][a-z+.-]*:", target):
            continue
        path, _, anchor = target.partition("#")
        page = where.parent / path if path else where
        if path and not page.exists():
            bad.append(target)
        elif anchor and page.suffix == ".md" and anchor not in anchors(page.read_text(encoding="utf-8")):
            bad.append(target)
    return bad


def _resolves(dotted: str) -> bool:
    """Whether ``dotted`` (drawcli.runs.checkpoint.load) is a module, or a module and its attributes."""
    parts = dotted.split(".")
    for i in range(len(parts), 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:i]))
        except ModuleNotFoundError:
            continue
        for attribute in parts[i:]:
            if not hasattr(obj, attribute):
                return False
            obj = getattr(obj, attribute)
        return True
    return False


def check_code_names(text: str) -> list[str]:
    """The ``drawcli/...`` paths (relative to the repository root) and ``drawcli.x.y`` names a text
    mentions that do not exist: a module moved or renamed leaves the docs behind."""
    bad = [path for path in CODE_PATH.findall(text) if not (ROOT / path).exists()]
    bad += [name for name in CODE_NAME.findall(text) if not _resolves(name)]
    return sorted(set(bad))


def python_blocks(text: str) -> list[str]:
    """The fenced ```python blocks of a Markdown text."""
    return re.findall(r"^```python\n(.*?)^```", text, re.S | re.M)


# ----------------------------------------------------------------------------- the real docs
def test_every_documented_command_line_parses():
    problems = []
    total = 0
    for doc in DOCS:
        for line in command_lines(doc.read_text(encoding="utf-8")):
            total += 1
            problem = check_command(line)
            if problem:
                problems.append(f"{doc.relative_to(ROOT)}: {problem}")
    assert total > 30, "the collector found almost no command lines"
    assert not problems, "\n".join(problems)


def test_every_help_example_parses():
    root = typer.main.get_command(app)
    checked = 0
    for name, command in root.commands.items():
        epilog = command.epilog or ""
        lines = [line.strip() for line in epilog.splitlines() if line.strip().startswith("draw ")]
        if not command.hidden:
            assert lines, f"draw {name} --help ends with no examples"
        for line in lines:
            checked += 1
            assert check_command(line, root) is None, check_command(line, root)
    assert checked >= 10


def test_every_settings_key_in_the_docs_exists():
    problems = {str(doc.relative_to(ROOT)): check_keys(doc.read_text(encoding="utf-8")) for doc in DOCS}
    assert not {k: v for k, v in problems.items() if v}


def test_every_relative_link_and_image_resolves():
    problems = {str(doc.relative_to(ROOT)): check_links(doc.read_text(encoding="utf-8"), doc) for doc in DOCS}
    assert not {k: v for k, v in problems.items() if v}


def test_every_module_path_and_name_in_the_docs_exists():
    problems = {str(doc.relative_to(ROOT)): check_code_names(doc.read_text(encoding="utf-8")) for doc in DOCS}
    assert not {k: v for k, v in problems.items() if v}


def test_the_python_examples_run_as_written(tmp_path, monkeypatch, synthetic_data_dir):
    """README's "From Python" and every block of docs/sharing.md and docs/api.md, in order, in a folder holding a run named
    quick (a tiny one: the blocks load it by name, directory and epoch-3 file). Only the placeholder
    path/to/clone of torch.hub is replaced, by this clone."""
    import torch

    from helpers import run_cli

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    monkeypatch.setenv("DRAW_DATA_DIR", str(synthetic_data_dir))  # drawcli.load_images reads the synthetic mnist
    r = run_cli("train", "--glimpses", "3", "--hidden", "16", "--latent", "4", "-b", "32", "--epochs", "3", "--device", "cpu",
                "--set", "train.eval_batch_size=50", "--name", "quick", env={"DRAW_DATA_DIR": str(synthetic_data_dir)})
    assert r.exit_code == 0, r.output
    for page in (ROOT / "README.md", ROOT / "docs" / "sharing.md", ROOT / "docs" / "api.md"):
        blocks = python_blocks(page.read_text(encoding="utf-8"))
        assert blocks, f"{page.name} has no python example"
        namespace: dict = {}
        for block in blocks:
            exec(compile(block.replace("path/to/clone", str(ROOT)), str(page), "exec"), namespace)
    assert namespace["drawer"].name == "@mnist" and namespace["model"].steps == 16  # api.md ran to its end


def test_the_first_commands_of_the_readme_install_torch_and_the_package_as_ci_does():
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    top = re.findall(r"```bash\n(.*?)\n```", readme, re.S)[:2]
    assert len(top) == 2 and all(block.startswith("pip install torch==2.13.0 && pip install -e ") for block in top), top
    assert "download.pytorch.org/whl/cpu" in (ROOT / ".ci" / "run").read_text()  # CI installs the CPU wheel


def test_the_training_page_documents_every_train_flag_and_setting():
    section = (ROOT / "docs" / "training.md").read_text(encoding="utf-8").split("## `draw train`")[1].split("## Runs")[0]
    command = typer.main.get_command(app).commands["train"]
    flags = [opt for p in command.params for opt in p.opts if opt.startswith("--") and opt != "--help"]
    missing = [f for f in flags if f"`{f}" not in section]
    assert not missing, missing
    block = yaml.safe_load(section.split("```yaml\n")[1].split("```")[0])
    defaults = Settings().to_dict()
    assert {s: set(v) for s, v in block.items()} == {s: set(v) for s, v in defaults.items()}


def test_the_outputs_of_the_examples_in_a_clone_are_ignored_by_git():
    if shutil.which("git") is None or subprocess.run(["git", "-C", ROOT, "rev-parse"], capture_output=True).returncode:
        pytest.skip("not a git checkout")
    names = ["quick.gif", "out.gif", "out.mp4", "recon.gif", "prior.gif", "attention.json", "digits.png", "digits.npy"]
    r = subprocess.run(["git", "-C", ROOT, "check-ignore", *names], capture_output=True, text=True)
    assert sorted(r.stdout.split()) == sorted(names)
    r = subprocess.run(["git", "-C", ROOT, "check-ignore", "docs/quick.gif", "docs/quick-samples.png"],
                       capture_output=True, text=True)
    assert r.stdout == ""  # the committed pictures stay tracked


# ----------------------------------------------------------------------------- the checker itself
BAD_DOC = """
Run it:

```bash
draw train --glimpses 16 --made-up-option 3 --name x
draw sample @mnist -n 4 && draw animat @mnist
```

Or `draw evaluate @mnist --limit 10 --no-such-flag`, with `train.eval_every` and `train.eval_evry`.
![missing](docs/no-such-picture.png) and [a page](docs/nowhere.md#part), [ok](README.md), [web](https://example.org/x).
[A section](README.md#results) and [one that is not there](README.md#no-such-section), [here](#the-quick-config).
"""


def test_the_checker_catches_made_up_options_commands_keys_and_broken_links():
    lines = command_lines(BAD_DOC)
    assert lines == ["draw train --glimpses 16 --made-up-option 3 --name x", "draw sample @mnist -n 4", "draw animat @mnist",
                     "draw evaluate @mnist --limit 10 --no-such-flag"]
    problems = [check_command(line) for line in lines]
    assert "draw train has no option --made-up-option" in problems[0]
    assert problems[1] is None
    assert "no command 'animat'" in problems[2]
    assert "draw evaluate has no option --no-such-flag" in problems[3]
    assert check_keys(BAD_DOC) == ["train.eval_evry"]
    assert check_links(BAD_DOC, ROOT / "README.md") == ["docs/no-such-picture.png", "docs/nowhere.md#part",
                                                        "README.md#no-such-section", "#the-quick-config"]
    assert "#the-quick-config" not in check_links(BAD_DOC, ROOT / "docs" / "results.md")  # a heading there
    assert {"the-quick-config", "a-folder-of-colour-pictures"} <= anchors((ROOT / "docs" / "results.md").read_text())
    assert anchors("# A\n## Your own pictures: `folder:PATH`\n## A\n```\n# not a heading\n```\n") == {
        "a", "your-own-pictures-folderpath", "a-1"}


def test_the_checker_catches_module_paths_and_names_that_moved():
    text = """The model is in `drawcli/model/draw.py` (once `drawcli/model.py`); pictures in drawcli/viz.py,
    bounds in `drawcli.bounds` and `drawcli.evaluation.bounds.likelihood_bounds`, weights in drawcli/runs/weights/.
    `drawcli.load("@mnist")`, `drawcli.runs.checkpoint.no_such_function`, `torch.ops.drawcli.loop_forward`,
    the cache ~/.cache/drawcli/native/, and `pip install "drawcli[plot]"`."""
    assert check_code_names(text) == ["drawcli.bounds", "drawcli.runs.checkpoint.no_such_function",
                                      "drawcli/model.py", "drawcli/viz.py"]


@pytest.mark.parametrize("line", ["draw train --set train.lr=1e-3 --lr=0.002 -T 16", "draw models --json", "draw --help"])
def test_the_checker_accepts_real_forms(line):
    assert check_command(line) is None


# ----------------------------------------------------------------------------- docs/commands.md
COMMANDS_PAGE = ROOT / "docs" / "commands.md"


def render_commands() -> str:
    """docs/commands.md, from the command tree: each command's help, arguments, options and examples."""
    root = typer.main.get_command(app)
    out = ["# The commands and their options", "",
           "Made from the `--help` texts by `DRAW_UPDATE_DOCS=1 python -m pytest tests/test_docs.py`; a test fails when",
           "this page and the commands differ. Settings behind the options: [training.md](training.md).", ""]
    for name in sorted(root.commands):
        command = root.commands[name]
        if command.hidden:
            continue
        text = " ".join((command.help or "").split())
        out += [f"## `draw {name}`", "", text, ""]
        rows = []
        for param in command.params:
            if getattr(param, "hidden", False):
                continue
            if param.param_type_name == "argument":
                rows.append((f"`{(param.metavar or param.name).upper()}` (argument)", "", " ".join((getattr(param, "help", None) or "").split())))
                continue
            names = ", ".join(f"`{o}`" for o in (*param.opts, *param.secondary_opts))
            default = param.default
            shown = "" if default is None or callable(default) or default is False or param.is_flag and not param.secondary_opts else str(default)
            if param.is_flag and param.secondary_opts and default is not None:  # None: the settings decide
                shown = param.opts[0] if default else param.secondary_opts[0]
            rows.append((names, f"`{shown}`" if shown else "", " ".join((param.help or "").split()).replace("|", "\\|")))
        if rows:
            out += ["| option | default | meaning |", "|---|---|---|"]
            out += [f"| {a} | {b} | {c} |" for a, b, c in rows]
            out.append("")
        examples = [re.sub(r"\s+\((.*)\)$", r"   # \1", line.strip())  # a trailing "(note)" becomes a shell comment
                    for line in (command.epilog or "").splitlines() if line.strip().startswith("draw ")]
        if examples:
            out += ["Examples:", "", "```bash", *examples, "```", ""]
    return "\n".join(out).rstrip("\n") + "\n"


def test_the_commands_page_is_made_from_the_commands():
    import os

    page = render_commands()
    # a flag pair whose default is None (the settings decide) shows no default, not its off form
    assert "| `--attention`, `--no-attention` |  | Gaussian" in page
    if os.environ.get("DRAW_UPDATE_DOCS") == "1":
        COMMANDS_PAGE.write_text(page, encoding="utf-8")
    assert COMMANDS_PAGE.read_text(encoding="utf-8") == page, "docs/commands.md is stale: DRAW_UPDATE_DOCS=1 python -m pytest tests/test_docs.py"
