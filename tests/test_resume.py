"""Checkpoint and resume: a run killed at a random round and resumed ends as the same run
uninterrupted (sim: bit for bit; processes: within 1e-6), and checkpoints hold no pickle."""

from __future__ import annotations

import json
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import psutil
import pytest
import tomli_w
import torch

from conftest import alive, small_config
from meshlearn.checkpoint import CheckpointError, decode, encode, load_checkpoint
from meshlearn.cli import main
from meshlearn.config import load_config
from meshlearn.results import RunDirError, read_jsonl, read_models
from meshlearn.runner import RunInterrupted, resume_run, run_experiment

REPO = Path(__file__).resolve().parents[1]
ROUNDS = 10

# a run slowed down by a pause after every round (argv[3] seconds), so that it can be killed in the middle
SLOW_RUN = ("import sys, time\n"
            "from meshlearn.config import load_config\n"
            "from meshlearn.runner import run_experiment\n"
            "pause = float(sys.argv[3])\n"
            "run_experiment(load_config(sys.argv[1]), sys.argv[2], on_round=lambda rnd, record: time.sleep(pause))\n")


def _choco(**kw):
    return small_config(sharing={"name": "choco", "options": {"gamma": 0.5, "compressor": {
        "name": "topk", "options": {"fraction": 0.25}}}}, **kw)


def _topk_error_feedback(**kw):
    return small_config(sharing={"name": "topk", "options": {"fraction": 0.25, "error_feedback": True}}, **kw)


def _dp_sgd(**kw):
    return small_config(privacy={"dp": {"noise_multiplier": 1.0, "clip_norm": 1.0}}, **kw)


def _async_gossip(**kw):
    cfg = load_config(REPO / "examples" / "async_gossip.toml",
                      ["nodes=12", "network.loss=0.1", "network.latency_ms=30", "evaluation.test_samples=200"])
    raw = cfg.model_dump(mode="json")
    for key, value in kw.items():
        section, _, leaf = key.partition("__")
        if leaf:
            raw[section][leaf] = value
        else:
            raw[section] = value
    from meshlearn.config import parse_config

    return parse_config(raw)


CASES = {"d-psgd": small_config, "choco": _choco, "topk-error-feedback": _topk_error_feedback, "dp-sgd": _dp_sgd,
         "async-gossip": _async_gossip}


def config(case: str, **kw):
    return CASES[case](**{"rounds": ROUNDS, "checkpoint__every": 1, "evaluation__every": 1, "engine__threads": 1,
                          **kw})


