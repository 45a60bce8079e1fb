"""drawcli/core/files.py: the files the commands write. Every output is checked before the work
starts (a folder that cannot be written, a path under a file), and a missing folder is created
and said."""

from __future__ import annotations

import pytest

from helpers import ok, one_error_line, run_cli, unwritable_folder

OUTPUTS = {  # a command that writes a file, with its file option last
    "sample": ["sample", "tiny", "-n", "2", "-o"],
    "animate": ["animate", "tiny", "-n", "2", "-o"],
    "inspect": ["inspect-attention", "tiny", "-n", "1", "--json"],
    "evaluate": ["evaluate", "tiny", "--samples", "1", "--limit", "4", "-o"],
    "plot": ["plot", "tiny", "-o"],
}
SUFFIX = {"sample": ".png", "animate": ".gif", "inspect": ".json", "evaluate": ".json", "plot": ".png"}


@pytest.mark.parametrize("command", list(OUTPUTS))
def test_every_output_is_checked_before_the_work(tiny_run, env, command, monkeypatch):
    if command == "plot":
        pytest.importorskip("matplotlib")
    import drawcli.commands.pictures
    import drawcli.pictures.plot
    import drawcli.runs.store

    def no_work(*args, **kwargs):
        raise AssertionError("the work started before the output was checked")

    with monkeypatch.context() as m:
        for module, name in ((drawcli.commands.pictures, "load_run"), (drawcli.runs.store, "load_run"), (drawcli.pictures.plot, "build_figure")):
            m.setattr(module, name, no_work)
        where = unwritable_folder()
        one_error_line(run_cli(*OUTPUTS[command], where / f"x{SUFFIX[command]}", env=env),
                       f"cannot write {where / ('x' + SUFFIX[command])}: ")
        (tiny_run.parent.parent / "README.md").write_text("a file")
        one_error_line(run_cli(*OUTPUTS[command], f"README.md/x{SUFFIX[command]}", env=env),
                       f"cannot write README.md/x{SUFFIX[command]}: README.md is not a folder")
    # A folder that is missing is created, and said.
    r = ok(run_cli(*OUTPUTS[command], f"new/sub/x{SUFFIX[command]}", env=env))
    assert "created the folder new/sub for x" in r.output and (tiny_run.parent.parent / "new" / "sub" / f"x{SUFFIX[command]}").is_file()
