"""Federated baselines on a star (node 0 = server, nodes 1..N-1 = clients): FedAvg against
centralized mini-batch SGD, sample-count weighting, client sampling, bytes, the parameter
server, server-only evaluation; and the ``processes`` engine against the simulator for FedAvg
and for D-PSGD on graphs that change every round (dynamic regular, Epidemic Learning)."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from conftest import small_config
from meshlearn import wire
from meshlearn.algorithms.federated import SERVER
from meshlearn.engines.sim import SimEngine
from meshlearn.evaluation import Evaluator
from meshlearn.experiment import Experiment
from meshlearn.results import read_jsonl
from meshlearn.runner import run_experiment
from meshlearn import streams
from meshlearn.streams import Stream
from meshlearn.training import BatchSampler
from test_processes import RUN_ID, assert_same_run, records, run_processes, run_sim


def fl_config(**overrides):
    """FedAvg on a star over the bundled digits (override anything with section__key names)."""
    base = {
        "nodes": 5, "rounds": 3, "topology": {"kind": "star"}, "model": {"name": "logreg"},
        "algorithm": {"name": "fedavg"},
        "data": {"dataset": "digits", "partition": "iid", "options": {"limit_train": 400}},
        "training": {"local_steps": 1, "batch_size": 8, "lr": 0.1},
    }
    for key, value in overrides.items():
        section, _, leaf = key.partition("__")
        if leaf:
            base[section] = {**base.get(section, {}), leaf: value}
        else:
            base[key] = value
    return small_config(**base)


def trained(loss: torch.Tensor) -> list[int]:
    """The nodes that trained this round (the others report NaN)."""
    return np.flatnonzero(np.isfinite(loss.numpy())).tolist()


# --------------------------------------------------------------------------- FedAvg = centralized SGD


@pytest.mark.parametrize("model", [{"name": "logreg"}, {"name": "mlp", "options": {"hidden": [16]}}],
                         ids=["logreg", "mlp"])
@pytest.mark.parametrize("fraction", [1.0, 0.5])
def test_fedavg_one_local_step_is_centralized_minibatch_sgd(model, fraction):
    """With one local SGD step and equal client sizes, the server's new model is x − η ∇ of the
    mean loss over the union of the sampled clients' batches: plain SGD on one big batch."""
    cfg = fl_config(model=model, algorithm={"name": "fedavg", "client_fraction": fraction})
    exp = Experiment.build(cfg)
    assert [len(p) for p in exp.parts] == [0, 100, 100, 100, 100]   # equal sizes: equal weights
    sim = SimEngine(exp)
    # the clients' batches, drawn from the same per-node streams as the trainer's samplers
    samplers = {k: BatchSampler(exp.parts[k], cfg.training.batch_size,
                                streams.generator(cfg.seed, Stream.MINI_BATCH, k)) for k in range(1, cfg.nodes)}
    central = copy.deepcopy(exp.model)
    opt = torch.optim.SGD(central.parameters(), lr=cfg.training.lr)
    x, y = torch.from_numpy(exp.dataset.x_train), torch.from_numpy(exp.dataset.y_train)
    start = exp.layout.flatten(central)
    for rnd in range(1, cfg.rounds + 1):
        clients = trained(sim.run_round(rnd))
        assert len(clients) == round(fraction * 4) and SERVER not in clients
        idx = torch.from_numpy(np.concatenate([samplers[k].next_batches(1)[0] for k in clients]))
        opt.zero_grad()
        F.cross_entropy(central(x[idx]), y[idx]).backward()
        opt.step()
        diff = (sim.nodes.params[SERVER] - exp.layout.flatten(central)).abs().max().item()
        assert diff <= 1e-5, (rnd, diff)
    assert (sim.nodes.params[SERVER] - start).abs().max().item() > 1e-2   # it learned: not vacuous


