"""How runs end: signals stop a run with an honest summary and the engine closed, a diverging
run stops and says so, and a run directory is never overwritten or shared by accident."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
import tomli_w

from conftest import alive, small_config
from meshlearn.cli import main
from meshlearn.results import RunDirError, read_jsonl
from meshlearn.runner import run_experiment

REPO = Path(__file__).resolve().parents[1]


def write_config(path: Path, cfg) -> Path:
    path.write_text(tomli_w.dumps(cfg.to_toml_dict()))
    return path


def summary(out: Path) -> dict:
    return json.loads((out / "summary.json").read_text())


def start_and_sigterm(tmp_path: Path, *extra: str):
    """Start a long CLI run, send SIGTERM once a round is written; returns (exit code,
    stderr, the launcher's child pids seen before the signal, the run directory)."""
    cfg = small_config(nodes=8, rounds=200, evaluation__every=1)
    config = write_config(tmp_path / "long.toml", cfg)
    out, err = tmp_path / "run", tmp_path / "stderr.txt"
    with err.open("w") as stderr:
        proc = subprocess.Popen([sys.executable, "-m", "meshlearn.cli", "run", str(config), "--out", str(out),
                                 "--no-progress", *extra], cwd=REPO, stdout=subprocess.DEVNULL, stderr=stderr)
    launcher = psutil.Process(proc.pid)
    rounds = out / "rounds.jsonl"
    children: set[int] = set()
    try:
        deadline = time.monotonic() + 60
        while proc.poll() is None and time.monotonic() < deadline:
            children.update(c.pid for c in launcher.children(recursive=True))
            if rounds.exists() and len(read_jsonl(rounds)) >= 2:
                break
            time.sleep(0.05)
        assert proc.poll() is None, f"the run ended before the signal: {err.read_text()}"
        children.update(c.pid for c in launcher.children(recursive=True))
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(timeout=15)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    return code, err.read_text(), children, out


def test_sigterm_stops_a_cli_run_honestly(tmp_path):
    """SIGTERM ends a sim run like Ctrl-C: exit 143, the summary says which signal and the
    last finished round, the lock is gone, and one line says where the results are."""
    code, err, _, out = start_and_sigterm(tmp_path)
    assert code == 143, err
    result = summary(out)
    assert result["status"] == "interrupted" and result["signal"] == "SIGTERM"
    assert 0 < result["rounds_completed"] < 200
    assert result["rounds_completed"] >= read_jsonl(out / "rounds.jsonl")[-1]["round"]
    assert not (out / ".lock").exists()
    assert f"interrupted by SIGTERM: results so far are in {out}" in err and "Traceback" not in err


def test_sigterm_stops_a_processes_run_and_its_workers(tmp_path):
    """With worker processes: exit 143, an honest summary, and no worker left alive."""
    code, err, children, out = start_and_sigterm(tmp_path, "--engine", "processes", "--workers", "2")
    assert code == 143, err
    result = summary(out)
    assert result["status"] == "interrupted" and result["signal"] == "SIGTERM" and result["rounds_completed"] > 0
    assert len(children) >= 2
    deadline = time.monotonic() + 5
    while alive(children) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert alive(children) == []


def test_signal_handlers_are_restored_after_a_run(tmp_path):
    """A run inside a larger program (a notebook) leaves the program's handlers as they were."""
    mine = lambda signum, frame: None
    before = signal.signal(signal.SIGTERM, mine)
    try:
        handlers = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGHUP)}
        run_experiment(small_config(rounds=1), tmp_path / "run")
        assert signal.getsignal(signal.SIGTERM) is mine
        assert {s: signal.getsignal(s) for s in handlers} == handlers
    finally:
        signal.signal(signal.SIGTERM, before)


@pytest.mark.parametrize("name", ["SIGTERM", "SIGHUP", "SIGINT"])
def test_signal_inside_run_experiment_is_recorded(tmp_path, name):
    """The signal arrives mid-run in this process: RunInterrupted, the summary names it."""
    from meshlearn.runner import RunInterrupted

    def signal_at_round_2(rnd, record):
        if rnd == 2:
            os.kill(os.getpid(), getattr(signal, name))

    with pytest.raises(RunInterrupted) as caught:
        run_experiment(small_config(rounds=10), tmp_path, on_round=signal_at_round_2)
    assert caught.value.signal == name
    result = summary(tmp_path)
    assert (result["status"], result["signal"], result["rounds_completed"]) == ("interrupted", name, 2)
    assert not (tmp_path / ".lock").exists()


