"""The vectorized simulator against the per-node reference loop, and determinism."""

import pytest
import torch

from conftest import small_config
from meshlearn import wire
from meshlearn.engines.reference import ReferenceDPSGD
from meshlearn.engines.sim import SimEngine
from meshlearn.experiment import Experiment


def run_both(cfg, rounds):
    exp = Experiment.build(cfg)
    sim, ref = SimEngine(exp), ReferenceDPSGD(exp)
    for rnd in range(1, rounds + 1):
        sim.run_round(rnd)
        ref.run_round(rnd)
    return sim, ref


@pytest.mark.parametrize("overrides", [
    {},
    {"training__momentum": 0.9, "training__nesterov": True, "training__weight_decay": 1e-3},
    {"training__optimizer": "adam", "training__lr": 1e-3},
    {"training__local_epochs": 0.5, "training__local_steps": None},
    {"engine__batching": "loop"},
    {"model__name": "logreg", "model__options": {}, "topology__kind": "ring", "topology__degree": None},
    {"model__same_init": False, "topology__weights": "max_degree", "topology__kind": "star",
     "topology__degree": None},
], ids=["sgd", "momentum-nesterov-wd", "adam", "local-epochs", "loop-batching", "logreg-ring", "star-maxdeg"])
def test_sim_matches_reference_loop(overrides):
    cfg = small_config(**overrides, engine__chunk_size=3)  # chunks that do not divide the nodes
    sim, ref = run_both(cfg, rounds=3)
    diff = (sim.nodes.params - ref.params()).abs().max().item()
    assert diff <= 1e-5, diff
    # and the models actually moved away from the start, so the comparison is not vacuous
    start = Experiment.build(cfg).initial_params(list(range(cfg.nodes)))
    assert (sim.nodes.params - start).abs().max().item() > 1e-3


def test_cnn_matches_reference_loop():
    # a conv net through the import-path hook (the 8×8 digits are too small for LeNet)
    cfg = small_config(model__name="tests_models:TinyConv", model__options={}, nodes=4,
                       topology__degree=2, engine__chunk_size=3)
    sim, ref = run_both(cfg, rounds=2)
    assert (sim.nodes.params - ref.params()).abs().max().item() <= 1e-5


@pytest.mark.parametrize("overrides", [
    {"model__name": "tests_models:TinyConv", "model__options": {}},
    {"training__optimizer": "adam", "training__lr": 1e-3, "training__local_epochs": 0.5, "training__local_steps": None},
], ids=["conv", "adam-epochs"])
def test_loop_batching_on_several_threads_gives_the_same_models(overrides):
    # loop batching spreads the nodes over one thread per intra-op thread: same models as one
    # thread (chunks of 7 and of 1 node)
    cfg = small_config(**overrides, engine__batching="loop", engine__chunk_size=7)
    models = {}
    for threads in (1, 2):
        torch.set_num_threads(threads)
        sim = SimEngine(Experiment.build(cfg))
        for rnd in range(1, 3):
            sim.run_round(rnd)
        models[threads] = sim.nodes.params.clone()
        assert sorted(sim.trainer._pools) == ([2] if threads == 2 else [])   # the threads did train
    assert torch.equal(models[1], models[2])
    assert torch.get_num_threads() == 2   # the caller's setting is back


def test_a_model_with_dropout_trains_its_nodes_in_turn_and_repeats():
    # dropout draws the global generator: threads would draw it in no set order
    torch.set_num_threads(2)
    cfg = small_config(model__name="tests_models:DropoutConv", model__options={})
    models = []
    for _ in range(2):
        torch.manual_seed(0)
        sim = SimEngine(Experiment.build(cfg))
        sim.run_round(1)
        models.append(sim.nodes.params)
        assert sim.experiment.batching == "loop" and not sim.trainer._pools
    assert torch.equal(*models)


def test_mixing_preserves_average_and_reaches_consensus():
    cfg = small_config(training__lr=1e-9)  # essentially no training: pure gossip
    exp = Experiment.build(cfg)
    sim = SimEngine(exp)
    sim.nodes.params = torch.randn_like(sim.nodes.params)
    before = sim.nodes.params.mean(0)
    spread = sim.nodes.params.var(0).sum()
    for rnd in range(1, 30):
        sim.run_round(rnd)
    assert torch.allclose(sim.nodes.params.mean(0), before, atol=1e-4)  # doubly stochastic W
    assert sim.nodes.params.var(0).sum() < 1e-3 * spread


@pytest.mark.parametrize("nodes", [8, 300])  # 300: ids above 255 take wider msgpack ints
def test_bytes_are_exact_wire_sizes(nodes):
    cfg = small_config(nodes=nodes, topology__kind="ring", model={"name": "logreg"}, data__dataset="synthetic",
                       data__options={"train_samples": 4 * nodes, "shape": [3]})
    exp = Experiment.build(cfg)
    sim = SimEngine(exp, run_id="abc")
    sim.run_round(1)
    for node in range(nodes):
        sizes, headers = [], []
        for dst in exp.graph.neighbors(node):
            msg = wire.Message("abc", node, 1, "model", {"params": sim.nodes.params[node]}, {"dst": dst})
            sizes.append(sum(len(f) for f in wire.encode(msg)))
            headers.append(wire.header_nbytes(msg))
        assert sim.bytes_sent[node] == sum(sizes)
        assert sim.header_bytes[node] == sum(headers)
    assert max(headers) < 200
    assert sim.message_bytes == exp.layout.size * 4 + sim.header_bytes[0] // 2


def test_same_seed_same_models_other_seed_differs():
    a, _ = run_both(small_config(), rounds=2)
    b, _ = run_both(small_config(), rounds=2)
    c, _ = run_both(small_config(seed=4), rounds=2)
    assert torch.equal(a.nodes.params, b.nodes.params)
    assert not torch.allclose(a.nodes.params, c.nodes.params)


def test_identical_models_are_evaluated_once_with_the_same_figures(monkeypatch):
    from meshlearn import evaluation, metrics

    exp = Experiment.build(small_config())
    evaluator = evaluation.Evaluator(exp)
    same = exp.initial_params(list(range(exp.num_nodes)))   # model.same_init: round 0's models
    calls = []
    evaluate = metrics.evaluate_models
    monkeypatch.setattr(metrics, "evaluate_models", lambda model, layout, params, *a, **k: (
        calls.append(len(params)), evaluate(model, layout, params, *a, **k))[1])
    acc, loss = evaluator.models(same)
    assert calls == [1]
    expected = evaluate(evaluator.model, exp.layout, same, evaluator.x, evaluator.y, task=exp.task)
    assert torch.allclose(acc, expected[0]) and torch.allclose(loss, expected[1], atol=1e-6)
    different = same.clone()
    different[3] += 0.1
    evaluator.models(different)
    assert calls == [1, len(same)]   # models that differ are each evaluated