@pytest.mark.parametrize("fraction", [1.0, 0.5])
def test_server_weights_clients_by_sample_count(fraction):
    cfg = fl_config(nodes=7, data={"dataset": "digits", "partition": "dirichlet", "alpha": 0.5},
                    training={"local_steps": 3, "batch_size": 8, "lr": 0.1},
                    algorithm={"name": "fedavg", "client_fraction": fraction})
    exp = Experiment.build(cfg)
    sizes = np.array([len(p) for p in exp.parts], dtype=np.float64)
    assert sizes[0] == 0 and sizes[1:].max() > 1.5 * sizes[1:].min()   # unequal clients
    sim = SimEngine(exp)
    for rnd in range(1, cfg.rounds + 1):
        clients = trained(sim.run_round(rnd))
        models = sim.nodes.params[clients].double()   # clients keep the models they trained and sent
        w = torch.from_numpy(sizes[clients] / sizes[clients].sum())
        weighted = (w[:, None] * models).sum(0)
        server = sim.nodes.params[SERVER].double()
        assert (server - weighted).abs().max().item() <= 1e-5
        assert (server - models.mean(0)).abs().max().item() > 1e-4   # the plain mean would be wrong


def test_clients_hold_the_shards_of_a_decentralized_run_with_one_node_less():
    data = {"dataset": "digits", "partition": "shards", "shards_per_node": 2}
    fl = Experiment.build(fl_config(nodes=9, data=data))
    dl = Experiment.build(small_config(nodes=8, data=data))
    assert len(fl.parts[SERVER]) == 0
    for client, node in zip(fl.parts[1:], dl.parts, strict=True):
        np.testing.assert_array_equal(client, node)


# --------------------------------------------------------------------------- client sampling


def test_client_sampling_is_distinct_seeded_and_uniform():
    def algorithm(seed, fraction, nodes=11):
        exp = Experiment.build(fl_config(nodes=nodes, seed=seed, data__partition="iid",
                                         algorithm={"name": "fedavg", "client_fraction": fraction}))
        return SimEngine(exp).algorithm

    a, again, other = algorithm(3, 0.3), algorithm(3, 0.3), algorithm(4, 0.3)
    draws = [a.clients(r) for r in range(1, 301)]
    for picked in draws:
        assert len(picked) == 3 and len(set(picked.tolist())) == 3
        assert picked.min() >= 1 and picked.max() <= 10              # never the server
    assert all(np.array_equal(p, again.clients(r)) for r, p in enumerate(draws, start=1))
    assert any(not np.array_equal(p, other.clients(r)) for r, p in enumerate(draws[:5], start=1))
    assert len({tuple(p) for p in draws[:10]}) > 1                   # a new sample each round
    counts = np.bincount(np.concatenate(draws), minlength=11)[1:]
    assert counts.min() > 0.7 * 90 and counts.max() < 1.3 * 90     # 300 rounds × 3 / 10 clients
    assert len(algorithm(3, 0.01).clients(1)) == 1                    # at least one client
    np.testing.assert_array_equal(algorithm(3, 1.0).clients(7), np.arange(1, 11))


def test_only_sampled_clients_train():
    cfg = fl_config(nodes=9, algorithm={"name": "fedavg", "client_fraction": 0.5},
                    training={"local_steps": 2, "batch_size": 8, "lr": 0.1})
    sim = SimEngine(Experiment.build(cfg))
    for rnd in range(1, cfg.rounds + 1):
        before = sim.nodes.params.clone()
        loss = sim.run_round(rnd)
        sampled = sim.algorithm.clients(rnd)
        assert trained(loss) == sampled.tolist() and len(sampled) == 4
        for node in range(1, cfg.nodes):
            changed = not torch.equal(sim.nodes.params[node], before[node])
            assert changed == (node in sampled), (rnd, node)
        assert not torch.equal(sim.nodes.params[SERVER], before[SERVER])


# --------------------------------------------------------------------------- bytes


@pytest.mark.parametrize("algorithm, name", [({"name": "fedavg", "client_fraction": 0.5}, "params"),
                                             ({"name": "parameter_server", "client_fraction": 0.5}, "update")])