def kill_at_random_round(cfg, out: Path, tmp_path: Path, first: int = 2, pause: float = 0.25) -> int:
    """Run ``cfg`` in a child process and SIGKILL it once a random round (``first`` to
    rounds - 3) is recorded; returns that round. The child pauses ``pause`` s after every
    round so the kill lands mid-run."""
    target = random.randint(first, cfg.rounds - 3)
    path = tmp_path / "run.toml"
    path.write_text(tomli_w.dumps(cfg.to_toml_dict()))
    proc = subprocess.Popen([sys.executable, "-c", SLOW_RUN, str(path), str(out), str(pause)], cwd=REPO,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 120
        while proc.poll() is None and time.monotonic() < deadline:
            if (out / "rounds.jsonl").exists() and len(read_jsonl(out / "rounds.jsonl")) > target:
                break
            time.sleep(0.02)
        assert proc.poll() is None, f"the run ended before round {target}: {proc.stderr.read().decode()}"
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    return target


def same_records(a: Path, b: Path) -> tuple[list, list]:
    """The round records of two runs without their timings (which differ between any two runs)."""
    strip = lambda rows: [{k: v for k, v in row.items() if "time" not in k} for row in rows]
    return strip(read_jsonl(a / "rounds.jsonl")), strip(read_jsonl(b / "rounds.jsonl"))


def model_difference(a: Path, b: Path) -> float:
    """The largest difference between two runs' final models (0.0: bit for bit the same)."""
    x, y = read_models(a / "models.safetensors"), read_models(b / "models.safetensors")
    return max(float((x[name] - y[name]).abs().max()) for name in x)


def sigterm_at(stop_round: int):
    """An on_round hook that sends this process SIGTERM after round ``stop_round``."""
    def hook(rnd, record):
        if rnd == stop_round:
            signal.raise_signal(signal.SIGTERM)
    return hook


@pytest.mark.parametrize("case", list(CASES))
def test_sim_run_killed_at_a_random_round_resumes_bit_identical(tmp_path, case):
    """D-PSGD, CHOCO-SGD (its public copies), top-k with error feedback (its residual), DP-SGD
    (noise generators, accountants) and asynchronous gossip (clock, event queue, messages in
    flight): SIGKILL, then `meshlearn resume`, gives the uninterrupted run's models exactly."""
    cfg = config(case)
    whole = run_experiment(cfg, tmp_path / "whole")
    out = tmp_path / "killed"
    target = kill_at_random_round(cfg, out, tmp_path)
    assert json.loads((out / "summary.json").read_text())["status"] == "running"   # killed: no chance to say more
    assert main(["resume", str(out), "--no-progress"]) == 0
    result = json.loads((out / "summary.json").read_text())
    assert result["status"] == "completed" and result["rounds_completed"] == ROUNDS
    assert result["resumed"][0]["from_round"] in (target - 1, target, target + 1)
    assert model_difference(tmp_path / "whole", out) == 0.0, f"killed after round {target}"
    expected, got = same_records(tmp_path / "whole", out)
    assert got == expected and len(got) == ROUNDS + 1
    assert result["bytes_sent_per_node"] == whole["bytes_sent_per_node"]
    if case == "dp-sgd":
        assert result["final"]["epsilon_per_node"] == whole["final"]["epsilon_per_node"] > 0


def test_processes_run_killed_at_a_random_round_resumes_within_1e6(tmp_path):
    """The launcher of a processes run is SIGKILLed: its workers exit on their own, and the
    resumed run (workers restored from the states they sent) matches the uninterrupted one.
    Checkpoints here follow elapsed time, so the launcher asks the workers for their state a
    few rounds ahead; 100 ms links keep the workers from finishing before it can."""
    cfg = config("d-psgd", rounds=12, engine__name="processes", engine__workers=2, checkpoint__every=0,
                 checkpoint__every_s=0.01, network__latency_ms=100)
    run_experiment(cfg, tmp_path / "whole")
    out = tmp_path / "killed"
    target = kill_at_random_round(cfg, out, tmp_path, first=6, pause=0)
    workers = [p.pid for p in psutil.process_iter(["cmdline"])
               if "meshlearn.engines.worker" in " ".join(p.info["cmdline"] or [])]
    deadline = time.monotonic() + 10
    while alive(workers) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert alive(workers) == []
    saved, hosts = load_checkpoint(out)
    assert sorted(hosts) == [0, 1] and saved["round"] <= target + 1
    assert main(["resume", str(out), "--no-progress"]) == 0
    result = json.loads((out / "summary.json").read_text())
    assert result["status"] == "completed" and result["engine"] == "processes"
    assert model_difference(tmp_path / "whole", out) <= 1e-6, f"killed after round {target}"


def test_sigterm_on_sim_checkpoints_the_round_it_ends(tmp_path):
    """A stop signal lets the round in progress end; the checkpoint is of that round, so
    nothing done before the signal is lost."""
    cfg = small_config(rounds=8, evaluation__every=1)   # checkpoint by time only (every 300 s): never by count here
    with pytest.raises(RunInterrupted):
        run_experiment(cfg, tmp_path / "run", on_round=sigterm_at(3))
    result = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert (result["status"], result["rounds_completed"], result["checkpoint_round"]) == ("interrupted", 3, 3)
    assert (tmp_path / "run" / "checkpoint" / "run.json").is_file()
    resume_run(tmp_path / "run")
    assert not (tmp_path / "run" / "checkpoint").exists()   # the run ended: nothing left to resume
    run_experiment(cfg, tmp_path / "whole")
    assert model_difference(tmp_path / "whole", tmp_path / "run") == 0.0


def test_sigterm_on_processes_goes_on_to_a_checkpoint(tmp_path):
    """On worker processes the launcher asks for the workers' state a few rounds ahead, saves
    it, then stops; resuming gives the uninterrupted run's models."""
    cfg = small_config(rounds=12, evaluation__every=1, engine={"name": "processes", "workers": 2, "threads": 1})
    with pytest.raises(RunInterrupted):
        run_experiment(cfg, tmp_path / "run", on_round=sigterm_at(3))
    result = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert result["status"] == "interrupted" and 3 < result["checkpoint_round"] == result["rounds_completed"] < 12
    assert resume_run(tmp_path / "run")["status"] == "completed"
    run_experiment(cfg, tmp_path / "whole")
    assert model_difference(tmp_path / "whole", tmp_path / "run") <= 1e-6


def test_resume_refuses_what_it_cannot_continue(tmp_path, capsys):
    """A finished run, a run without a checkpoint, and a damaged checkpoint: exit 2 and a
    message that says why, never a traceback."""
    run_experiment(small_config(rounds=2, checkpoint__every=1), tmp_path / "done")
    assert main(["resume", str(tmp_path / "done")]) == 2
    assert "has completed: there is nothing to resume" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    assert main(["resume", str(tmp_path / "empty")]) == 2
    assert "holds no checkpoint" in capsys.readouterr().err
    with pytest.raises(RunInterrupted):
        run_experiment(small_config(rounds=6, checkpoint__every=1), tmp_path / "cut",
                       on_round=lambda rnd, record: rnd == 3 and signal.raise_signal(signal.SIGINT))
    (tmp_path / "cut" / "checkpoint" / "host-0.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json")
    assert main(["resume", str(tmp_path / "cut"), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "checkpoint file is damaged" in err and "Traceback" not in err


def test_encoding_keeps_every_kind_of_leaf_and_runs_no_code():
    """Tensors, arrays, integer keys, tuples as lists, numbers and None come back as saved; the
    blob is a safetensors file (a header and raw bytes), not a pickle."""
    tree = {"params": torch.arange(6.0).reshape(2, 3), "order": np.array([3, 1, 2]),
            "per_node": {4: {"pos": 2, "rng": {"state": 2**100}}, 7: None}, "clocks": [1.5, None], "name": "x"}
    blob = encode(tree)
    assert not blob.startswith(b"\x80")   # no pickle protocol marker
    back = decode(blob)
    assert torch.equal(back["params"], tree["params"]) and np.array_equal(back["order"], tree["order"])
    assert back["per_node"] == {4: {"pos": 2, "rng": {"state": 2**100}}, 7: None}
    assert back["clocks"] == [1.5, None] and back["name"] == "x"
    with pytest.raises(TypeError, match="per_node/4"):
        encode({"per_node": {4: object()}})
    with pytest.raises(CheckpointError):
        decode(b"\x00" * 16)
    assert issubclass(CheckpointError, RunDirError)


@pytest.mark.parametrize("case", ["secagg", "server-momentum", "ditto", "churn", "peer-sampling"])
def test_other_state_resumes_exactly(tmp_path, case):
    """State kept outside nodes.state (a server's momentum, secure aggregation's counters with
    fresh keys), a second model per node (Ditto), churn's sessions and peer-sampling views also
    resume exactly."""
    options = {"secagg": {"privacy": {"secagg": {}}},
               "server-momentum": {"algorithm": {"name": "parameter_server", "options": {"server_momentum": 0.9}},
                                   "topology": {"kind": "star"}},
               "ditto": {"algorithm": {"name": "ditto"}},
               "churn": {"availability": {"model": "sessions", "mean_online": 3, "mean_offline": 2}},
               "peer-sampling": {"topology": {"kind": "peer_sampling", "peers": 2, "options": {"view_size": 4}}}}[case]
    cfg = small_config(rounds=6, checkpoint__every=1, **options)
    run_experiment(cfg, tmp_path / "whole")

    def stop_at_round_4(rnd, record):
        if rnd == 4:
            raise KeyboardInterrupt   # not a signal: the run stops at once, from the checkpoint of round 3

    with pytest.raises(KeyboardInterrupt):
        run_experiment(cfg, tmp_path / "cut", on_round=stop_at_round_4)
    assert resume_run(tmp_path / "cut")["resumed"][0]["from_round"] == 3
    assert model_difference(tmp_path / "whole", tmp_path / "cut") == 0.0
    expected, got = same_records(tmp_path / "whole", tmp_path / "cut")
    assert got == expected
