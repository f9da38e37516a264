"""Personalization baselines: local training only (the no-communication lower bound) and fine-tuning."""

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


def test_fine_tuning_is_dpsgd_then_local_epochs_after_the_last_round():
    cfg = small_config(rounds=3)
    tuned_cfg = small_config(rounds=3, algorithm={"name": "finetune", "options": {"epochs": 2.0}})
    plain, plain_reports = run_sim(cfg)
    tuned, tuned_reports = run_sim(tuned_cfg)
    for a, b in zip(plain_reports[:-1], tuned_reports[:-1]):   # the same run until the last round
        assert a.evaluation is None or list(a.evaluation.acc) == list(b.evaluation.acc)
    # then each node trains ceil(2 · samples / (batch · steps)) more times on its own data
    experiment = plain.experiment
    sizes = [len(experiment.parts[node]) for node in range(cfg.nodes)]
    trainings = torch.tensor([-(-2 * m // (cfg.training.batch_size * cfg.training.local_steps)) for m in sizes])
    assert trainings.max() > trainings.min() >= 1   # nodes of different sizes train for different times
    for k in range(int(trainings.max())):
        plain.trainer.train(plain.nodes, trainings > k)
    assert torch.equal(plain.nodes.params, tuned.nodes.params)
    assert tuned_reports[-1].bytes_sent.tolist() == plain_reports[-1].bytes_sent.tolist()   # no extra message


def test_fine_tuning_is_the_same_on_processes():
    cfg = small_config(rounds=2, algorithm={"name": "finetune"})
    sim, _ = run_sim(cfg)
    engine, _, _ = run_processes(cfg, workers=2)
    assert torch.equal(engine.params, sim.nodes.params)
