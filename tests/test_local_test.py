"""Local test sets: a share of each node's own samples held out to score the node's model on
its own data distribution, next to the global test figures."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import small_config
from test_processes import run_processes, run_sim

import meshlearn
from meshlearn import streams
from meshlearn.evaluation import Evaluation, RoundReport, round_record
from meshlearn.experiment import Experiment, hold_out_local_tests
from meshlearn.results import merge_runs, read_jsonl
from meshlearn.streams import Stream

LOCAL_KEYS = {"local_acc_mean", "local_acc_min", "local_acc_p10", "local_acc_worst_node", "local_loss_mean",
              "local_nodes"}


def _evaluations(reports) -> list[Evaluation]:
    return [r.evaluation for r in reports if r.evaluation is not None]


# the split

@pytest.mark.parametrize("partition", [{"data__partition": "dirichlet", "data__alpha": 0.3},
                                       {"data__partition": "shards", "data__shards_per_node": 2}],
                         ids=["dirichlet", "shards"])
def test_local_tests_are_held_out_of_each_node_share(partition):
    """Training part + local test set = the node's whole share, disjoint, round(m·share) held
    out, and the held-out labels are labels of the node's own share."""
    whole = Experiment.build(small_config(**partition)).parts
    exp = Experiment.build(small_config(evaluation__local_test=0.2, **partition))
    labels = exp.dataset.y_train
    assert len(exp.local_tests) == len(exp.parts) == 8
    for node, (train, test, share) in enumerate(zip(exp.parts, exp.local_tests, whole)):
        assert len(np.intersect1d(train, test)) == 0
        np.testing.assert_array_equal(np.sort(np.concatenate([train, test])), share)
        assert len(test) == round(len(share) * 0.2) > 0
        assert set(labels[test].tolist()) <= set(labels[share].tolist())
        if "shards" in partition.values():   # two label shards: at most a few classes, all of them the node's
            assert len(set(labels[share].tolist())) <= 4
    held = np.concatenate(exp.local_tests)
    assert len(np.unique(held)) == len(held)   # no sample is in two nodes' local test sets
    assert len(np.intersect1d(held, np.concatenate(exp.parts))) == 0


def test_local_test_labels_follow_the_node_distribution():
    """On a skewed split (Dirichlet 0.1) each class's count in a node's local test set is
    within sampling error of its share in the node's data (hypergeometric, 4 sigma)."""
    exp = Experiment.build(small_config(data__alpha=0.1, evaluation__local_test=0.3))
    labels = exp.dataset.y_train
    for train, test in zip(exp.parts, exp.local_tests):
        whole = np.bincount(labels[np.concatenate([train, test])], minlength=10)
        p = whole / whole.sum()
        got = np.bincount(labels[test], minlength=10)
        assert (np.abs(got - len(test) * p) <= 4 * np.sqrt(len(test) * p * (1 - p)) + 1).all(), (got, whole)


def test_split_sizes_and_small_nodes():
    """m = 1: nothing; m = 2: one sample though round(0.4) = 0; min_samples for training wins
    over the one test sample; round(1.4) = 1, round(1.6) = 2."""
    parts = [np.arange(m, dtype=np.int64) + 100 * k for k, m in enumerate([0, 1, 2, 10, 5, 3, 7, 8])]
    train, tests = hold_out_local_tests(parts, 0.2, 1, seed=3)
    assert [len(t) for t in tests] == [0, 0, 1, 2, 1, 1, 1, 2]
    assert [len(t) for t in train] == [0, 1, 1, 8, 4, 2, 6, 6]
    _, tests = hold_out_local_tests(parts, 0.2, 3, seed=3)
    assert [len(t) for t in tests] == [0, 0, 0, 2, 1, 0, 1, 2]
    _, tests = hold_out_local_tests(parts, 0.9, 3, seed=3)   # at most m - min_samples
    assert [len(t) for t in tests] == [0, 0, 0, 7, 2, 0, 4, 5]
    train, tests = hold_out_local_tests(parts, 0.0, 1, seed=3)
    assert train is parts and all(len(t) == 0 for t in tests)


