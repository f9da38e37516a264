"""Network emulation ([network]): link properties, the simulator's virtual clock, and the
networked engine's real delays and losses, which must lose exactly what the simulator loses."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from conftest import small_config
from meshlearn.config import parse_config
from meshlearn.engines.hosts import split_nodes
from meshlearn.engines.network import LinkModel
from meshlearn.engines.processes import ProcessesEngine
from meshlearn.engines.sim import SimEngine
from meshlearn.evaluation import round_record
from meshlearn.experiment import Experiment

RUN_ID = "0123456789ab"


def run_sim(cfg):
    sim = SimEngine(Experiment.build(cfg), RUN_ID)
    return sim, [sim.step(rnd) for rnd in range(cfg.rounds + 1)]


def edges(cfg) -> list[tuple[int, int]]:
    """Directed links (src, dst) of the config's communication graph."""
    off = Experiment.build(cfg).topology.graph(1).weights
    coo = off.tocoo()
    return sorted(zip(coo.col.tolist(), coo.row.tolist()))


def test_link_model_classes_and_file(tmp_path):
    """Defaults, then the slowest of the endpoints' classes, then the file's rows."""
    base = small_config(nodes=6)
    links = edges(base)
    a, b = next((s, d) for s, d in links if 0 not in (s, d))     # a link outside the class
    c, d = next((s, d) for s, d in links if s == 0)               # a link from the class
    csv = tmp_path / "links.csv"
    csv.write_text(f"src,dst,latency_ms,bandwidth_mbps,loss\n{a},{b},7,,0.25\n{c},{d},,100,\n")
    raw = base.model_dump(mode="json")
    raw["network"] = {"latency_ms": 10, "classes": {"edge": {"nodes": [0], "latency_ms": 50, "bandwidth_mbps": 2,
                                                             "loss": 0.5}},
                      "file": str(csv)}
    cfg = parse_config(raw)
    off = Experiment.build(cfg).topology.graph(1).weights
    model = LinkModel(cfg.network, off, cfg.seed)
    assert model.enabled
    for src, dst in links:
        pos = model.position(dst, src)
        latency, rate, loss = model.latency_s[pos], model.rate[pos], model.loss[pos]
        if (src, dst) == (a, b):
            assert (latency, rate, loss) == (0.007, np.inf, 0.25)          # file: latency and loss, rate kept
        elif (src, dst) == (c, d):
            assert (latency, rate, loss) == (0.05, 100e6 / 8, 0.5)        # file: bandwidth only
        elif 0 in (src, dst):
            assert (latency, rate, loss) == (0.05, 2e6 / 8, 0.5)          # the class's values
        else:
            assert (latency, rate, loss) == (0.01, np.inf, 0.0)           # the defaults
    pos = model.position(d, c)
    assert model.delay(pos, 1250) == pytest.approx(0.05 + 1250 / (100e6 / 8))
    assert model.position(0, 0) is None
    # losses: deterministic per (seed, round), only where loss > 0, and different across rounds
    draws = [model.lost(rnd) for rnd in range(1, 40)]
    assert all(np.array_equal(x, LinkModel(cfg.network, off, cfg.seed).lost(rnd))
               for rnd, x in enumerate(draws[:3], start=1))
    assert not np.stack(draws)[:, model.loss == 0].any()
    rate = np.stack(draws)[:, model.loss == 0.5].mean()
    assert 0.3 < rate < 0.7
    assert len({x.tobytes() for x in draws}) > 1
    assert not np.array_equal(draws[0], LinkModel(cfg.network, off, cfg.seed + 1).lost(1))


def test_link_file_rejects_non_edges_and_bad_headers(tmp_path):
    base = small_config(nodes=6)
    src, dst = next((s, t) for s in range(6) for t in range(6) if s != t and (s, t) not in set(edges(base)))
    for text, error in [(f"src,dst,latency_ms\n{src},{dst},5\n", "not an edge"),
                        ("from,to,latency_ms\n0,1,5\n", "needs a header"),
                        ("src,dst,latency_ms\n0,1,fast\n", "line 2")]:
        path = tmp_path / "links.csv"
        path.write_text(text)
        raw = base.model_dump(mode="json")
        raw["network"] = {"file": str(path)}
        cfg = parse_config(raw)
        off = Experiment.build(cfg).topology.graph(1).weights
        with pytest.raises(ValueError, match=error):
            LinkModel(cfg.network, off, cfg.seed)


