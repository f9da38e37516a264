"""Asynchronous gossip (gossip learning, AD-PSGD) on the simulator's event-driven clock."""

import json
import math

import numpy as np
import pytest
import torch

from conftest import small_config
from meshlearn import wire
from meshlearn.algorithms.asynchronous import REPLY, REQUEST
from meshlearn.config import ConfigError
from meshlearn.engines import AsyncSimEngine, build_engine
from meshlearn.experiment import Experiment
from meshlearn.results import read_jsonl
from meshlearn.runner import run_experiment

ALGORITHMS = ["gossip", "adpsgd"]


def async_config(algorithm, **overrides):
    base = {"algorithm__name": algorithm, "model": {"name": "logreg"}, "nodes": 10, "topology__degree": 3}
    return small_config(**{**base, **overrides})


def run(cfg, rounds=None):
    """The engine after ``rounds`` rounds (default: the config's), and every report."""
    engine = build_engine("sim", Experiment.build(cfg), "run")
    assert isinstance(engine, AsyncSimEngine)
    reports = [engine.step(rnd) for rnd in range((rounds or cfg.rounds) + 1)]
    return engine, reports


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_same_seed_same_run_other_seed_differs(algorithm):
    lossy = {"compute__distribution": "lognormal", "network__latency_ms": 300.0, "network__loss": 0.2}
    a, reports_a = run(async_config(algorithm, **lossy))
    b, reports_b = run(async_config(algorithm, **lossy))
    assert torch.equal(a.nodes.params, b.nodes.params)
    assert np.array_equal(a.last_loss.numpy(), b.last_loss.numpy(), equal_nan=True)
    for ra, rb in zip(reports_a, reports_b):
        assert np.array_equal(ra.bytes_sent, rb.bytes_sent)
        for name in ("updates", "messages_lost"):
            assert np.array_equal(ra.node_metrics[name], rb.node_metrics[name])
    assert a.messages_lost.sum() > 0 and a.events == b.events
    c, _ = run(async_config(algorithm, seed=4, **lossy))
    assert not torch.equal(a.nodes.params, c.nodes.params)


@pytest.mark.parametrize("distribution", ["uniform", "lognormal"])
def test_faster_nodes_train_more_often(distribution):
    engine, _ = run(async_config("gossip", rounds=8, compute__distribution=distribution), rounds=8)
    by_speed = engine.updates[np.argsort(engine.durations)]
    assert np.all(np.diff(by_speed) <= 0) and by_speed[0] > by_speed[-1]
    # no waiting in gossip: a node trains back to back, so it fits floor(T / duration) trainings
    assert np.array_equal(engine.updates, np.floor(8 / engine.durations + 1e-9).astype(np.int64))


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_constant_speeds_one_update_per_window(algorithm):
    _, reports = run(async_config(algorithm, compute__mean_s=0.1))
    for report in reports:
        assert np.all(report.node_metrics["updates"] == report.rnd)
        assert report.sim_time_s == pytest.approx(0.1 * report.rnd)


def test_adpsgd_waits_for_the_round_trip():
    # a training of 1 s plus 2 × 250 ms for the exchange: 4 cycles in 6 s
    engine, _ = run(async_config("adpsgd", rounds=6, network__latency_ms=250.0))
    assert np.all(engine.updates == 4)


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_models_learn_and_approach_consensus(algorithm):
    cfg = async_config(algorithm, rounds=12, model__same_init=False, compute__distribution="uniform",
                       evaluation__every=12, training__lr=0.1)
    _, reports = run(cfg)
    first, last = reports[0].evaluation, reports[-1].evaluation
    assert last.acc.mean() > first.acc.mean() + 0.3
    assert last.consensus_distance < 0.5 * first.consensus_distance


def test_adpsgd_pairwise_averaging_preserves_the_mean():
    cfg = async_config("adpsgd", rounds=30, training__lr=1e-9, compute__distribution="exponential",
                       evaluation__every=30)
    engine = build_engine("sim", Experiment.build(cfg), "run")
    engine.nodes.params = torch.randn_like(engine.nodes.params)
    before, spread = engine.nodes.params.mean(0), engine.nodes.params.var(0).sum()
    for rnd in range(1, 31):
        engine.step(rnd)
    assert torch.allclose(engine.nodes.params.mean(0), before, atol=1e-5)
    assert engine.nodes.params.var(0).sum() < 1e-3 * spread