def test_bytes_server_sends_m_models_and_each_sampled_client_one(algorithm, name):
    cfg = fl_config(nodes=9, algorithm=algorithm)
    sim = SimEngine(Experiment.build(cfg), run_id=RUN_ID)
    size = lambda src, dst, rnd, meta, key: wire.message_nbytes(
        wire.Message(RUN_ID, src, rnd, "model", {key: sim.nodes.params[0]}, meta))
    for rnd in range(1, cfg.rounds + 1):
        before = sim.bytes_sent.copy()
        sim.run_round(rnd)
        sent = sim.bytes_sent - before
        clients = sim.algorithm.clients(rnd)
        m = len(clients)
        assert m == 4
        # down: the global model (always "params"); up: the model or the update, in the round's second exchange
        assert sent[SERVER] == sum(size(SERVER, c, rnd, {"dst": int(c)}, "params") for c in clients)
        for node in range(1, cfg.nodes):
            expect = size(node, SERVER, rnd, {"dst": SERVER, "step": 1}, name) if node in clients else 0
            assert sent[node] == expect, (rnd, node)
    # 2 m messages a round, whatever N is: 4 clients of 8 here
    assert sim.bytes_sent.sum() == pytest.approx(2 * 4 * cfg.rounds * sim.nodes.params.shape[1] * 4, rel=0.05)


# --------------------------------------------------------------------------- parameter server


def test_parameter_server_with_unit_step_and_no_momentum_is_fedavg():
    kw = dict(nodes=7, data={"dataset": "digits", "partition": "dirichlet", "alpha": 0.5},
              training={"local_steps": 3, "batch_size": 8, "lr": 0.1})
    fedavg = SimEngine(Experiment.build(fl_config(**kw, algorithm={"name": "fedavg", "client_fraction": 0.5})))
    ps = SimEngine(Experiment.build(fl_config(**kw, algorithm={"name": "parameter_server", "client_fraction": 0.5,
                                                               "server_lr": 1.0, "server_momentum": 0.0})))
    for rnd in range(1, 4):
        fedavg.run_round(rnd)
        ps.run_round(rnd)
        assert (fedavg.nodes.params - ps.nodes.params).abs().max().item() <= 1e-5


def test_parameter_server_applies_its_step_size_and_momentum():
    lr, beta = 0.5, 0.9
    cfg = fl_config(nodes=7, data={"dataset": "digits", "partition": "dirichlet", "alpha": 0.5},
                    training={"local_steps": 3, "batch_size": 8, "lr": 0.1},
                    algorithm={"name": "parameter_server", "server_lr": lr, "server_momentum": beta})
    exp = Experiment.build(cfg)
    sizes = torch.tensor([len(p) for p in exp.parts], dtype=torch.float64)
    sim = SimEngine(exp)
    velocity = torch.zeros(exp.layout.size, dtype=torch.float64)
    for rnd in range(1, cfg.rounds + 1):
        server = sim.nodes.params[SERVER].double()
        sim.run_round(rnd)
        w = sizes[1:] / sizes[1:].sum()
        update = (w[:, None] * (sim.nodes.params[1:].double() - server)).sum(0)   # clients started from server
        velocity = beta * velocity + update
        expect = server + lr * velocity
        assert (sim.nodes.params[SERVER].double() - expect).abs().max().item() <= 1e-5
    assert (velocity - update).abs().max().item() > 1e-3   # momentum mattered


# --------------------------------------------------------------------------- sparse ternary compression


@pytest.mark.parametrize("client_fraction", [1.0, 0.5])
def test_stc_keeping_every_value_is_fedavg(client_fraction):
    kw = dict(nodes=7, data={"dataset": "digits", "partition": "dirichlet", "alpha": 0.5},
              training={"local_steps": 3, "batch_size": 8, "lr": 0.1})
    fedavg = SimEngine(Experiment.build(fl_config(**kw, algorithm={"name": "fedavg",
                                                                   "client_fraction": client_fraction})))
    stc = SimEngine(Experiment.build(fl_config(**kw, algorithm={
        "name": "stc", "options": {"client_fraction": client_fraction, "fraction": 1.0, "ternarize": False}})))
    for rnd in range(1, 4):
        fedavg.run_round(rnd)
        stc.run_round(rnd)
        assert (fedavg.nodes.params[SERVER] - stc.nodes.params[SERVER]).abs().max().item() <= 1e-5