def test_split_depends_only_on_seed_and_node():
    """A node's split does not change with other nodes' data, their number or the engine; it
    changes with the seed."""
    part = np.arange(40, 90, dtype=np.int64)
    _, a = hold_out_local_tests([np.arange(5), part], 0.2, 1, seed=7)
    _, b = hold_out_local_tests([np.arange(30, dtype=np.int64), part, np.arange(200, 260)], 0.2, 1, seed=7)
    _, c = hold_out_local_tests([np.arange(5), part], 0.2, 1, seed=8)
    np.testing.assert_array_equal(a[1], b[1])
    assert len(a[1]) == 10 and not np.array_equal(a[1], c[1])
    sim = Experiment.build(small_config(evaluation__local_test=0.2))
    processes = Experiment.build(small_config(evaluation__local_test=0.2, engine__name="processes"))
    for x, y in zip(sim.local_tests, processes.local_tests):
        np.testing.assert_array_equal(x, y)


def test_fedavg_scores_the_server_model_on_every_clients_local_test(tmp_path):
    """FedAvg's node 0 serves and holds no data (an empty local test set); the model of every
    client is the server's, so the local figures are the server's model on each client's set,
    the same on processes and through ``meshlearn merge``'s rebuilding from node rows."""
    cfg = small_config(nodes=5, rounds=2, algorithm={"name": "fedavg"}, topology={"kind": "star"},
                       evaluation__local_test=0.2)
    sim, reports = run_sim(cfg)
    exp = sim.experiment
    assert len(exp.parts[0]) == len(exp.local_tests[0]) == 0
    assert all(len(t) == round(0.2 * (len(t) + len(p))) > 0 for p, t in zip(exp.parts[1:], exp.local_tests[1:]))
    record, rows = round_record(reports[-1])
    assert record["eval_nodes"] == 1 and record["local_nodes"] == 4
    ev = reports[-1].evaluation
    for client, acc in zip(ev.local_nodes, ev.local_acc):   # by hand: the server's model on the client's set
        x = torch.from_numpy(exp.dataset.x_train[exp.local_tests[client]])
        y = torch.from_numpy(exp.dataset.y_train[exp.local_tests[client]])
        logits = torch.func.functional_call(exp.model, exp.layout.views(sim.nodes.params[0]), (x,))
        assert abs((logits.argmax(1) == y).float().mean().item() - acc) < 1e-6
    assert record["local_acc_mean"] == pytest.approx(float(np.mean(ev.local_acc)))
    assert [row["node"] for row in rows] == [0, 1, 2, 3, 4]
    assert "local_acc" not in rows[0] and all("test_acc" not in row for row in rows[1:])
    _, processes_reports, _ = run_processes(cfg, workers=2)
    theirs, their_rows = round_record(processes_reports[-1])
    assert {k: theirs[k] for k in LOCAL_KEYS} == pytest.approx({k: record[k] for k in LOCAL_KEYS}, rel=1e-6)
    assert [row.get("local_acc") for row in their_rows] == [row.get("local_acc") for row in rows]   # same hits
    meshlearn.run(cfg, out=tmp_path / "run")
    merge_runs([tmp_path / "run"], tmp_path / "merged")
    for a, b in zip(read_jsonl(tmp_path / "run" / "rounds.jsonl"), read_jsonl(tmp_path / "merged" / "rounds.jsonl"),
                    strict=True):
        assert {k: b[k] for k in LOCAL_KEYS} == pytest.approx({k: a[k] for k in LOCAL_KEYS})


# the records

def test_round_record_local_figures_by_hand():
    """22 evaluated nodes, node 3 without a local test set: 21 scored, the worst 10 % are
    21 // 10 = 2 nodes (0.50 and 0.55)."""
    nodes = np.arange(22)
    acc = np.full(22, 0.9)
    acc[[3, 7, 12]] = [np.nan, 0.5, 0.55]
    loss = np.where(np.isnan(acc), np.nan, 1.0)
    loss[7] = 2.05
    ev = Evaluation(nodes, np.full(22, 0.8), np.full(22, 0.6), 100, local_acc=acc, local_loss=loss)
    zeros = np.zeros(22)
    record, rows = round_record(RoundReport(4, nodes, zeros, zeros.astype(np.int64), zeros.astype(np.int64), 1.0,
                                            evaluation=ev))
    assert record["local_nodes"] == 21
    assert record["local_acc_mean"] == pytest.approx((19 * 0.9 + 0.5 + 0.55) / 21)
    assert record["local_acc_min"] == 0.5
    assert record["local_acc_p10"] == pytest.approx(0.525)
    assert record["local_acc_worst_node"] == 7
    assert record["local_loss_mean"] == pytest.approx((20 * 1.0 + 2.05) / 21)
    assert rows[7]["local_acc"] == 0.5 and rows[7]["local_loss"] == 2.05 and np.isnan(rows[3]["local_acc"])
    record, _ = round_record(RoundReport(4, nodes[:5], zeros[:5], zeros[:5].astype(np.int64),
                                         zeros[:5].astype(np.int64), 1.0,
                                         evaluation=Evaluation(nodes[:5], acc[:5], loss[:5], 100,
                                                               local_acc=acc[:5], local_loss=loss[:5])))
    assert record["local_acc_p10"] == 0.9 and record["local_nodes"] == 4   # at least one node


