"""Byzantine nodes: placement, what they send on every engine, and the honest-only figures."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

import meshlearn
from meshlearn.config import ConfigError, parse_config
from meshlearn.engines.sim import SimEngine
from meshlearn.experiment import Experiment
from test_processes import run_processes, run_sim

HERE = Path(__file__).resolve().parent


def config(**sections):
    raw = {"name": "byz", "seed": 5, "nodes": 10, "rounds": 3,
           "data": {"dataset": "digits", "partition": "dirichlet", "partition_options": {"alpha": 1.0}},
           "topology": {"kind": "regular", "options": {"degree": 4}},
           "model": {"name": "mlp", "options": {"hidden": [16]}},
           "training": {"local_steps": 3, "batch_size": 8, "lr": 0.05},
           "evaluation": {"every": 1, "test_samples": 100}}
    raw.update(sections)
    return parse_config(raw, folder=HERE)


def refused(**sections) -> str:
    with pytest.raises(ConfigError) as info:
        config(**sections)
    return str(info.value)


# configuration

def test_byzantine_section_is_checked_with_messages_naming_the_key():
    assert "exactly one of byzantine.count, byzantine.fraction and byzantine.nodes" in refused(
        byzantine={"count": 2, "fraction": 0.2})
    assert "exactly one" in refused(byzantine={"attack": "sign_flip"})
    assert "byzantine.placement = 'given' needs byzantine.nodes" in refused(
        byzantine={"count": 2, "placement": "given"})
    assert "outside 0..9" in refused(byzantine={"nodes": [3, 10]})
    assert "lists a node twice" in refused(byzantine={"nodes": [3, 3]})
    assert "leave at least one honest node" in refused(byzantine={"count": 10})
    # an attack's own check: ALIE's default z needs f <= n/2
    assert "set byzantine.options.z" in refused(nodes=4, topology={"kind": "ring"},
                                                byzantine={"count": 3, "attack": "alie"})
    config(nodes=4, topology={"kind": "ring"}, byzantine={"count": 3, "attack": "alie", "options": {"z": 1.0}})
    message = refused(byzantine={"count": 1, "attack": "no_such_attack"})
    assert "byzantine.attack" in message and "sign_flip" in message


def test_combinations_that_cannot_be_honoured_are_refused():
    message = refused(aggregation={"name": "median"}, sharing={"name": "topk"})
    assert "aggregation.name = 'median'" in message and "sharing.name = 'full'" in message
    message = refused(byzantine={"count": 1}, privacy={"secagg": {}})
    assert "privacy.secagg hides individual models" in message
    message = refused(aggregation={"name": "clipped_gossip"}, algorithm={"name": "fedavg"},
                      topology={"kind": "star"})
    assert "algorithm.name = 'dpsgd'" in message
    message = refused(byzantine={"count": 1, "attack": "dissensus"}, engine={"name": "processes"})
    assert "only the simulator" in message and "engine.name = 'sim'" in message
    # the same attack on the simulator, and a rushing one on processes, are fine
    config(byzantine={"count": 1, "attack": "dissensus"})
    config(byzantine={"count": 1, "attack": "alie"}, engine={"name": "processes"})


def test_placement_is_drawn_from_the_seed_or_given():
    random_a = Experiment.build(config(byzantine={"count": 3})).byzantine
    random_b = Experiment.build(config(byzantine={"count": 3})).byzantine
    assert len(random_a) == 3 and random_a.tolist() == random_b.tolist()
    assert len(Experiment.build(config(byzantine={"fraction": 0.25})).byzantine) == 2   # round(2.5) = 2
    assert Experiment.build(config(byzantine={"nodes": [7, 2]})).byzantine.tolist() == [2, 7]
    # on a star the hub has the highest degree
    star = Experiment.build(config(topology={"kind": "star"}, byzantine={"count": 1, "placement": "highest_degree"}))
    assert star.byzantine.tolist() == [0]


def test_label_flipping_attackers_train_on_flipped_labels_only():
    exp = Experiment.build(config(byzantine={"nodes": [1], "attack": "label_flip"}))
    trainer = exp.make_trainer([0, 1])
    y = torch.from_numpy(exp.dataset.y_train)
    mine, theirs = torch.from_numpy(exp.parts[1]), torch.from_numpy(exp.parts[0])
    assert torch.equal(trainer.y_train[mine], exp.dataset.num_classes - 1 - y[mine])
    assert torch.equal(trainer.y_train[theirs], y[theirs])


# what attackers send

def test_a_per_receiver_attack_reaches_each_receiver_with_its_own_message():
    cfg = config(byzantine={"nodes": [2, 6], "attack": "byzantine_plugins.py:TaggedPerReceiver"})
    sim = SimEngine(Experiment.build(cfg))
    graph = sim.graph(1)
    payload = sim.algorithm.sharing.encode(sim.nodes, 1)
    inbox = sim.exchange(sim.nodes, payload, 1)
    seen = 0
    for got in inbox.by_receiver(lambda p: p["params"]):
        for r, receiver in enumerate(got.rows.tolist()):
            for slot in np.flatnonzero(got.mask[r].numpy()):
                sender = int(got.senders[r, slot])
                expected = 1000.0 * sender + receiver if sender in (2, 6) else sim.nodes.params[sender]
                assert torch.equal(got.values[r, slot], torch.as_tensor(expected).expand_as(got.values[r, slot]))
                seen += sender in (2, 6)
    assert seen == len(graph.receivers_of(2)) + len(graph.receivers_of(6))
    # the weighted sums see the same messages
    expected = torch.zeros_like(sim.nodes.params)
    off = graph.weights
    for receiver in range(cfg.nodes):
        for e in range(off.indptr[receiver], off.indptr[receiver + 1]):
            sender = int(off.indices[e])
            message = torch.full_like(sim.nodes.params[0], 1000.0 * sender + receiver) if sender in (2, 6) \
                else sim.nodes.params[sender]
            expected[receiver] += float(off.data[e]) * message
    assert torch.allclose(inbox.weighted_sum(lambda p: p["params"]), expected, rtol=1e-5, atol=1e-3)


def run_both(cfg):
    """The final models and reports of the same config on sim and on 2 worker processes."""
    sim, sim_reports = run_sim(cfg)
    engine, reports, _ = run_processes(cfg, workers=2)
    return sim, sim_reports, engine, reports


@pytest.mark.parametrize("attack", ["sign_flip", "alie", "byzantine_plugins.py:EchoReceived"])
def test_sim_and_processes_give_identical_models_under_attack(attack):
    """The attackers really send their crafted messages over TCP (a rushing attack waits for
    its honest neighbours' messages first), and a robust rule gives bit-identical models."""
    cfg = config(byzantine={"nodes": [1, 4], "attack": attack}, aggregation={"name": "clipped_gossip"})
    sim, sim_reports, engine, reports = run_both(cfg)
    assert torch.equal(engine.params, sim.nodes.params)
    honest = [node for node in range(cfg.nodes) if node not in (1, 4)]
    start = Experiment.build(cfg).initial_params(list(range(cfg.nodes)))
    assert (sim.nodes.params[honest] - start[honest]).abs().max() > 1e-3
    for a, b in zip(reports, sim_reports):
        if a.evaluation is not None:
            assert a.evaluation.nodes.tolist() == b.evaluation.nodes.tolist() == honest
            np.testing.assert_array_equal(a.evaluation.acc, b.evaluation.acc)
            assert a.evaluation.consensus_distance == pytest.approx(b.evaluation.consensus_distance, rel=1e-6)


def test_byzantine_nodes_are_absent_from_the_honest_figures(tmp_path):
    cfg = config(byzantine={"nodes": [0, 3], "attack": "sign_flip", "options": {"scale": 4.0}})
    run = meshlearn.run(cfg, out=tmp_path / "run")
    assert run.summary["byzantine_nodes"] == [0, 3]
    assert set(run.nodes["node"]) == set(range(cfg.nodes)) - {0, 3}
    last = run.rounds.iloc[-1]
    assert last["eval_nodes"] == 8 and last["test_acc_worst_node"] not in (0, 3)
    honest = run.nodes[run.nodes["round"] == last["round"]]
    assert last["test_acc_min"] == pytest.approx(honest["test_acc"].min())
    assert last["test_acc_worst_node"] == int(honest.loc[honest["test_acc"].idxmin(), "node"])
    params = torch.cat([t.reshape(cfg.nodes, -1) for t in run._load_models().values()], dim=1)
    kept = params[[n for n in range(cfg.nodes) if n not in (0, 3)]].double()
    expected = float((kept - kept.mean(0)).pow(2).sum(1).mean())
    assert last["consensus_distance"] == pytest.approx(expected, rel=1e-4)
    everyone = float((params.double() - params.double().mean(0)).pow(2).sum(1).mean())
    assert abs(everyone - expected) > 1e-3 * expected   # the attackers' models would have changed it


EXAMPLES = HERE.parent / "examples" / "byzantine"


@pytest.mark.parametrize("path", sorted(EXAMPLES.glob("*.toml")), ids=lambda p: p.stem)
def test_byzantine_examples_run(path, tmp_path):
    from meshlearn.config import load_config

    cfg = load_config(path, ["rounds=2", "evaluation.every=1", "evaluation.test_samples=100"])
    run = meshlearn.run(cfg, out=tmp_path / "run")
    assert run.summary["status"] == "completed" and run.summary["byzantine_nodes"]
    assert run.rounds.iloc[-1]["eval_nodes"] == cfg.nodes - len(run.summary["byzantine_nodes"])


def test_a_users_rule_and_attack_run_on_processes_as_on_sim():
    """examples/byzantine/own_rules.py, named by file path, loads in the worker processes too."""
    from meshlearn.config import load_config

    cfg = load_config(EXAMPLES / "own_rules.toml", ["rounds=2", "nodes=8", "evaluation.every=2",
                                                     "evaluation.test_samples=100"])
    sim, _, engine, _ = run_both(cfg)
    assert torch.equal(engine.params, sim.nodes.params)


@pytest.mark.parametrize("topology", [{"kind": "regular", "options": {"degree": 4}, "dynamic": True},
                                      {"kind": "epidemic", "peers": 3}], ids=["dynamic", "epidemic"])
@pytest.mark.parametrize("attack", ["sign_flip", "dissensus"])
def test_attacks_and_robust_rules_follow_changing_graphs(topology, attack):
    """Every round's graph is another: rushing views, per-receiver messages and the rules follow it."""
    cfg = config(topology=topology, byzantine={"nodes": [2, 7], "attack": attack},
                 aggregation={"name": "clipped_gossip"}, rounds=2)
    sim = SimEngine(Experiment.build(cfg))
    sim.nodes.params += torch.randn(sim.nodes.params.shape, generator=torch.Generator().manual_seed(0))
    for rnd in range(1, 3):
        graph = sim.graph(rnd)
        payload = sim.algorithm.sharing.encode(sim.nodes, rnd)
        inbox = sim.exchange(sim.nodes, payload, rnd)
        heard = 0
        for got in inbox.by_receiver(lambda p: p["params"]):
            for r, receiver in enumerate(got.rows.tolist()):
                senders = got.senders[r][got.mask[r]].tolist()
                assert senders == graph.senders_of(receiver).tolist()
                for slot, sender in enumerate(senders):
                    if receiver in (2, 7):   # attackers may send each other anything
                        continue
                    honest_message = torch.equal(got.values[r, slot], sim.nodes.params[sender])
                    assert honest_message == (sender not in (2, 7))
                    heard += sender in (2, 7)
        attacked = [dst for src in (2, 7) for dst in graph.receivers_of(src).tolist() if dst not in (2, 7)]
        assert heard == len(attacked) > 0
        sim.step(rnd)
    assert sim.last_loss.isfinite().all()