@pytest.mark.parametrize("nodes", [10, 300])  # 300: ids above 255 take wider msgpack ints
def test_bytes_are_messages_times_exact_wire_size(nodes):
    cfg = async_config("gossip", nodes=nodes, rounds=2, topology__kind="ring", topology__degree=None,
                       data__dataset="synthetic", data__options={"train_samples": 4 * nodes, "shape": [3]})
    engine, reports = run(cfg)
    widths = wire.uint_nbytes(np.arange(nodes))
    checked = 0
    for node in range(nodes):  # one message per window; where both neighbours' ids have the
        left, right = (node - 1) % nodes, (node + 1) % nodes  # same width, its size is known
        if widths[left] != widths[right]:
            continue
        for rnd in (1, 2):
            msg = wire.Message("run", node, rnd, "model", {"params": engine.nodes.params[node]}, {"dst": left})
            size = sum(len(frame) for frame in wire.encode(msg))
            assert reports[rnd].bytes_sent[node] - reports[rnd - 1].bytes_sent[node] == size
            assert reports[rnd].header_bytes[node] - reports[rnd - 1].header_bytes[node] == wire.header_nbytes(msg)
        checked += 1
    assert checked >= nodes - 6  # 300: all but the nodes next to 127|128, 255|256 and 299|0
    node0 = {wire.message_nbytes(wire.Message("run", 0, 2, "model", {"params": engine.nodes.params[0]}, {"dst": dst}))
             for dst in engine.graph.receivers_of(0)}
    assert engine.message_bytes in node0


def test_adpsgd_charges_both_sides():
    engine, reports = run(async_config("adpsgd", rounds=3))
    request, reply = (wire.message_nbytes(wire.Message("run", 0, 1, "model", {"params": engine.nodes.params[0]},
                                                       {"dst": 1, "call": call})) for call in (REQUEST, REPLY))
    # one request and one reply per training, all ids and round numbers one msgpack byte
    assert reports[-1].bytes_sent.sum() == engine.updates.sum() * (request + reply)


def test_lossless_compression_is_charged_per_message():
    engine, reports = run(async_config("gossip", sharing__compression="zstd", rounds=2))
    raw = wire.message_nbytes(wire.Message("run", 0, 1, "model", {"params": engine.nodes.params[0]}, {"dst": 1}))
    last = reports[-1]
    assert np.array_equal(last.node_metrics["bytes_uncompressed"], engine.updates * raw)
    assert np.all(last.bytes_sent <= last.node_metrics["bytes_uncompressed"])


def test_async_algorithms_send_whole_models():
    with pytest.raises(ConfigError, match="sharing.name"):
        build_engine("sim", Experiment.build(async_config("gossip", sharing={"name": "topk"})), "run")


def test_runner_writes_rounds_on_the_virtual_clock(tmp_path):
    cfg = async_config("gossip", rounds=4, compute__mean_s=2.5, evaluation__every=2)
    summary = run_experiment(cfg, tmp_path)
    rounds = read_jsonl(tmp_path / "rounds.jsonl")
    assert [(r["round"], r["sim_time_s"]) for r in rounds] == [(0, 0.0), (2, 5.0), (4, 10.0)]
    assert rounds[-1]["updates_per_node"] == 4 and rounds[-1]["test_acc_mean"] > 0
    assert summary["status"] == "completed" and summary["events"] > 0
    assert json.loads((tmp_path / "summary.json").read_text())["sim_time_s"] == 10.0


def node_figures(out) -> dict[int, dict]:
    return {r["node"]: r for r in json.loads((out / "nodes_final.json").read_text())}