@pytest.mark.parametrize("bandwidth_mbps", [None, 8.0])
def test_sim_clock_adds_latency_and_transfer_time(bandwidth_mbps):
    """sim_time_s = training time + per round the slowest delivered message (links in parallel)."""
    rounds = 4
    cfg = small_config(nodes=8, rounds=rounds, network__latency_ms=200, network__bandwidth_mbps=bandwidth_mbps)
    sim, reports = run_sim(cfg)
    plain, plain_reports = run_sim(small_config(nodes=8, rounds=rounds))
    assert plain_reports[-1].sim_time_s is None
    transfer = sim.message_bytes * 8 / (bandwidth_mbps * 1e6) if bandwidth_mbps else 0.0
    for rnd, report in enumerate(reports):
        assert report.sim_time_s - report.wall_time_s == pytest.approx(rnd * (0.2 + transfer), rel=1e-9, abs=1e-12)
    record, _ = round_record(reports[-1])
    assert record["sim_time_s"] - record["wall_time_s"] >= 0.8 - 1e-9
    # the clock only measures: same models and bytes as without emulation
    assert torch.equal(sim.nodes.params, plain.nodes.params)
    np.testing.assert_array_equal(reports[-1].bytes_sent, plain_reports[-1].bytes_sent)


def test_processes_delay_and_lose_like_the_sim(tmp_path):
    """Worker processes under latency, per-link file latencies and 30 % loss: every round
    takes at least the latency, the same messages are lost as in the simulator (per node),
    and the models agree. Worker 0's internal links are slow (400 ms) while the others are
    100 ms, so worker 1 runs a round ahead and worker 0 must buffer its early messages."""
    base = small_config(nodes=8, rounds=3, engine__timeout_s=120)
    first = set(split_nodes(base.nodes, 2)[0])
    csv = tmp_path / "links.csv"
    csv.write_text("src,dst,latency_ms\n" + "".join(f"{s},{d},400\n" for s, d in edges(base)
                                                      if s in first and d in first))
    raw = base.model_dump(mode="json")
    raw["network"] = {"latency_ms": 100, "loss": 0.3, "file": str(csv)}
    cfg = parse_config(raw)
    sim, sim_reports = run_sim(cfg)
    engine = ProcessesEngine(Experiment.build(cfg), RUN_ID, workers=2, keep_models=True)
    engine.start()
    try:
        reports = [engine.step(rnd) for rnd in range(cfg.rounds + 1)]
    finally:
        extra = engine.close()
    assert extra["failures"] == []
    walls = [r.wall_time_s for r in reports]
    assert all(b - a >= 0.1 for a, b in zip(walls, walls[1:])), walls
    lost = [r.node_metrics["messages_lost"] for r in reports]
    assert lost[-1].sum() > 0
    for ours, theirs, report in zip(lost, (r.node_metrics["messages_lost"] for r in sim_reports), reports):
        np.testing.assert_array_equal(ours, theirs)
        np.testing.assert_array_equal(report.node_metrics["messages_missing"], 0)   # lost ≠ timed out
    assert (engine.params - sim.nodes.params).abs().max().item() <= 1e-5
    for a, b in zip(reports, sim_reports):
        assert round_record(a)[0]["test_acc_mean"] == pytest.approx(round_record(b)[0]["test_acc_mean"], abs=1e-6)
        np.testing.assert_array_equal(a.bytes_sent, b.bytes_sent)   # lost messages were still sent
        # received by the end of a round, and counted in it: all sent but the lost (messages of equal size)
        lost_bytes = a.node_metrics["messages_lost"].sum() * sim.message_bytes
        assert a.node_metrics["bytes_received"].sum() == a.bytes_sent.sum() - lost_bytes
