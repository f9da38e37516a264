"""Local training only: the no-communication lower bound."""

import torch

from conftest import small_config
from meshlearn.engines.sim import SimEngine
from meshlearn.experiment import Experiment
from meshlearn.nodes import NodeBatch
from test_processes import run_processes, run_sim


def test_local_nodes_train_alone_and_send_nothing():
    cfg = small_config(algorithm__name="local", rounds=3)
    sim = SimEngine(Experiment.build(cfg))
    reports = [sim.step(rnd) for rnd in range(cfg.rounds + 1)]
    experiment = Experiment.build(cfg)
    ids = list(range(cfg.nodes))
    alone = NodeBatch(torch.tensor(ids), experiment.initial_params(ids))
    trainer = experiment.make_trainer(ids)
    trainer.init_state(alone)
    for _ in range(cfg.rounds):
        trainer.train(alone)
    assert torch.equal(sim.nodes.params, alone.params)
    assert (alone.params - experiment.initial_params(ids)).abs().max() > 1e-3   # they trained
    assert reports[-1].bytes_sent.sum() == 0
    record = [r for r in reports if r.evaluation is not None][-1].evaluation
    assert record.consensus_distance > 0   # nobody mixed


def test_local_training_is_the_same_on_processes():
    cfg = small_config(algorithm__name="local", rounds=2)
    sim, _ = run_sim(cfg)
    engine, reports, _ = run_processes(cfg, workers=2)
    assert torch.equal(engine.params, sim.nodes.params)
    assert reports[-1].bytes_sent.sum() == 0