def test_records_match_the_final_models(tmp_path):
    """A 3-round run: every node's last local accuracy and loss, recomputed from its stored
    model on its own held-out samples, are the ones in nodes.jsonl and rounds.jsonl; and
    ``meshlearn merge`` rebuilds the same figures from the rows."""
    cfg = small_config(evaluation__local_test=0.25)
    run = meshlearn.run(cfg, out=tmp_path / "run")
    exp = Experiment.build(cfg)
    final = run.nodes[run.nodes["round"] == cfg.rounds].set_index("node")
    accs = []
    for node, state in enumerate(run.models()):
        model = exp.model
        model.load_state_dict(state)
        idx = exp.local_tests[node]
        with torch.no_grad():
            logits = model(torch.from_numpy(exp.dataset.x_train[idx]))
        y = torch.from_numpy(exp.dataset.y_train[idx])
        correct = int((logits.argmax(1) == y).sum())
        accs.append(correct / len(idx))
        assert final.loc[node, "local_acc"] == pytest.approx(correct / len(idx), abs=1e-6)
        assert final.loc[node, "local_loss"] == pytest.approx(float(F.cross_entropy(logits, y)), rel=1e-5)
    last = run.rounds.iloc[-1].to_dict()
    assert last["local_nodes"] == 8
    assert last["local_acc_mean"] == pytest.approx(np.mean(accs), abs=1e-6)
    assert last["local_acc_min"] == pytest.approx(min(accs), abs=1e-6) == last["local_acc_p10"]
    assert last["local_acc_worst_node"] == int(np.argmin(accs))
    assert len(set(accs)) > 1 and last["test_acc_mean"] != last["local_acc_mean"]
    final_nodes = json.loads((tmp_path / "run" / "nodes_final.json").read_text())
    assert [n["local_test_samples"] for n in final_nodes] == [len(t) for t in exp.local_tests]
    assert [n["train_samples"] for n in final_nodes] == [len(p) for p in exp.parts]
    merged = merge_runs([tmp_path / "run"], tmp_path / "merged")
    ours = read_jsonl(tmp_path / "run" / "rounds.jsonl")
    theirs = read_jsonl(tmp_path / "merged" / "rounds.jsonl")
    assert merged["status"] == "completed"
    for a, b in zip(ours, theirs, strict=True):
        assert {k: b[k] for k in LOCAL_KEYS} == pytest.approx({k: a[k] for k in LOCAL_KEYS})


def test_nothing_new_without_local_test(tmp_path):
    cfg = small_config(rounds=1)
    sim, reports = run_sim(cfg)
    assert all(len(t) == 0 for t in sim.experiment.local_tests)
    assert all(ev.local_acc is None and ev.local_loss is None for ev in _evaluations(reports))
    record, rows = round_record(reports[-1])
    assert not any("local" in key for key in record) and not any("local" in key for row in rows for key in row)
    meshlearn.run(cfg, out=tmp_path / "run")
    assert not any("local" in key for n in json.loads((tmp_path / "run" / "nodes_final.json").read_text()) for key in n)


