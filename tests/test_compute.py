"""Heterogeneous compute on the round-based engines: stragglers cost the virtual clock exactly
their extra time, a deadline drops late nodes' messages, and the engines agree."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from conftest import small_config
from meshlearn.config import ConfigError, load_config
from meshlearn.engines.asynchronous import AsyncSimEngine
from meshlearn.experiment import Experiment
from meshlearn.results import read_jsonl, read_models
from meshlearn.runner import run_experiment

ROUNDS = 4


def stragglers(factor: float, **compute):
    return {"mean_s": 0.5, "classes": {"slow": {"nodes": [3, 6], "factor": factor}}, **compute}


def test_a_straggler_class_lengthens_sim_time_by_exactly_its_extra_time(tmp_path):
    """Each round waits for its slowest node: 5× slower stragglers add 4 × mean_s per round,
    on top of the emulated messages, and change nothing else."""
    network = {"latency_ms": 20.0}
    even = run_experiment(small_config(rounds=ROUNDS, compute=stragglers(1.0), network=network), tmp_path / "even")
    slow = run_experiment(small_config(rounds=ROUNDS, compute=stragglers(5.0), network=network), tmp_path / "slow")
    assert even["sim_time_s"] == pytest.approx(ROUNDS * (0.5 + 0.02))
    assert slow["sim_time_s"] - even["sim_time_s"] == pytest.approx(ROUNDS * 4 * 0.5, abs=1e-9)
    a, b = read_models(tmp_path / "even" / "models.safetensors"), read_models(tmp_path / "slow" / "models.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a) and slow["bytes_sent_per_node"] == even["bytes_sent_per_node"]


def test_deadline_drops_late_nodes_messages_and_caps_the_round(tmp_path):
    """With a 1 s deadline the 2.5 s stragglers are late every round: they still train and
    aggregate what they receive, but send nothing, and a round costs the deadline."""
    result = run_experiment(small_config(rounds=ROUNDS, evaluation__every=1, compute=stragglers(5.0, deadline_s=1.0)),
                            tmp_path / "run")
    assert result["sim_time_s"] == pytest.approx(ROUNDS * 1.0)
    final = {r["node"]: r for r in json.loads((tmp_path / "run" / "nodes_final.json").read_text())}
    assert final[3]["bytes_sent"] == final[6]["bytes_sent"] == 0 and final[0]["bytes_sent"] > 0
    assert np.isfinite(final[3]["train_loss"])
    rows = [r for r in read_jsonl(tmp_path / "run" / "nodes.jsonl") if r["node"] == 3]
    assert rows[1]["test_loss"] != rows[-1]["test_loss"]   # it still learns from what it receives


def test_sim_and_processes_agree_with_a_deadline(tmp_path):
    compute = stragglers(5.0, deadline_s=1.0)
    sim = run_experiment(small_config(rounds=ROUNDS, compute=compute), tmp_path / "sim")
    processes = run_experiment(small_config(rounds=ROUNDS, compute=compute,
                                            engine={"name": "processes", "workers": 2, "threads": 1}), tmp_path / "p")
    a, b = read_models(tmp_path / "sim" / "models.safetensors"), read_models(tmp_path / "p" / "models.safetensors")
    assert max(float((a[k] - b[k]).abs().max()) for k in a) <= 1e-6
    assert sim["bytes_sent_per_node"] == processes["bytes_sent_per_node"]


def test_classes_scale_the_asynchronous_simulators_times_too():
    plain = AsyncSimEngine(Experiment.build(load_config("examples/async_gossip.toml", ["nodes=8"])))
    cfg = load_config("examples/async_gossip.toml", ["nodes=8", "compute.classes.slow.nodes=[2]",
                                                      "compute.classes.slow.factor=4"])
    engine = AsyncSimEngine(Experiment.build(cfg))
    assert engine.durations[2] == pytest.approx(4 * plain.durations[2])
    assert np.array_equal(np.delete(engine.durations, 2), np.delete(plain.durations, 2))


def test_bad_compute_classes_are_refused():
    with pytest.raises(ConfigError, match=r"compute.classes.slow.nodes has ids \[9\] outside 0..7"):
        small_config(compute={"classes": {"slow": {"nodes": [9], "factor": 2}}})
    with pytest.raises(ConfigError, match="factor"):
        small_config(compute={"classes": {"slow": {"nodes": [1], "factor": 0}}})


def test_messages_arriving_after_the_deadline_are_dropped_timeout_bounded_epidemic_learning(tmp_path):
    """Epidemic Learning with a 1 s deadline: trainings take 0.5 s, links touching nodes 2 and 5
    add 700 ms, so exactly their messages arrive late and are dropped (still sent and charged),
    the others are averaged; processes drops the same ones."""
    cfg = dict(rounds=ROUNDS, topology={"kind": "epidemic", "peers": 3}, compute={"mean_s": 0.5, "deadline_s": 1.0},
               network={"classes": {"far": {"nodes": [2, 5], "latency_ms": 700.0}}})
    sim = run_experiment(small_config(**cfg), tmp_path / "sim")
    exp = Experiment.build(small_config(**cfg))
    far = {2, 5}
    late = sum(sum(1 for dst, src in zip(*exp.topology.graph(rnd).weights.nonzero()) if {int(dst), int(src)} & far)
               for rnd in range(1, ROUNDS + 1))
    rows = read_jsonl(tmp_path / "sim" / "rounds.jsonl")
    assert 0 < late and rows[-1]["messages_lost_per_node"] * 8 == late
    on_time = run_experiment(small_config(**{**cfg, "network": {"latency_ms": 300.0}}), tmp_path / "near")
    assert on_time["final"]["messages_lost_per_node"] == 0 and on_time["bytes_sent_per_node"] == sim["bytes_sent_per_node"]
    processes = run_experiment(small_config(**cfg, engine={"name": "processes", "workers": 2, "threads": 1,
                                                           "timeout_s": 60}), tmp_path / "p")
    a, b = read_models(tmp_path / "sim" / "models.safetensors"), read_models(tmp_path / "p" / "models.safetensors")
    assert max(float((a[k] - b[k]).abs().max()) for k in a) <= 1e-6
    assert processes["bytes_sent_per_node"] == sim["bytes_sent_per_node"]