def test_stc_moves_everyone_by_one_sparse_ternary_broadcast_and_counts_its_bytes():
    """Each round the global model (the same on every node) moves at exactly k coordinates, all
    by the same magnitude; a sampled client sends one compressed update, the server one broadcast
    per client, each message the wire size of its mean, sign bits and support."""
    cfg = fl_config(nodes=6, model={"name": "mlp", "options": {"hidden": [16]}},
                    algorithm={"name": "stc", "options": {"client_fraction": 0.6, "fraction": 0.05}})
    sim = SimEngine(Experiment.build(cfg), run_id=RUN_ID)
    size = sim.nodes.params.shape[1]
    k = round(0.05 * size)
    for rnd in range(1, cfg.rounds + 1):
        before, start = sim.bytes_sent.copy(), sim.nodes.params[SERVER].clone()
        sim.run_round(rnd)
        assert (sim.nodes.params == sim.nodes.params[SERVER]).all()
        step = (sim.nodes.params[SERVER] - start)[sim.nodes.params[SERVER] != start]
        assert len(step) == k and torch.allclose(step.abs(), step.abs()[0].expand(k))
        up = sim.algorithm.up.compress(torch.randn(1, size), torch.tensor([1]), rnd)
        nbytes = lambda src, dst, meta: wire.message_nbytes(wire.Message(RUN_ID, src, rnd, "model",
                                                                         {n: t[0] for n, t in up.items()}, meta))
        sent = sim.bytes_sent - before
        clients = sim.algorithm.clients(rnd)
        assert sent[SERVER] == sum(nbytes(SERVER, c, {"dst": c, "step": 1}) for c in range(1, cfg.nodes))
        for node in range(1, cfg.nodes):
            assert sent[node] == (nbytes(node, SERVER, {"dst": SERVER}) if node in clients else 0)
    # FedAvg sends 2 whole models per sampled client and round: STC's fraction 0.05 costs under a tenth of that
    assert sim.bytes_sent.sum() < 0.1 * (2 * 3 * cfg.rounds) * 4 * size


@pytest.mark.parametrize("change, message", [({"sharing": {"name": "topk"}}, "sharing.name = 'full'"),
                                             ({"model": {"name": "logreg", "same_init": False}}, "same_init"),
                                             ({"availability": {"model": "bernoulli"}}, "availability")])
def test_stc_refuses_what_would_break_the_shared_global_model(change, message):
    with pytest.raises(Exception, match=message):
        fl_config(algorithm={"name": "stc"}, **change)


# --------------------------------------------------------------------------- evaluation


def test_evaluation_reports_only_the_server_model(tmp_path):
    cfg = fl_config(nodes=6, algorithm={"name": "fedavg", "client_fraction": 0.4}, evaluation={"every": 1})
    exp = Experiment.build(cfg)
    sim = SimEngine(exp)
    evaluator = Evaluator(exp)
    for rnd in range(cfg.rounds + 1):
        report = sim.step(rnd)
        ev = report.evaluation
        np.testing.assert_array_equal(ev.nodes, [SERVER])
        acc, loss = evaluator.models(sim.nodes.params[:1])
        assert ev.acc.tolist() == acc.tolist() and ev.loss.tolist() == loss.tolist()
        assert ev.avg_model_acc is None
    run_experiment(cfg, tmp_path)
    rounds = read_jsonl(tmp_path / "rounds.jsonl")
    assert [r["round"] for r in rounds] == [0, 1, 2, 3]
    for r in rounds:
        assert r["eval_nodes"] == 1 and r["test_acc_min"] == r["test_acc_max"] == r["test_acc_mean"]
        assert "avg_model_acc" not in r
    assert rounds[-1]["test_acc_mean"] == pytest.approx(float(evaluator.models(sim.nodes.params[:1])[0][0]))
    assert rounds[-1]["train_loss_mean"] is not None    # over the clients that trained (the server reports NaN)
    assert {row["node"] for row in read_jsonl(tmp_path / "nodes.jsonl")} == {SERVER}


