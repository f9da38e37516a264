"""Private parameters (``[sharing] private``): matching parameters never leave their node, are
never mixed, and are not counted in bytes, whatever the scheme and the engine."""

from __future__ import annotations

import pytest
import torch

from conftest import small_config
from meshlearn import wire
from meshlearn.config import ConfigError
from meshlearn.engines.sim import SimEngine
from meshlearn.experiment import Experiment
from test_processes import RUN_ID, assert_same_run, run_processes, run_sim

PRIVATE = ["net.2.*"]   # the output layer of mlp(hidden=[16]) on digits: 10·16 + 10 weights
SIZE, SHARED = 1210, 1040   # 64·16 + 16 shared (net.0.*), then the 170 private ones
MLP = {"name": "mlp", "options": {"hidden": [16]}, "same_init": False}   # distinct models: mixing shows

SCHEMES = {
    "full": {"name": "full"},
    "random": {"name": "random", "options": {"fraction": 0.2}},
    "topk": {"name": "topk", "options": {"fraction": 0.2, "error_feedback": True}},
    "choco": {"name": "choco", "options": {"gamma": 0.5, "compressor": {"name": "randomk", "fraction": 0.3}}},
    "quantize": {"name": "quantize", "options": {"levels": 7, "bucket_size": 100}},
    "secagg": {"name": "full"},
}


def private_config(scheme: str = "full", **overrides):
    secagg = {"privacy": {"secagg": {}}} if scheme == "secagg" else {}
    return small_config(sharing={**SCHEMES[scheme], "private": PRIVATE}, **secagg, **overrides)


def untrained_sim(cfg) -> SimEngine:
    """A simulator whose rounds only share: training would let a node's private parameters
    shape its own shared ones, which is allowed; here only the sharing step is under test."""
    sim = SimEngine(Experiment.build(cfg), RUN_ID)
    sim.train = lambda nodes, active=None: torch.zeros(len(nodes))
    return sim


def refusal(**overrides) -> str:
    with pytest.raises(ConfigError) as err:
        Experiment.build(small_config(**overrides))
    return str(err.value)


def test_patterns_are_checked_against_the_model():
    message = refusal(sharing__private=["net.2.*", "head.*"])
    assert "sharing.private" in message and "['head.*']" in message
    assert "'net.0.weight', 'net.0.bias', 'net.2.weight', 'net.2.bias'" in message   # what could be named
    assert "nothing would be shared" in refusal(sharing__private=["net.0.*", "net.2.*"])
    assert "nothing would be shared" in refusal(sharing__private=["*"])


def test_private_parameters_are_refused_where_models_bypass_the_scheme():
    message = refusal(sharing__private=PRIVATE, byzantine={"count": 1, "attack": "sign_flip"})
    assert "sharing.private" in message and "[byzantine]" in message
    message = refusal(sharing__private=PRIVATE, nodes=4, topology={"kind": "star"},
                      algorithm={"name": "parameter_server"})
    assert "sharing.private" in message and "'parameter_server'" in message
    assert "outside the sharing scheme" in refusal(sharing__private=PRIVATE, algorithm={"name": "gossip"})


def test_shared_columns_follow_the_layout():
    columns = Experiment.build(small_config(sharing__private=["net.0.bias", "*.2.weight"])).shared_columns()
    assert columns.tolist() == [*range(0, 1024), *range(1200, 1210)]


def test_only_shared_parameters_are_sent_and_counted():
    """Every message carries the 1040 shared values: exactly 170 · 4 bytes fewer than the
    whole model, on each of the 2 links of a ring node, in each of the 3 rounds."""
    cfg = small_config(nodes=4, topology={"kind": "ring"}, sharing__private=PRIVATE)
    sim, _ = run_sim(cfg)
    plain, _ = run_sim(small_config(nodes=4, topology={"kind": "ring"}))
    assert plain.experiment.layout.size == SIZE
    for node in range(4):
        expected = 0
        for rnd in range(1, 4):
            for dst in sim.experiment.graph.neighbors(node):
                msg = wire.Message(RUN_ID, node, rnd, "model", {"params": torch.zeros(SHARED)}, {"dst": dst})
                expected += sum(len(frame) for frame in wire.encode(msg))
        assert sim.bytes_sent[node] == expected
        assert plain.bytes_sent[node] - sim.bytes_sent[node] == 170 * 4 * 2 * 3