def test_diverging_run_stops_and_says_so(tmp_path, capsys):
    """lr = 1e20 blows the models up: the run stops at that round with status "diverged", the
    CLI warns and exits 3; with stop_on_divergence = false it runs to the end."""
    cfg = small_config(rounds=6, training__lr=1e20)
    config = write_config(tmp_path / "diverge.toml", cfg)
    out = tmp_path / "run"
    assert main(["run", str(config), "--out", str(out), "--no-progress"]) == 3
    result = summary(out)
    assert result["status"] == "diverged"
    rnd, nodes = result["diverged"]["round"], result["diverged"]["nodes"]
    assert 1 <= rnd < 6 and 1 <= nodes <= 8
    assert "signal" not in result
    assert result["rounds_completed"] == rnd
    assert read_jsonl(out / "rounds.jsonl")[-1]["round"] == rnd
    assert not (out / "models.safetensors").exists()
    err = capsys.readouterr().err
    assert f"diverged at round {rnd}" in err and "Traceback" not in err

    kept = run_experiment(small_config(rounds=6, training__lr=1e20, evaluation__stop_on_divergence=False),
                          tmp_path / "kept")
    assert kept["status"] == "completed" and kept["rounds_completed"] == 6
    assert kept["diverged"] == result["diverged"]


def test_divergence_rule_uses_models_and_evaluated_losses_not_training_loss():
    """Engines that hold the models are checked on the parameters; engines that do not (worker
    processes) on the evaluated test loss; a NaN training loss (a node that did not train) is
    not divergence."""
    from types import SimpleNamespace

    import numpy as np
    import torch

    from meshlearn.evaluation import Evaluation, RoundReport
    from meshlearn.runner import diverged_nodes

    nodes = np.arange(4)
    quiet = RoundReport(1, nodes, np.full(4, np.nan), np.zeros(4), np.zeros(4), 0.0)
    evaluated = RoundReport(2, nodes, np.full(4, np.nan), np.zeros(4), np.zeros(4), 0.0,
                            evaluation=Evaluation(np.array([1, 2, 3]), np.array([0.1, 0.0, 0.5]),
                                                  np.array([2.3, np.nan, np.inf]), 100))
    launcher = SimpleNamespace()   # holds no models
    assert diverged_nodes(launcher, quiet) == 0
    assert diverged_nodes(launcher, evaluated) == 2
    params = torch.zeros(4, 6)
    simulator = SimpleNamespace(nodes=SimpleNamespace(params=params))
    assert diverged_nodes(simulator, quiet) == 0
    params[0, 5], params[2, 1] = float("nan"), float("inf")
    assert diverged_nodes(simulator, quiet) == 2
    assert diverged_nodes(simulator, evaluated) == 3   # nodes 0 and 2 by their models, 3 by its loss


def test_healthy_run_is_not_flagged(tmp_path):
    result = run_experiment(small_config(rounds=2), tmp_path / "run")
    assert result["status"] == "completed" and "diverged" not in result


def test_existing_run_folder_is_refused_unless_overwrite(tmp_path, capsys):
    cfg = small_config(rounds=1)
    config = write_config(tmp_path / "small.toml", cfg)
    out = tmp_path / "run"
    assert main(["run", str(config), "--out", str(out), "--no-progress"]) == 0
    first = (out / "summary.json").read_text()
    capsys.readouterr()
    assert main(["run", str(config), "--out", str(out), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "--overwrite" in err and str(out) in err and "Traceback" not in err
    assert (out / "summary.json").read_text() == first   # untouched
    (out / "rounds.csv").write_text("stale\n")           # a logger's file from the earlier run
    (out / "notes.txt").write_text("mine\n")             # not a run file: kept
    assert main(["run", str(config), "--out", str(out), "--no-progress", "--overwrite", "--set", "rounds=2"]) == 0
    assert summary(out)["rounds_completed"] == 2 and summary(out)["run_id"] != json.loads(first)["run_id"]
    assert not (out / "rounds.csv").exists() and (out / "notes.txt").read_text() == "mine\n"
    with pytest.raises(RunDirError, match="overwrite"):
        run_experiment(cfg, out)
    assert run_experiment(cfg, out, overwrite=True)["status"] == "completed"


def test_lock_keeps_a_second_run_out_and_stale_locks_are_taken_over(tmp_path, capsys):
    cfg = small_config(rounds=1)
    out = tmp_path / "run"
    out.mkdir()
    (out / ".lock").write_text(f"{os.getpid()}\n")   # a live run holds the folder
    with pytest.raises(RunDirError, match=f"pid {os.getpid()}"):
        run_experiment(cfg, out)
    assert (out / ".lock").read_text() == f"{os.getpid()}\n" and sorted(os.listdir(out)) == [".lock"]
    config = write_config(tmp_path / "small.toml", cfg)
    assert main(["run", str(config), "--out", str(out), "--no-progress"]) == 2
    assert f"pid {os.getpid()}" in capsys.readouterr().err

    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()   # its pid is free now: the lock is stale
    (out / ".lock").write_text(f"{dead.pid}\n")
    assert run_experiment(cfg, out)["status"] == "completed"
    assert not (out / ".lock").exists()