def test_gossip_on_processes_makes_the_simulators_trainings_and_messages(tmp_path):
    """Gossip over TCP with emulated delays, losses and churn, nodes on 2 workers: the same
    trainings and bytes per node as the simulator (they follow the emulated clock and each
    node's own streams); losses and models agree in their statistics, since real timing may
    order two close events differently."""
    trace = tmp_path / "trace.csv"
    trace.write_text("node,offline_from,online_from\n3,2,4\n")
    lossy = dict(rounds=6, compute__mean_s=0.2, compute__distribution="uniform", network__latency_ms=20.0,
                 network__loss=0.2, evaluation__every=3, availability={"model": "trace", "file": str(trace)})
    sim = run_experiment(async_config("gossip", **lossy), tmp_path / "sim")
    tcp = run_experiment(async_config("gossip", **lossy, engine={"name": "processes", "workers": 2, "threads": 1}),
                         tmp_path / "tcp")
    a, b = node_figures(tmp_path / "sim"), node_figures(tmp_path / "tcp")
    for name in ("updates", "bytes_sent", "rounds_online"):
        assert [a[i][name] for i in range(10)] == [b[i][name] for i in range(10)], name
    assert a[3]["rounds_online"] == 4
    # lost on the links: the same draws; lost at an offline receiver: when a message arrives really decides
    lost = [sum(f["messages_lost"] for f in figures.values()) for figures in (a, b)]
    assert lost[0] > 0 and abs(lost[0] - lost[1]) <= 2
    assert abs(sim["final"]["test_acc_mean"] - tcp["final"]["test_acc_mean"]) <= 0.03
    assert tcp["final"]["sim_time_s"] == pytest.approx(1.2)


def test_adpsgd_on_processes_waits_for_replies_over_tcp(tmp_path):
    """AD-PSGD's requests and replies cross workers: every training is followed by one request
    and (but for the last ones) its reply, both charged, and the run learns as on the
    simulator (the number of trainings depends on when replies really arrive)."""
    cfg = dict(rounds=6, compute__mean_s=0.2, network__latency_ms=20.0, evaluation__every=6)
    sim = run_experiment(async_config("adpsgd", **cfg), tmp_path / "sim")
    tcp = run_experiment(async_config("adpsgd", **cfg, engine={"name": "processes", "workers": 2, "threads": 1}),
                         tmp_path / "tcp")
    figures, on_sim = node_figures(tmp_path / "tcp"), node_figures(tmp_path / "sim")
    updates = sum(f["updates"] for f in figures.values())
    assert updates >= 0.8 * sum(f["updates"] for f in on_sim.values())
    size = math.gcd(*(f["bytes_sent"] for f in on_sim.values()))   # requests and replies have one size
    messages = sum(f["bytes_sent"] for f in figures.values()) / size
    # a request per training, and a reply to each but perhaps the last ones
    assert messages.is_integer() and 2 * updates - len(figures) <= messages <= 2 * updates
    assert abs(sim["final"]["test_acc_mean"] - tcp["final"]["test_acc_mean"]) <= 0.05


def test_a_worker_lends_out_only_its_own_nodes_models():
    from meshlearn.engines.async_worker import HostedRows

    rows = HostedRows(torch.zeros(2, 3), {4: 0, 7: 1})
    rows[7] = torch.ones(3)
    assert rows.params[1].sum() == 3 and rows[4].sum() == 0
    with pytest.raises(KeyError, match="node 5 is hosted by another worker"):
        rows[5]


def test_gossip_on_ray_actors_makes_the_simulators_trainings(ray_cluster, tmp_path):
    """The same asynchronous worker as a Ray actor: the simulator's trainings and bytes."""
    cfg = dict(rounds=4, compute__mean_s=0.25, compute__distribution="uniform", network__latency_ms=20.0)
    run_experiment(async_config("gossip", **cfg), tmp_path / "sim")
    run_experiment(async_config("gossip", **cfg, engine={"name": "ray", "workers": 2, "timeout_s": 120}),
                   tmp_path / "ray")
    a, b = node_figures(tmp_path / "sim"), node_figures(tmp_path / "ray")
    for name in ("updates", "bytes_sent"):
        assert [a[i][name] for i in range(10)] == [b[i][name] for i in range(10)], name