def test_shared_columns_mix_as_dpsgd_and_private_ones_stay():
    """On a ring of 4 (Metropolis-Hastings: every weight 1/3) one round gives
    x_i ← (x_{i-1} + x_i + x_{i+1}) / 3 on the shared columns and x_i on the private ones."""
    sim = untrained_sim(small_config(nodes=4, topology={"kind": "ring"}, model=MLP, sharing__private=PRIVATE))
    x = sim.nodes.params.clone()
    sim.step(1)
    after = sim.nodes.params
    for i in range(4):
        expected = (x[(i - 1) % 4, :SHARED] + x[i, :SHARED] + x[(i + 1) % 4, :SHARED]) / 3
        torch.testing.assert_close(after[i, :SHARED], expected, rtol=0, atol=1e-6)
    assert torch.equal(after[:, SHARED:], x[:, SHARED:])
    assert (after[:, :SHARED] - x[:, :SHARED]).abs().max() > 1e-3


@pytest.mark.parametrize("scheme", list(SCHEMES))
def test_private_parameters_never_leave_a_node(scheme):
    """Node 0's private parameters, changed before round 1, change nothing anywhere else over
    two rounds (not even node 0's shared ones) and are kept exactly; the inner scheme's state
    is sized to the shared part."""
    cfg = private_config(scheme, nodes=4, rounds=2, topology={"kind": "ring"}, model=MLP)
    base, moved = untrained_sim(cfg), untrained_sim(cfg)
    start = base.nodes.params.clone()
    moved.nodes.params[0, SHARED:] += 1.0
    kept = moved.nodes.params[0, SHARED:].clone()
    for rnd in (1, 2):
        base.step(rnd)
        moved.step(rnd)
    assert torch.equal(moved.nodes.params[1:], base.nodes.params[1:])
    assert torch.equal(moved.nodes.params[0, :SHARED], base.nodes.params[0, :SHARED])
    assert torch.equal(moved.nodes.params[0, SHARED:], kept)
    assert torch.equal(base.nodes.params[:, SHARED:], start[:, SHARED:])
    assert (base.nodes.params[:, :SHARED] - start[:, :SHARED]).abs().max() > 1e-4   # the shared part mixed
    for key, value in base.nodes.state.items():
        if key.startswith(("choco_", "topk_")):
            assert value.shape == (4, SHARED), key


@pytest.mark.parametrize("scheme", list(SCHEMES))
def test_every_scheme_trains_with_private_parameters(scheme):
    """Two trained rounds: the sharing step (send, receive, aggregate) leaves every private
    column as training left it and moves the shared ones."""
    sim = SimEngine(Experiment.build(private_config(scheme, nodes=6, rounds=2)), RUN_ID)
    sharing, steps = sim.algorithm.sharing, []
    share = sharing.share

    def recording(nodes, rnd, ctx):
        before = nodes.params.clone()
        share(nodes, rnd, ctx)
        steps.append((before, nodes.params.clone()))

    sharing.share = recording
    reports = [sim.step(rnd) for rnd in range(3)]
    assert len(steps) == 2
    for before, after in steps:
        assert torch.equal(after[:, SHARED:], before[:, SHARED:])
        assert (after[:, :SHARED] - before[:, :SHARED]).abs().max() > 0
    assert torch.isfinite(sim.nodes.params).all() and reports[-1].bytes_sent.min() > 0


@pytest.mark.parametrize("scheme", ["topk", "secagg"])
def test_processes_match_sim(scheme):
    """Worker processes give the simulator's models and byte counts (secure aggregation's
    key directory goes through the wrapper)."""
    cfg = private_config(scheme, nodes=6, rounds=2)
    sim, sim_reports = run_sim(cfg)
    engine, reports, _ = run_processes(cfg, workers=2)
    assert_same_run(sim, sim_reports, engine, reports)


def test_fedavg_keeps_clients_private_parameters():
    """FedAvg with private parameters: clients take the server's shared part and keep their own
    private part; the server's model stays the average of identical shared parts."""
    cfg = small_config(nodes=4, topology={"kind": "star"}, algorithm={"name": "fedavg"}, model=MLP,
                       sharing__private=PRIVATE)
    sim = untrained_sim(cfg)
    x = sim.nodes.params.clone()
    sim.step(1)
    after = sim.nodes.params
    torch.testing.assert_close(after[:, :SHARED], x[0, :SHARED].expand(4, SHARED), rtol=0, atol=1e-6)
    assert torch.equal(after[:, SHARED:], x[:, SHARED:])
