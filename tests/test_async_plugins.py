"""Asynchronous protocols as plug-ins: the push-pull example, and users' own event handlers."""

from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import small_config
from meshlearn import wire
from meshlearn.config import load_config
from meshlearn.engines import build_engine
from meshlearn.experiment import Experiment

EXAMPLE = Path(__file__).parent.parent / "examples" / "plugins" / "pushpull.toml"
QUICK = ["nodes=8", "rounds=3", "evaluation.every=3", "evaluation.test_samples=100"]

PLUGINS = '''
from meshlearn.algorithms import AsyncAlgorithm, GossipLearning


class MyGossip(GossipLearning):
    """Gossip learning under another name."""


class Silent(AsyncAlgorithm):
    """Local training only."""

    def on_trained(self, node, ctx):
        pass


class Pause(AsyncAlgorithm):
    """Rests after each training."""

    def __init__(self, sharing, seconds: float = 0.5):
        super().__init__(sharing)
        self.seconds = seconds

    def on_trained(self, node, ctx):
        ctx.wait(node, self.seconds)


class ToSelf(AsyncAlgorithm):
    """Sends to a node that is not a neighbour."""

    def on_trained(self, node, ctx):
        ctx.send(node, node, {"params": ctx.params[node]})
'''


@pytest.fixture
def plugin(tmp_path):
    """The import path of a class of PLUGINS, written to a module file."""
    path = tmp_path / "async_plugins.py"
    path.write_text(PLUGINS)
    return lambda name: f"{path}:{name}"


def run(cfg):
    engine = build_engine("sim", Experiment.build(cfg), "run")
    reports = [engine.step(rnd) for rnd in range(cfg.rounds + 1)]
    return engine, reports


def test_pushpull_example_communicates_and_approaches_consensus(plugin):
    cfg = load_config(EXAMPLE, QUICK)
    assert cfg.algorithm.implementation().__name__ == "PushPullGossip"
    engine, reports = run(cfg)
    silent, silent_reports = run(load_config(EXAMPLE, QUICK + [f'algorithm.name="{plugin("Silent")}"',
                                                                 "algorithm.options={}"]))
    assert reports[-1].bytes_sent.sum() > 0 and silent_reports[-1].bytes_sent.sum() == 0
    assert np.array_equal(engine.updates, silent.updates)   # nobody waits: the same trainings
    assert reports[-1].evaluation.consensus_distance < 0.5 * silent_reports[-1].evaluation.consensus_distance


def test_pushpull_answers_every_push():
    cfg = load_config(EXAMPLE, QUICK + ["network.latency_ms=0", "model.same_init=true"])
    engine, reports = run(cfg)
    size = wire.message_nbytes(wire.Message("run", 0, 1, "push", {"params": engine.nodes.params[0]}, {"dst": 1}))
    assert size == wire.message_nbytes(wire.Message("run", 0, 1, "pull", {"params": engine.nodes.params[0]},
                                                    {"dst": 1}))
    # one push per training and one pull per push, all ids and round numbers one msgpack byte
    assert reports[-1].bytes_sent.sum() == 2 * engine.updates.sum() * size
    # events: each node's first start, then per training its end, its next start, a push and a pull
    assert engine.events == cfg.nodes + 4 * engine.updates.sum()


def test_gossip_subclass_by_import_path_runs_exactly_like_gossip(plugin):
    lossy = {"model": {"name": "logreg"}, "compute__distribution": "lognormal", "network__latency_ms": 120.0,
             "network__loss": 0.3}
    builtin, builtin_reports = run(small_config(algorithm__name="gossip", **lossy))
    mine, mine_reports = run(small_config(algorithm__name=plugin("MyGossip"), **lossy))
    assert type(mine.algorithm).__name__ == "MyGossip"
    assert torch.equal(builtin.nodes.params, mine.nodes.params)
    assert builtin.events == mine.events and builtin.messages_lost.sum() > 0
    for a, b in zip(builtin_reports, mine_reports):
        assert np.array_equal(a.bytes_sent, b.bytes_sent)
        assert np.array_equal(a.node_metrics["messages_lost"], b.node_metrics["messages_lost"])


def test_a_node_that_waits_trains_later(plugin):
    # trainings of 1 s, each followed by a rest of 1 s: they end at 1, 3 and 5 s of 6
    engine, _ = run(small_config(algorithm__name=plugin("Pause"), algorithm__seconds=1.0, rounds=6,
                                 model={"name": "logreg"}))
    assert np.all(engine.updates == 3) and engine.bytes_sent.sum() == 0


def test_sending_to_a_non_neighbour_is_refused(plugin):
    engine = build_engine("sim", Experiment.build(small_config(algorithm__name=plugin("ToSelf"))), "run")
    with pytest.raises(ValueError, match="not its neighbour"):
        engine.step(1)
