"""Personalized methods: DePRL (shared body, personal heads), Ditto (personal models pulled towards
gossiped ones) and PENS (performance-based neighbour selection), and the trainer's keywords they
rest on."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from conftest import small_config
from meshlearn.config import ConfigError
from meshlearn.engines.sim import SimEngine
from meshlearn.experiment import Experiment
from meshlearn.nodes import NodeBatch
from test_processes import RUN_ID, assert_same_run, run_processes, run_sim

HEAD = ["net.2.*"]   # the output layer of mlp(hidden=[16]) on digits
SHARED = 1040        # 64·16 + 16 body parameters come first, then the head's 170


def fresh(cfg):
    experiment = Experiment.build(cfg)
    ids = list(range(cfg.nodes))
    nodes = NodeBatch(torch.tensor(ids), experiment.initial_params(ids))
    trainer = experiment.make_trainer(ids)
    trainer.init_state(nodes)
    return experiment, nodes, trainer


# ---- the trainer's keywords

def test_training_some_columns_keeps_the_others_and_their_state():
    cfg = small_config(training__momentum=0.9, training__weight_decay=0.01)
    _, nodes, trainer = fresh(cfg)
    head = torch.arange(SHARED, nodes.params.shape[1])
    trainer.train(nodes)   # momentum buffers everywhere
    before, buffers = nodes.params.clone(), nodes.state["momentum_buffer"].clone()
    trainer.train(nodes, columns=head)
    assert torch.equal(nodes.params[:, :SHARED], before[:, :SHARED])
    assert torch.equal(nodes.state["momentum_buffer"][:, :SHARED], buffers[:, :SHARED])
    assert (nodes.params[:, SHARED:] - before[:, SHARED:]).abs().min(dim=1).values.max() > 0
    assert not torch.equal(nodes.state["momentum_buffer"][:, SHARED:], buffers[:, SHARED:])


def test_one_step_on_some_columns_moves_them_as_a_whole_step_would():
    """With one plain SGD step the gradient of the trained columns does not depend on whether
    the others move in the same step, so the trained columns match a full step's exactly."""
    cfg = small_config(training__local_steps=1)
    _, part, part_trainer = fresh(cfg)
    _, whole, whole_trainer = fresh(cfg)
    head = torch.arange(SHARED, part.params.shape[1])
    part_trainer.train(part, columns=head)
    whole_trainer.train(whole)
    assert torch.equal(part.params[:, SHARED:], whole.params[:, SHARED:])
    assert not torch.equal(part.params[:, :SHARED], whole.params[:, :SHARED])


def test_proximal_step_is_the_closed_form_pull_towards_the_anchor():
    cfg = small_config(training__local_steps=1)
    _, pulled, trainer = fresh(cfg)
    _, plain, plain_trainer = fresh(cfg)
    anchor = torch.randn_like(pulled.params)
    mu, lr = 3.0, cfg.training.lr
    trainer.train(pulled, anchor=anchor, mu=mu)
    plain_trainer.train(plain)
    expected = (plain.params + lr * mu * anchor) / (1 + lr * mu)
    assert torch.allclose(pulled.params, expected, atol=1e-6)
    huge = fresh(cfg)
    huge[2].train(huge[1], anchor=anchor, mu=1e12)
    assert torch.allclose(huge[1].params, anchor, atol=1e-5)


def test_named_samplers_draw_their_own_batches_and_leave_the_default_alone():
    cfg = small_config()
    _, a, trainer_a = fresh(cfg)
    _, b, trainer_b = fresh(cfg)
    side = NodeBatch(b.ids, b.params.clone(), {k: v.clone() for k, v in b.state.items()})
    trainer_b.train(side, sampler="personal")   # another model trained on b's nodes in between
    trainer_a.train(a)
    trainer_b.train(b)
    assert torch.equal(a.params, b.params)
    assert not torch.equal(side.params, b.params)   # other batches, another model


def test_dp_refuses_partial_or_proximal_training():
    cfg = small_config(privacy={"dp": {"noise_multiplier": 1.0, "clip_norm": 1.0}})
    _, nodes, trainer = fresh(cfg)
    with pytest.raises(ValueError, match="privacy.dp"):
        trainer.train(nodes, anchor=nodes.params.clone(), mu=1.0)


# ---- DePRL

def test_deprl_without_a_head_is_dpsgd():
    plain, _ = run_sim(small_config(model={"name": "mlp", "options": {"hidden": [16]}, "same_init": False}))
    shared, _ = run_sim(small_config(model={"name": "mlp", "options": {"hidden": [16]}, "same_init": False},
                                     algorithm={"name": "deprl", "options": {"head_trainings": 3}}))
    assert torch.equal(plain.nodes.params, shared.nodes.params)


def test_deprl_trains_head_then_body_and_gossips_the_body_only():
    cfg = small_config(rounds=1, sharing={"name": "full", "private": HEAD},
                       algorithm={"name": "deprl", "options": {"head_trainings": 2}},
                       model={"name": "mlp", "options": {"hidden": [16]}, "same_init": False})
    sim, reports = run_sim(cfg)
    # the same round by hand: two head trainings, one body training, a mean of the bodies
    experiment, nodes, trainer = fresh(cfg)
    head, body = torch.arange(SHARED, nodes.params.shape[1]), torch.arange(SHARED)
    trainer.train(nodes, columns=head)
    trainer.train(nodes, columns=head)
    trainer.train(nodes, columns=body)
    graph = experiment.topology.graph(1)
    mixed = torch.from_numpy(graph.weights @ nodes.params[:, :SHARED].double().numpy()).float()
    mixed += torch.from_numpy(graph.self_weight).float()[:, None] * nodes.params[:, :SHARED]
    assert torch.allclose(sim.nodes.params[:, :SHARED], mixed, atol=1e-6)
    assert torch.equal(sim.nodes.params[:, SHARED:], nodes.params[:, SHARED:])   # heads stay personal
    assert reports[-1].bytes_sent.sum() > 0


