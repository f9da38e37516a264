"""Node-level differential privacy of local training (DP-SGD) and its accountant."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from conftest import small_config
from meshlearn.config import ConfigError, DPConfig
from meshlearn.privacy.dp import NodePrivacy
from meshlearn.engines.processes import ProcessesEngine
from meshlearn.engines.sim import SimEngine
from meshlearn.evaluation import round_record
from meshlearn.experiment import Experiment
from meshlearn.nodes import ParamLayout
from meshlearn.plotting import build_figure, load_runs
from meshlearn.results import read_jsonl
from meshlearn.runner import run_experiment
from meshlearn.training import local_steps


def dp_config(dp: dict | None = None, **overrides):
    """``small_config`` (8 nodes, 3 rounds) with ``[privacy.dp]`` set (default σ = 1)."""
    return small_config(privacy={"dp": dp or {"noise_multiplier": 1.0}}, **overrides)


def run_sim(cfg) -> SimEngine:
    sim = SimEngine(Experiment.build(cfg))
    for rnd in range(cfg.rounds + 1):
        sim.step(rnd)
    return sim


def privacy(seed: int, clip_norm: float = 1.0, sigma: float = 1.0, size: int = 5) -> NodePrivacy:
    """DP state of one node (id 0) with a single parameter vector of ``size`` entries."""
    layout = ParamLayout(("w",), (torch.Size([size]),), (0,), size)
    cfg = DPConfig(clip_norm=clip_norm, noise_multiplier=sigma)
    return NodePrivacy(cfg, layout, seed, batch_size=4, num_samples={0: 100}, total_steps={0: 10})


# the config

@pytest.mark.parametrize("dp", [{}, {"noise_multiplier": 1.0, "target_epsilon": 3.0}], ids=["neither", "both"])
def test_exactly_one_of_sigma_and_target_epsilon(dp):
    with pytest.raises(ConfigError, match=r"privacy\.dp: set exactly one of privacy\.dp\.noise_multiplier .* "
                                          r"and privacy\.dp\.target_epsilon"):
        small_config(privacy={"dp": dp})


def test_unreachable_target_epsilon_names_the_key():
    with pytest.raises(ConfigError, match=r"privacy\.dp\.target_epsilon = 1e-09 is out of reach"):
        SimEngine(Experiment.build(dp_config({"target_epsilon": 1e-9})))


# the gradient: clipped per sample, noised per node

def test_each_sample_moves_a_step_by_at_most_the_clip_norm():
    """With σ = 0 and SGD at lr = 1, one local step moves a node by ‖mean of clipped
    gradients‖ ≤ C, however large the raw gradients."""
    clip = 1e-3
    sim = SimEngine(Experiment.build(dp_config({"noise_multiplier": 0.0, "clip_norm": clip},
                                               training__local_steps=1, training__lr=1.0)))
    start = sim.nodes.params.clone()
    sim.trainer.train(sim.nodes)
    step = (sim.nodes.params - start).norm(dim=1)
    assert (step <= clip * (1 + 1e-4)).all() and (step > 0).all(), step


def test_a_sample_drawn_twice_shares_its_clip_norm():
    """A batch that wraps around the node's data holds a sample twice: its copies share C,
    so the sample still moves the step by at most C."""
    dp = privacy(seed=0, clip_norm=1.0, sigma=0.0, size=3)
    huge = torch.tensor([100.0, 0.0, 0.0])
    per_sample = [huge.expand(1, 4, 3)]                       # 4 copies of the same large gradient
    (grad,) = dp.gradients(per_sample, [0], torch.tensor([[7, 7, 7, 9]]))
    # sample 7: three copies clipped to 1/3 each; sample 9: clipped to 1; mean over 4
    torch.testing.assert_close(grad[0], torch.tensor([0.5, 0.0, 0.0]))


@pytest.mark.parametrize("batching", ["vmap", "loop"])
def test_no_noise_and_no_clipping_is_plain_training(batching):
    plain = run_sim(small_config(engine__batching=batching, engine__chunk_size=3))
    dp = run_sim(dp_config({"noise_multiplier": 0.0, "clip_norm": 1e9}, engine__batching=batching,
                           engine__chunk_size=3))
    torch.testing.assert_close(dp.nodes.params, plain.nodes.params, rtol=0, atol=1e-6)
    torch.testing.assert_close(dp.last_loss, plain.last_loss, rtol=0, atol=1e-6)


def test_noise_comes_from_the_seed_and_node_only():
    zeros = [torch.zeros(1, 4, 5)]
    index = torch.arange(4).view(1, 4)
    first, again, other = (privacy(seed).gradients(zeros, [0], index)[0] for seed in (3, 3, 4))
    assert torch.equal(first, again) and not torch.allclose(first, other)
    assert first.abs().max() > 0.05   # σ·C/batch = 0.25: there is noise


def test_dp_training_does_not_depend_on_chunks_or_batching():
    """Each node's noise stream is its own, so how nodes are grouped changes nothing."""
    runs = [run_sim(dp_config(engine__chunk_size=chunk, engine__batching=batching))
            for chunk, batching in ((3, "vmap"), (8, "vmap"), (1, "loop"))]
    for other in runs[1:]:
        torch.testing.assert_close(other.nodes.params, runs[0].nodes.params, rtol=0, atol=1e-5)
    again = run_sim(dp_config(engine__chunk_size=3))
    assert torch.equal(again.nodes.params, runs[0].nodes.params)
    plain = run_sim(small_config(engine__chunk_size=3))
    assert (runs[0].nodes.params - plain.nodes.params).abs().max() > 1e-3   # the noise did something


