"""``meshlearn list`` and ``meshlearn describe`` print what a config accepts, read from the code."""

import inspect
import sys

import pytest

from meshlearn import plugins
from meshlearn.cli import main
from meshlearn.commands.describe import default_text
from meshlearn.sharing import TopKSharing


@pytest.fixture(autouse=True)
def _wide_terminal(monkeypatch):
    """rich wraps table cells at the terminal width: keep every row on one line."""
    monkeypatch.setenv("COLUMNS", "250")


def table_rows(text: str) -> dict[str, list[str]]:
    """The rows of the rich tables in ``text``, by their first cell."""
    rows = {}
    for line in text.splitlines():
        cells = [c.strip() for c in line.split("│")[1:-1]]
        if cells and cells[0]:
            rows[cells[0]] = cells
    return rows


def test_list_shows_every_family(capsys):
    assert main(["list"]) == 0
    rows = table_rows(capsys.readouterr().out)
    assert set(plugins.FAMILIES) <= set(rows)
    for name, fam in plugins.FAMILIES.items():
        assert rows[name][1] == fam.key
        assert all(builtin in rows[name][2] for builtin in fam.builtins())


def test_list_family_shows_builtins_with_summaries(capsys):
    assert main(["list", "sharing"]) == 0
    rows = table_rows(capsys.readouterr().out)
    assert set(rows) == set(plugins.FAMILIES["sharing"].builtins())
    assert rows["topk"][1] == plugins.summary(TopKSharing)


def test_summary_is_the_whole_first_paragraph():
    """A first sentence that wraps over several docstring lines is not cut at the line end."""
    def loader(root=None):
        """Reads the task
        from CSV files.

        Details no listing needs."""

    assert plugins.summary(loader) == "Reads the task from CSV files."


def test_describe_builtin_shows_options_with_defaults_from_the_signature(capsys):
    assert main(["describe", "sharing", "topk"]) == 0
    out = capsys.readouterr().out
    rows = table_rows(out)
    signature = inspect.signature(TopKSharing).parameters
    assert rows["fraction"][2] == default_text(signature["fraction"].default) == "0.1"
    assert rows["error_feedback"][2] == "false"
    assert "share of the parameters sent" in rows["fraction"][3]
    assert "> 0" in rows["fraction"][1] and "≤ 1" in rows["fraction"][1]
    assert "seed" not in rows   # passed by the framework, not an option
    assert "sharing.options" in out and inspect.getdoc(TopKSharing) in out


def test_describe_dataset_entry_shows_its_load_options(capsys):
    assert main(["describe", "dataset", "synthetic"]) == 0
    rows = table_rows(capsys.readouterr().out)
    assert rows["train_samples"][2] == "6400"
    assert rows["shape"][2] == "[1, 28, 28]"
    assert "root" not in rows


USER_MODULE = '''
from typing import Annotated

from pydantic import Field

from meshlearn.sharing import FullSharing


class Damped(FullSharing):
    """Full sharing that keeps a share of the node's own model."""

    def __init__(self, keep: Annotated[float, Field(ge=0, lt=1, description="share of the own model kept")] = 0.25,
                 label: str = "damped", seed: int = 0):
        super().__init__(seed)
'''


@pytest.mark.parametrize("spec", ["describe_user_rules:Damped", "describe_user_rules.py:Damped"])
def test_describe_user_class_by_import_path(spec, tmp_path, monkeypatch, capsys):
    (tmp_path / "describe_user_rules.py").write_text(USER_MODULE)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", list(sys.path))
    monkeypatch.delitem(sys.modules, "describe_user_rules", raising=False)
    assert main(["describe", "sharing", spec]) == 0
    out = capsys.readouterr().out
    rows = table_rows(out)
    assert rows["keep"][1:] == ["float, ≥ 0, < 1", "0.25", "share of the own model kept"]
    assert rows["label"][1:3] == ["str", '"damped"']
    assert "keeps a share of the node's own model" in out


@pytest.mark.parametrize("argv, words", [
    (["describe", "sharing", "nope"], ["'nope' is unknown", "topk"]),
    (["describe", "sharing", "no_such_module:Thing"], ["could not be imported", "no_such_module"]),
    (["describe", "shareing", "topk"], ["unknown module family 'shareing'", "sharing"]),
    (["list", "modle"], ["unknown module family 'modle'", "model"]),
])
def test_unknown_names_fail_with_one_line(argv, words, capsys):
    assert main(argv) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    message = " ".join(captured.err.split())   # rich may wrap the line at the terminal width
    assert message.startswith("error:") and "Traceback" not in message
    assert all(word in message for word in words)
