"""Sweeps: the grid × seeds runs once each, an index lists them, and a rerun continues."""

from __future__ import annotations

import json
import signal
from pathlib import Path

import pytest
import tomli_w

from conftest import small_config
from meshlearn.cli import main
from meshlearn.config import ConfigError
from meshlearn.runner import RunInterrupted, run_experiment
from meshlearn.sweep import parse_values, plan_sweep, run_sweep


def config_file(tmp_path: Path) -> Path:
    path = tmp_path / "exp.toml"
    path.write_text(tomli_w.dumps(small_config(rounds=3).to_toml_dict()))
    return path


def test_grid_times_seeds_runs_once_and_continues(tmp_path):
    """2 values × 2 seeds: 4 runs in 4 folders and an index of 4; run again, nothing reruns;
    a run whose results are gone runs again, alone."""
    config, out, lines = config_file(tmp_path), tmp_path / "sweep", []
    index = run_sweep(config, {"training.lr": [0.05, 0.1]}, 2, out, jobs=2, log=lines.append)
    assert len(index) == 4 and {e["status"] for e in index} == {"completed"}
    assert sorted((e["values"]["training.lr"], e["seed"]) for e in index) == [(0.05, 3), (0.05, 4), (0.1, 3), (0.1, 4)]
    assert json.loads((out / "index.json").read_text()) == index
    summary = json.loads((out / "training.lr=0.1" / "seed=4" / "summary.json").read_text())
    assert summary["seed"] == 4 and summary["status"] == "completed"
    lines.clear()
    run_sweep(config, {"training.lr": [0.05, 0.1]}, 2, out, log=lines.append)
    assert lines == ["sweep: 4 runs, 4 already ended, 0 to run, 1 at a time"]
    (out / "training.lr=0.05" / "seed=3" / "summary.json").unlink()
    lines.clear()
    run_sweep(config, {"training.lr": [0.05, 0.1]}, 2, out, log=lines.append)
    assert lines[0] == "sweep: 4 runs, 3 already ended, 1 to run, 1 at a time" and len(lines) == 2


def test_seeds_alone_go_to_one_folder_per_seed(tmp_path):
    runs = plan_sweep(config_file(tmp_path), {}, 2, tmp_path / "seeds")
    assert [(r.out, r.values) for r in runs] == [(tmp_path / "seeds" / "seed=3", ()), (tmp_path / "seeds" / "seed=4", ())]


def test_interrupted_run_of_a_sweep_is_resumed(tmp_path):
    config, out = config_file(tmp_path), tmp_path / "sweep"
    (run,) = plan_sweep(config, {"training.lr": [0.1]}, 1, out)
    cfg = small_config(rounds=3, training__lr=0.1, checkpoint__every=1)
    with pytest.raises(RunInterrupted):
        run_experiment(cfg, run.out, on_round=lambda rnd, record: rnd == 2 and signal.raise_signal(signal.SIGINT))
    assert run.status() == "interrupted"
    (entry,) = run_sweep(config, {"training.lr": [0.1]}, 1, out, log=lambda line: None)
    summary = json.loads((run.out / "summary.json").read_text())
    assert entry["status"] == "completed" and summary["resumed"][0]["from_round"] == 2


def test_values_parse_as_toml_and_bad_ones_are_refused_before_running(tmp_path, capsys):
    assert parse_values("training.lr=0.05,0.1") == ("training.lr", [0.05, 0.1])
    assert parse_values("model.options.hidden=[16],[32, 32]") == ("model.options.hidden", [[16], [32, 32]])
    assert parse_values("training.optimizer=sgd,adam") == ("training.optimizer", ["sgd", "adam"])
    with pytest.raises(ConfigError, match="expected key=value"):
        parse_values("training.lr")
    config, out = config_file(tmp_path), tmp_path / "sweep"
    assert main(["sweep", str(config), "--set", "training.lr=0.1,-1", "--out", str(out)]) == 2
    assert "training.lr" in capsys.readouterr().err and not out.exists()