def test_processes_report_the_simulator_local_figures():
    """Two worker processes give the simulator's local figures, node by node, including the
    NaN of a node whose share is too small to hold anything out (data.min_samples = its size)."""
    smallest = min(len(p) for p in Experiment.build(small_config()).parts)
    cfg = small_config(nodes=8, rounds=2, evaluation__local_test=0.2, data__min_samples=smallest,
                       engine__timeout_s=120)
    sim, sim_reports = run_sim(cfg)
    empty = [node for node, t in enumerate(sim.experiment.local_tests) if len(t) == 0]
    assert len(empty) == 1
    _, reports, extra = run_processes(cfg, workers=2)
    assert extra["failures"] == []
    ours, theirs = _evaluations(reports), _evaluations(sim_reports)
    assert len(ours) == len(theirs) == 3
    for a, b in zip(ours, theirs):
        np.testing.assert_array_equal(a.nodes, b.nodes)
        assert np.isnan(a.local_acc[empty]).all() and np.isnan(b.local_acc[empty]).all()
        np.testing.assert_array_equal(a.local_acc, b.local_acc)   # same models, same samples: identical
        np.testing.assert_array_equal(a.local_loss, b.local_loss)
    for a, b in zip(reports, sim_reports):
        if a.evaluation is not None:
            ra, rb = round_record(a)[0], round_record(b)[0]
            assert ra["local_nodes"] == rb["local_nodes"] == 7
            assert {k: ra[k] for k in LOCAL_KEYS} == {k: rb[k] for k in LOCAL_KEYS}


# validation sets

def _accuracy(model, x: np.ndarray, y: np.ndarray) -> float:
    with torch.no_grad():
        return float((model(torch.from_numpy(x)).argmax(1) == torch.from_numpy(y)).float().mean())


@pytest.mark.parametrize("source", ["train", "test"])
def test_validation_is_held_out_and_scored_next_to_the_test_set(source, tmp_path):
    """From train: each node's own share (disjoint from its training part and local test set);
    from test: one set out of the test samples. The recorded val_acc of every node is its final
    model's accuracy on that set, and ``meshlearn merge`` rebuilds the same figures."""
    cfg = small_config(evaluation__validation=0.2, evaluation__validation_from=source, evaluation__local_test=0.1,
                       evaluation__test_samples=0)
    exp = Experiment.build(cfg)
    whole = Experiment.build(small_config(evaluation__local_test=0.1)).parts
    run = meshlearn.run(cfg, out=tmp_path / "run")
    final = run.nodes[run.nodes["round"] == cfg.rounds].set_index("node")
    ds, n_test = exp.dataset, len(exp.dataset.y_test)
    if source == "train":
        for node, (train, val, local, share) in enumerate(zip(exp.parts, exp.validations, exp.local_tests, whole)):
            assert len(val) == round(len(share) * 0.2) > 0 and not set(val) & (set(train) | set(local))
            np.testing.assert_array_equal(np.sort(np.concatenate([train, val])), share)
    else:
        assert all(len(v) == 0 for v in exp.validations) and [len(p) for p in exp.parts] == [len(p) for p in whole]
    accs = []
    for node, state in enumerate(run.models()):
        exp.model.load_state_dict(state)
        if source == "train":
            x, y = ds.x_train[exp.validations[node]], ds.y_train[exp.validations[node]]
        else:
            held = np.zeros(n_test, dtype=bool)
            held[streams.generator(cfg.seed, Stream.VALIDATION).choice(
                n_test, round(0.2 * n_test), replace=False)] = True
            x, y = ds.x_test[held], ds.y_test[held]
            assert final.loc[node, "test_acc"] == pytest.approx(_accuracy(exp.model, ds.x_test[~held],
                                                                          ds.y_test[~held]), abs=1e-6)
        accs.append(_accuracy(exp.model, x, y))
        assert final.loc[node, "val_acc"] == pytest.approx(accs[-1], abs=1e-6)
    last = run.rounds.iloc[-1]
    assert last["val_acc_mean"] == pytest.approx(np.mean(accs), abs=1e-6) and last["val_acc_min"] == pytest.approx(
        min(accs), abs=1e-6)
    merge_runs([tmp_path / "run"], tmp_path / "merged")
    keys = ("val_acc_mean", "val_acc_min", "val_loss_mean")
    for a, b in zip(read_jsonl(tmp_path / "run" / "rounds.jsonl"), read_jsonl(tmp_path / "merged" / "rounds.jsonl"),
                    strict=True):
        assert {k: b[k] for k in keys} == pytest.approx({k: a[k] for k in keys})


def test_processes_report_the_simulator_validation_figures():
    cfg = small_config(nodes=8, rounds=2, evaluation__validation=0.2, engine__timeout_s=120)
    _, sim_reports = run_sim(cfg)
    _, reports, extra = run_processes(cfg, workers=2)
    assert extra["failures"] == []
    for a, b in zip(_evaluations(reports), _evaluations(sim_reports), strict=True):
        np.testing.assert_allclose(a.val_acc, b.val_acc, atol=1e-6)
        np.testing.assert_allclose(a.val_loss, b.val_loss, rtol=1e-5)