# --------------------------------------------------------------------------- processes engine = sim


@pytest.mark.parametrize("algorithm", [
    {"name": "fedavg", "client_fraction": 0.5},
    {"name": "parameter_server", "client_fraction": 0.5, "server_lr": 0.5, "server_momentum": 0.9},
    {"name": "stc", "options": {"client_fraction": 0.5, "fraction": 0.1}},
], ids=["fedavg", "parameter-server", "stc"])
def test_processes_match_sim_for_federated(algorithm):
    cfg = fl_config(nodes=8, algorithm=algorithm, training={"local_steps": 3, "batch_size": 8, "lr": 0.1},
                    evaluation={"every": 1, "test_samples": 100}, engine={"timeout_s": 120})
    sim, sim_reports = run_sim(cfg)
    engine, reports, extra = run_processes(cfg, workers=2)
    assert extra["failures"] == []
    assert engine.params is not None and not torch.isnan(engine.params).any()
    diff = (engine.params - sim.nodes.params).abs().max().item()
    assert diff <= 1e-5, diff
    start = Experiment.build(cfg).initial_params([SERVER])[0]
    assert (sim.nodes.params[SERVER] - start).abs().max().item() > 1e-2
    for a, b in zip(reports, sim_reports):
        np.testing.assert_array_equal(a.bytes_sent, b.bytes_sent)
        np.testing.assert_array_equal(a.header_bytes, b.header_bytes)
        np.testing.assert_array_equal(a.node_metrics["messages_missing"], 0)
        assert a.node_metrics["bytes_received"].sum() == a.bytes_sent.sum()
        np.testing.assert_array_equal(np.isnan(a.train_loss), np.isnan(b.train_loss))  # the same clients trained
    ours, theirs = records(reports), records(sim_reports)
    assert len(ours) == len(theirs) == cfg.rounds + 1
    for a, b in zip(ours, theirs):
        assert a["eval_nodes"] == b["eval_nodes"] == 1
        assert abs(a["test_acc_mean"] - b["test_acc_mean"]) <= 1e-6
        assert abs(a["test_loss_mean"] - b["test_loss_mean"]) <= 1e-5
        assert a["bytes_sent_per_node"] == b["bytes_sent_per_node"]
    assert sim_reports[-1].bytes_sent[SERVER] > 0


@pytest.mark.parametrize("topology", [
    {"kind": "regular", "degree": 4, "dynamic": True},
    {"kind": "epidemic", "peers": 3},
], ids=["dynamic-4-regular", "epidemic-s3"])
def test_processes_match_sim_on_changing_graphs(topology):
    cfg = small_config(nodes=8, rounds=3, topology=topology, model={"name": "logreg"},
                       engine={"timeout_s": 120})
    sim, sim_reports = run_sim(cfg)
    engine, reports, extra = run_processes(cfg, workers=2)
    assert extra["failures"] == []
    assert_same_run(sim, sim_reports, engine, reports)
    assert engine.message_bytes == sim.message_bytes
    ours = records(reports)
    for a, b in zip(ours, records(sim_reports)):
        assert a["spectral_gap"] == b["spectral_gap"] and a["topology"] == b["topology"]


def test_federated_runs_with_a_link_file(tmp_path):
    """network.file rows are star edges; each of FedAvg's two exchanges uses the rows of its
    own links (this used to fail: the server → clients graph is not the undirected star)."""
    links = tmp_path / "links.csv"
    links.write_text("src,dst,latency_ms\n0,1,200\n2,0,300\n")
    cfg = fl_config(network={"file": str(links)})
    sim = SimEngine(Experiment.build(cfg))
    reports = [sim.step(rnd) for rnd in range(cfg.rounds + 1)]
    # per round: the slowest message of the download (200 ms) plus that of the upload (300 ms)
    last = reports[-1]
    assert last.sim_time_s - last.wall_time_s == pytest.approx(0.5 * cfg.rounds)
    links.write_text("src,dst,latency_ms\n1,2,5\n")   # clients never talk to each other
    with pytest.raises(ValueError, match="not an edge"):
        SimEngine(Experiment.build(cfg))