# the accountant

@pytest.mark.parametrize("accountant", ["rdp", "prv"])
def test_epsilon_grows_and_matches_opacus(accountant):
    from opacus.accountants import PRVAccountant, RDPAccountant

    cfg = dp_config({"noise_multiplier": 1.1, "accountant": accountant}, nodes=4, evaluation__every=3)
    sim = SimEngine(Experiment.build(cfg))
    eps = [sim.step(rnd).node_metrics["epsilon"] for rnd in range(cfg.rounds + 1)]
    assert (eps[0] == 0).all() and all((later > earlier).all() for earlier, later in zip(eps, eps[1:]))
    exp, delta = sim.experiment, cfg.privacy.dp.delta
    for node in range(cfg.nodes):
        n = len(exp.parts[node])
        opacus = {"rdp": RDPAccountant, "prv": PRVAccountant}[accountant]()
        opacus.history = [(1.1, cfg.training.batch_size / n, cfg.rounds * local_steps(cfg.training, n))]
        assert eps[-1][node] == pytest.approx(opacus.get_epsilon(delta), rel=1e-9)


def test_target_epsilon_is_reached_with_a_sigma_per_node():
    cfg = dp_config({"target_epsilon": 2.0}, nodes=4)
    sim = run_sim(cfg)
    final = sim.trainer.epsilon(range(cfg.nodes))
    assert ((final <= 2.0) & (final >= 2.0 - 0.02)).all(), final
    sigmas = sim.trainer.dp_sigma
    assert sorted(sigmas) == list(range(cfg.nodes)) and len(set(sigmas.values())) > 1  # nodes hold different data


def test_epsilon_in_run_directory_and_plot(tmp_path):
    cfg = dp_config()
    run_experiment(cfg, tmp_path / "run")
    rounds = read_jsonl(tmp_path / "run" / "rounds.jsonl")
    means = [r["epsilon_per_node"] for r in rounds]
    assert means[0] == 0 and all(b > a for a, b in zip(means, means[1:]))
    assert all(r["epsilon_max"] >= r["epsilon_per_node"] for r in rounds)
    rows = read_jsonl(tmp_path / "run" / "nodes.jsonl")
    last = [r["epsilon"] for r in rows if r["round"] == cfg.rounds]
    assert len(last) == cfg.nodes and np.mean(last) == pytest.approx(means[-1])
    fig = build_figure(load_runs([tmp_path / "run"]))   # default panels gain accuracy against ε
    assert fig.axes[-1].get_xlabel().startswith("privacy spent ε") and len(fig.axes) == 4
    assert len(fig.axes[-1].get_lines()[0].get_xdata()) == cfg.rounds + 1


def test_no_epsilon_without_dp():
    sim = SimEngine(Experiment.build(small_config()))
    record, _ = round_record(sim.step(0))
    assert "epsilon" not in sim.step(1).node_metrics and "epsilon_per_node" not in record
    assert np.isnan(sim.trainer.epsilon([0, 1])).all() and sim.trainer.dp_sigma == {}


# the networked engine

def test_processes_match_sim_with_dp():
    cfg = dp_config(engine__timeout_s=120)
    sim = SimEngine(Experiment.build(cfg), "0123456789ab")
    sim_reports = [sim.step(rnd) for rnd in range(cfg.rounds + 1)]
    engine = ProcessesEngine(Experiment.build(cfg), "0123456789ab", workers=2, keep_models=True)
    engine.start()
    try:
        reports = [engine.step(rnd) for rnd in range(cfg.rounds + 1)]
    finally:
        extra = engine.close()
    assert extra["failures"] == []
    assert (engine.params - sim.nodes.params).abs().max().item() <= 1e-5
    for ours, theirs in zip(reports, sim_reports):
        np.testing.assert_array_equal(ours.nodes, theirs.nodes)
        np.testing.assert_allclose(ours.node_metrics["epsilon"], theirs.node_metrics["epsilon"], rtol=1e-12)
    final = reports[-1].node_metrics["epsilon"]
    assert final.dtype == np.float64 and (final > 0).all()