# ---- Ditto

def test_ditto_gossips_exactly_dpsgd_models():
    plain, plain_reports = run_sim(small_config())
    ditto, ditto_reports = run_sim(small_config(algorithm={"name": "ditto", "options": {"lam": 0.5}}))
    assert torch.equal(ditto.algorithm.global_models(ditto.nodes).params, plain.nodes.params)
    assert ditto_reports[-1].bytes_sent.tolist() == plain_reports[-1].bytes_sent.tolist()
    assert not torch.equal(ditto.nodes.params, plain.nodes.params)   # the evaluated models are personal


def test_ditto_with_infinite_lambda_tracks_the_gossiped_model():
    """Each round the personal model is pulled onto the global model of the round's start:
    after round R it is D-PSGD's model after round R - 1."""
    before, _ = run_sim(small_config(rounds=2))
    ditto, _ = run_sim(small_config(rounds=3, algorithm={"name": "ditto", "options": {"lam": 1e12}}))
    assert torch.allclose(ditto.nodes.params, before.nodes.params, atol=1e-5)


def test_ditto_with_zero_lambda_is_local_training():
    ditto, _ = run_sim(small_config(algorithm={"name": "ditto", "options": {"lam": 0.0}}))
    _, alone, trainer = fresh(small_config())
    for _ in range(3):
        trainer.train(alone, sampler="personal")
    assert torch.equal(ditto.nodes.params, alone.params)


def test_ditto_refuses_dp():
    with pytest.raises(ConfigError, match="privacy.dp"):
        small_config(algorithm={"name": "ditto"}, privacy={"dp": {"noise_multiplier": 1.0, "clip_norm": 1.0}})


# ---- PENS

PENS = {"name": "pens", "options": {"selected": 2, "probe": 32}}
DISTINCT = {"name": "mlp", "options": {"hidden": [16]}, "same_init": False}


def test_pens_averages_with_the_received_models_that_fit_own_data_best():
    cfg = small_config(rounds=1, algorithm=PENS, model=DISTINCT)
    sim, _ = run_sim(cfg)
    experiment, nodes, trainer = fresh(cfg)
    trainer.train(nodes)
    graph = experiment.topology.graph(1)
    algorithm = sim.algorithm
    for node in range(cfg.nodes):
        senders = graph.weights.indices[graph.weights.indptr[node]:graph.weights.indptr[node + 1]]
        models = nodes.params[torch.from_numpy(senders)]
        losses = algorithm.scores(torch.tensor([node]), models[None])[0].numpy()
        # scored by hand: the loss of each model on the node's probe samples
        probe = algorithm.probes[node]
        for s, sender in enumerate(senders):
            logits = torch.func.functional_call(experiment.model, experiment.layout.views(models[s]),
                                                (algorithm.x[probe],))
            assert abs(torch.nn.functional.cross_entropy(logits, algorithm.y[probe]).item() - losses[s]) < 1e-5
        best = senders[np.argsort(losses, kind="stable")[:2]]
        expected = (nodes.params[node] + nodes.params[torch.from_numpy(best)].sum(0)) / 3
        assert torch.allclose(sim.nodes.params[node], expected, atol=1e-6)


def test_pens_selecting_every_neighbour_is_dpsgd_on_a_regular_graph():
    """On a 3-regular graph Metropolis-Hastings weights are 1/4 each: choosing all three
    neighbours is D-PSGD's average."""
    plain, _ = run_sim(small_config(model=DISTINCT))
    pens, _ = run_sim(small_config(model=DISTINCT, algorithm={"name": "pens", "options": {"selected": 3}}))
    assert torch.allclose(pens.nodes.params, plain.nodes.params, atol=1e-5)


def test_pens_probes_are_the_nodes_own_training_samples():
    cfg = small_config(algorithm=PENS, evaluation__local_test=0.2)
    sim = SimEngine(Experiment.build(cfg), RUN_ID)
    for node in range(cfg.nodes):
        probe = sim.algorithm.probes[node].numpy()
        assert len(probe) == 32 and set(probe) <= set(sim.experiment.parts[node].tolist())
        assert len(set(probe)) == min(32, len(sim.experiment.parts[node]))   # repeats only when it has fewer


@pytest.mark.parametrize("sharing", [{"name": "topk", "options": {"fraction": 0.1}}])
def test_pens_refuses_partial_messages(sharing):
    with pytest.raises(ConfigError, match="whole models"):
        small_config(algorithm=PENS, sharing=sharing)


# ---- every method is the same run on processes

@pytest.mark.parametrize("algorithm, sharing", [
    ({"name": "deprl", "options": {"head_trainings": 2}}, {"name": "full", "private": HEAD}),
    ({"name": "ditto", "options": {"lam": 0.3}}, {"name": "full"}),
    (PENS, {"name": "full"}),
])
def test_personalized_methods_are_the_same_on_processes(algorithm, sharing):
    cfg = small_config(rounds=2, algorithm=algorithm, sharing=sharing, model=DISTINCT, evaluation__local_test=0.2)
    sim, sim_reports = run_sim(cfg)
    engine, reports, _ = run_processes(cfg, workers=2)
    assert torch.equal(engine.params, sim.nodes.params)
    assert_same_run(sim, sim_reports, engine, reports)
