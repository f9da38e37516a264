"""Secure aggregation wired into D-PSGD: what receivers see, what they compute, and dropouts."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import stats

from conftest import small_config
from meshlearn.config import ConfigError
from meshlearn.engines.sim import SimEngine
from meshlearn.experiment import Experiment
from meshlearn.privacy.secagg import FixedPoint
from meshlearn.sharing import LinkInbox
from test_processes import assert_same_run, run_processes, run_sim


def secagg_config(**overrides):
    return small_config(privacy={"secagg": overrides.pop("secagg", {})}, **overrides)


def capture_inboxes(engine: SimEngine) -> list[LinkInbox]:
    """Record every per-link inbox the engine hands to the sharing scheme."""
    seen, exchange = [], engine.exchange

    def recording(nodes, payload, rnd, graph=None, per_link=False):
        inbox = exchange(nodes, payload, rnd, graph, per_link)
        seen.append(inbox)
        return inbox

    engine.exchange = recording
    return seen


def test_received_messages_look_uniformly_random():
    """Every byte value is equally likely in what receivers get (chi-square), although the
    weighted models in fixed point that the masks hide are far from uniform (the same test
    rejects them)."""
    engine = SimEngine(Experiment.build(secagg_config(nodes=8, rounds=1)))
    seen = capture_inboxes(engine)
    engine.step(1)
    masked = seen[0].payload["masked"]
    assert masked.dtype == torch.int32 and masked.shape[0] == 8 * 3
    p_masked = stats.chisquare(np.bincount(masked.numpy().view(np.uint8).ravel(), minlength=256)).pvalue
    assert p_masked > 1e-4
    encoded = FixedPoint(32, max_terms=3).encode(engine.nodes.params[:3], 1 / 4)
    p_plain = stats.chisquare(np.bincount(encoded.numpy().view(np.uint8).ravel(), minlength=256)).pvalue
    assert p_plain < 1e-6
    assert engine.algorithm.sharing.aborts == dict.fromkeys(range(8), 0)


@pytest.mark.parametrize("ring_bits", [32, 64])
def test_aggregate_equals_plain_weighted_average_within_resolution(ring_bits):
    """One gossip step from the same models: secure aggregation gives w_ii x_i + Σ_j w_ij x_j
    up to the fixed-point rounding of each term (plus float32 rounding)."""
    cfg = secagg_config(secagg={"ring_bits": ring_bits}, nodes=10, topology={"kind": "regular", "degree": 4})
    engine = SimEngine(Experiment.build(cfg))
    x = torch.randn_like(engine.nodes.params)
    engine.nodes.params = x.clone()
    engine.algorithm.sharing.share(engine.nodes, 1, engine)
    W = torch.from_numpy(engine.graph(1).mixing().toarray())
    expected = W @ x.double()
    err = (engine.nodes.params.double() - expected).abs().max().item()
    resolution = 4 * 2.0 ** -(17 if ring_bits == 32 else 33)   # degree × half a fixed-point step
    assert err <= resolution + 1e-6 * expected.abs().max().item()
    assert err > 0 or ring_bits == 64   # the 32-bit ring does round


def test_dropped_neighbour_aborts_that_aggregate_only():
    """With lossy links a receiver that misses any sender keeps its own model (its masks cannot
    cancel); receivers that got everything aggregate exactly as without losses."""
    cfg = secagg_config(secagg={"ring_bits": 64}, nodes=12, topology={"kind": "regular", "degree": 4},
                        network={"loss": 0.15})
    engine = SimEngine(Experiment.build(cfg))
    seen = capture_inboxes(engine)
    x = torch.randn_like(engine.nodes.params)
    engine.nodes.params = x.clone()
    engine.algorithm.sharing.share(engine.nodes, 1, engine)
    received = seen[0].received
    missed = np.zeros(12, dtype=bool)
    np.logical_or.at(missed, seen[0].rows, ~received)
    assert 0 < missed.sum() < 12   # the loss pattern drops some links, not all
    W = torch.from_numpy(engine.graph(1).mixing().toarray())
    mixed = (W @ x.double()).float()
    for node in range(12):
        if missed[node]:
            assert torch.equal(engine.nodes.params[node], x[node])
        else:
            torch.testing.assert_close(engine.nodes.params[node], mixed[node], atol=1e-6, rtol=1e-6)
    aborts = engine.node_metrics()["secagg_aborts"]
    np.testing.assert_array_equal(aborts, missed.astype(np.int64))


def test_accuracy_curve_matches_plain_dpsgd_over_20_rounds():
    cfg = dict(nodes=8, rounds=20, evaluation={"every": 5, "test_samples": 0},
               training={"local_steps": 3, "batch_size": 8, "lr": 0.1})
    _, plain = run_sim(small_config(**cfg))
    _, secure = run_sim(secagg_config(**cfg))
    _, secure64 = run_sim(secagg_config(secagg={"ring_bits": 64}, **cfg))
    curve = lambda reports: np.array([r.evaluation.acc.mean() for r in reports if r.evaluation is not None])
    assert len(curve(plain)) == 5 and curve(plain)[-1] > curve(plain)[0] + 0.2   # it learns: not a flat curve
    np.testing.assert_allclose(curve(secure), curve(plain), atol=0.01)
    np.testing.assert_allclose(curve(secure64), curve(plain), atol=1e-3)
    # same traffic: a 32-bit masked message is as large as a float32 model
    ratio = secure[-1].bytes_sent.sum() / plain[-1].bytes_sent.sum()
    assert abs(ratio - 1) < 0.01


def test_secure_aggregation_on_a_dynamic_topology():
    cfg = secagg_config(secagg={"ring_bits": 64}, nodes=10, topology={"kind": "regular", "degree": 3, "dynamic": True})
    sim, reports = run_sim(cfg)
    plain, plain_reports = run_sim(small_config(nodes=10, topology={"kind": "regular", "degree": 3, "dynamic": True}))
    assert (sim.nodes.params - plain.nodes.params).abs().max().item() < 1e-5


def test_processes_engine_matches_sim_with_secure_aggregation():
    """Workers learn the other workers' public keys from the launcher's directory; the masks
    (random keys) differ between the engines but cancel exactly, so the models agree."""
    cfg = secagg_config(nodes=8, rounds=2)
    sim, sim_reports = run_sim(cfg)
    engine, reports, _ = run_processes(cfg, workers=2)
    assert_same_run(sim, sim_reports, engine, reports)
    assert all(r.node_metrics["secagg_aborts"].sum() == 0 for r in reports)


@pytest.mark.parametrize("overrides, message", [
    ({"sharing": {"name": "topk"}}, "privacy.secagg masks whole models"),
    ({"secagg": {"ring_bits": 16}}, "ring_bits"),
])
def test_secure_aggregation_config_errors(overrides, message):
    with pytest.raises(ConfigError, match=message):
        secagg_config(**overrides)


def test_departed_sender_is_excluded_and_weights_renormalized():
    """Nodes known to have left drop out of the sender sets: their receivers average over
    the remaining senders (weights renormalized), everyone else is unaffected."""
    cfg = secagg_config(secagg={"ring_bits": 64}, nodes=10, topology={"kind": "regular", "degree": 3})
    engine = SimEngine(Experiment.build(cfg))
    engine.departed = frozenset({4})
    x = torch.randn_like(engine.nodes.params)
    engine.nodes.params = x.clone()
    engine.algorithm.sharing.share(engine.nodes, 1, engine)
    W = engine.graph(1).mixing().toarray()
    W[:, 4] = 0.0
    W /= W.sum(1, keepdims=True)
    expected = torch.from_numpy(W) @ x.double()
    others = [i for i in range(10) if i != 4]
    torch.testing.assert_close(engine.nodes.params[others].double(), expected[others], atol=1e-6, rtol=1e-6)
    assert sum(engine.algorithm.sharing.aborts.values()) == 0
