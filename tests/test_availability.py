"""Availability (churn): offline nodes neither train nor send, their neighbours renormalize over
who is present, they come back with their stale model, and every engine agrees."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import small_config
from meshlearn.config import AvailabilityConfig, ConfigError
from meshlearn.dynamics import Availability
from meshlearn.engines.network import renormalized
from meshlearn.experiment import Experiment
from meshlearn.results import read_jsonl, read_models
from meshlearn.runner import run_experiment


def trace(tmp_path: Path, text: str) -> str:
    path = tmp_path / "trace.csv"
    path.write_text(text)
    return str(path)


def models(out: Path) -> dict:
    return read_models(out / "models.safetensors")


def test_everyone_online_gives_todays_results(tmp_path):
    """A churn model under which nobody leaves (probability 1, an empty trace) changes nothing."""
    plain = run_experiment(small_config(rounds=4), tmp_path / "plain")
    for name, availability in {"bernoulli": {"model": "bernoulli", "online_probability": 1.0},
                               "trace": {"model": "trace", "file": trace(tmp_path, "node,offline_from,online_from\n")}
                               }.items():
        churn = run_experiment(small_config(rounds=4, availability=availability), tmp_path / name)
        assert all(torch.equal(a, b) for a, b in zip(models(tmp_path / "plain").values(), models(tmp_path / name).values()))
        assert churn["bytes_sent_per_node"] == plain["bytes_sent_per_node"]
        assert churn["final"]["online_nodes"] == 8 and churn["final"]["rounds_online_per_node"] == 4


def test_node_offline_for_rounds_3_to_5_sends_nothing_and_keeps_its_model(tmp_path, monkeypatch):
    """Node 2 is offline in rounds 3, 4 and 5: its byte count does not move then, its model
    after round 5 is its model after round 2, and it is counted offline."""
    from meshlearn.engines.sim import SimEngine

    cfg = small_config(rounds=7, evaluation__every=1,
                       availability={"model": "trace", "file": trace(tmp_path, "node,offline_from,online_from\n2,3,6\n")})
    snapshots = {}   # round -> node 2's model and training loss after it
    original = SimEngine.run_round

    def run_round(self, rnd):
        loss = original(self, rnd)
        snapshots[rnd] = (self.nodes.params[2].clone(), loss[2].item())
        return loss

    monkeypatch.setattr(SimEngine, "run_round", run_round)
    run_experiment(cfg, tmp_path / "run")
    rows = [r for r in read_jsonl(tmp_path / "run" / "nodes.jsonl") if r["node"] == 2]
    sent = {r["round"]: r["bytes_sent"] for r in rows}
    assert sent[2] == sent[3] == sent[4] == sent[5] < sent[6] and sent[1] < sent[2]
    assert [r["online"] for r in rows] == [1, 1, 1, 0, 0, 0, 1, 1]
    assert torch.equal(snapshots[5][0], snapshots[2][0]) and not torch.equal(snapshots[6][0], snapshots[5][0])
    assert np.isnan(snapshots[4][1]) and not np.isnan(snapshots[6][1])
    final = {r["node"]: r for r in json.loads((tmp_path / "run" / "nodes_final.json").read_text())}
    assert final[2]["rounds_online"] == 4 and final[3]["rounds_online"] == 7


def test_neighbours_renormalize_exactly_as_for_lost_messages():
    """The round graph without the offline nodes holds, for every receiver, the weights a
    receiver computes when those senders' messages are lost; offline nodes keep only themselves."""
    experiment = Experiment.build(small_config(nodes=12))
    graph = experiment.topology.graph(1)
    absent = np.zeros(12, dtype=bool)
    absent[[2, 7]] = True
    restricted = graph.without(absent)
    off = graph.weights
    received = ~absent[off.indices]
    self_w, link_w = renormalized(graph.self_weight, off.data, graph.receivers, received)
    for i in range(12):
        if absent[i]:
            assert restricted.self_weight[i] == 1 and len(restricted.senders_of(i)) == 0
            continue
        links = slice(off.indptr[i], off.indptr[i + 1])
        kept = received[links]
        assert np.array_equal(restricted.senders_of(i), off.indices[links][kept])
        np.testing.assert_array_equal(restricted.weights.data[restricted.weights.indptr[i]:restricted.weights.indptr[i + 1]]
                                      .astype(np.float32), link_w[links][kept])
        assert np.float32(restricted.self_weight[i]) == self_w[i]
        assert restricted.self_weight[i] + restricted.weights[i].sum() == pytest.approx(1.0)
    assert not restricted.out_degree()[[2, 7]].any()


def test_sim_and_processes_agree_on_churn_from_a_trace(tmp_path):
    """The same trace on both engines: the same models (float rounding) and the same bytes."""
    availability = {"model": "trace", "file": trace(tmp_path, "node,offline_from,online_from\n2,3,6\n5,1,\n0,4,5\n")}
    sim = run_experiment(small_config(rounds=6, availability=availability), tmp_path / "sim")
    processes = run_experiment(small_config(rounds=6, availability=availability,
                                            engine={"name": "processes", "workers": 3, "threads": 1}), tmp_path / "p")
    a, b = models(tmp_path / "sim"), models(tmp_path / "p")
    assert max(float((a[k] - b[k]).abs().max()) for k in a) <= 1e-6
    assert sim["bytes_sent_per_node"] == processes["bytes_sent_per_node"]
    assert sim["final"]["online_nodes"] == processes["final"]["online_nodes"] == 7
    final = {r["node"]: r for r in json.loads((tmp_path / "p" / "nodes_final.json").read_text())}
    assert final[5]["bytes_sent"] == 0 and final[5]["rounds_online"] == 0


def test_models_give_the_stated_shares_and_do_not_depend_on_the_number_of_nodes():
    """Bernoulli nodes are online a share p of the rounds; session nodes mean_online /
    (mean_online + mean_offline), and a node's spells are the same whatever N is."""
    rounds = range(1, 401)
    bern = Availability(AvailabilityConfig(model="bernoulli", online_probability=0.6), 200, seed=1)
    assert np.mean([bern.online(r).mean() for r in rounds]) == pytest.approx(0.6, abs=0.01)
    sessions = lambda n: Availability(AvailabilityConfig(model="sessions", mean_online=8, mean_offline=2), n, seed=1)
    many = sessions(200)
    share = np.mean([many.online(r).mean() for r in rounds])
    assert share == pytest.approx(0.8, abs=0.03)
    few = sessions(10)
    assert all(np.array_equal(few.online(r), many.online(r)[:10]) for r in rounds)
    server = Availability(AvailabilityConfig(model="bernoulli", online_probability=0.1), 20, seed=1, always_online=(0,))
    assert all(server.online(r)[0] for r in rounds) and all(server.online(0))


def test_trace_in_seconds_maps_to_the_rounds_that_start_inside_a_period(tmp_path):
    """With unit = 'seconds', round r starts at (r - 1)·round_s: offline from 25 s to 45 s with
    10 s rounds covers rounds 4 and 5 (starting at 30 s and 40 s)."""
    cfg = AvailabilityConfig(model="trace", file=trace(tmp_path, "node,offline_from,online_from\n1,25,45\n"),
                             unit="seconds", round_s=10)
    av = Availability(cfg, 3, seed=0)
    assert [r for r in range(1, 9) if not av.online(r)[1]] == [4, 5]


@pytest.mark.parametrize("text, message", [
    ("id,from,to\n1,2,3\n", "the first line must be the header node,offline_from,online_from"),
    ("node,offline_from,online_from\n9,1,2\n", "line 2: node 9 is not one of the run's nodes 0..7"),
    ("node,offline_from,online_from\n1,5,3\n", "line 2: an offline period needs 0 <= offline_from < online_from"),
    ("node,offline_from,online_from\n1,x,3\n", "line 2: '1,x,3' is not a node id and two times"),
    ("node,offline_from,online_from\n1,2\n", "line 2: expected 3 values"),
    ("node,offline_from,online_from\n1,nan,3\n", "line 2: an offline period needs"),
])
def test_bad_trace_files_are_refused_naming_the_line(tmp_path, text, message):
    with pytest.raises(ConfigError, match="availability.file") as caught:
        Experiment.build(small_config(availability={"model": "trace", "file": trace(tmp_path, text)}))
    assert message in str(caught.value)


def test_oversized_trace_is_refused_unread(tmp_path, monkeypatch):
    from meshlearn.dynamics import availability

    path = trace(tmp_path, "node,offline_from,online_from\n" + "1,2,3\n" * 100)
    monkeypatch.setattr(availability, "MAX_TRACE_BYTES", 64)
    with pytest.raises(ConfigError, match="traces up to 0 MiB are read"):
        Experiment.build(small_config(availability={"model": "trace", "file": path}))


def test_configs_churn_cannot_run_are_refused():
    with pytest.raises(ConfigError, match="needs availability.file"):
        small_config(availability={"model": "trace"})
    with pytest.raises(ConfigError, match="keeps state about fixed neighbours"):
        small_config(availability={"model": "bernoulli"},
                     sharing={"name": "choco", "options": {"compressor": {"name": "topk"}}})
    with pytest.raises(ConfigError, match="on_return = 'pull' applies to round-based algorithms"):
        small_config(availability={"model": "bernoulli", "on_return": "pull"}, algorithm={"name": "gossip"},
                     engine={"name": "sim"})
    with pytest.raises(ConfigError, match="does not exist"):
        small_config(availability={"model": "trace", "file": "/nonexistent/trace.csv"})


@pytest.mark.parametrize("algorithm", ["gossip", "adpsgd"])
def test_asynchronous_algorithms_under_churn(tmp_path, algorithm):
    """On the asynchronous simulator an offline node starts no training and sends nothing, and
    what is sent to it is lost; a node gone for the whole run keeps its initial model. Nobody
    leaving changes nothing."""
    from meshlearn.config import load_config

    base = ["nodes=8", "rounds=6", "evaluation.every=3", f"algorithm.name={algorithm!r}"]
    run_experiment(load_config("examples/async_gossip.toml", base), tmp_path / "plain")
    run_experiment(load_config("examples/async_gossip.toml", base + ["availability.model='bernoulli'",
                                                                     "availability.online_probability=1.0"]),
                   tmp_path / "everyone")
    assert all(torch.equal(a, b) for a, b in zip(models(tmp_path / "plain").values(),
                                                 models(tmp_path / "everyone").values()))
    gone = trace(tmp_path, "node,offline_from,online_from\n3,1,\n")
    cfg = load_config("examples/async_gossip.toml", base + ["availability.model='trace'", f"availability.file={gone!r}"])
    result = run_experiment(cfg, tmp_path / "churn")
    final = {r["node"]: r for r in json.loads((tmp_path / "churn" / "nodes_final.json").read_text())}
    assert (final[3]["updates"], final[3]["bytes_sent"], final[3]["rounds_online"]) == (0, 0, 0)
    assert final[2]["updates"] > 0 and result["final"]["online_nodes"] == 7
    initial = Experiment.build(cfg).initial_params([3])[0]
    flat = torch.cat([t[3].reshape(-1) for t in models(tmp_path / "churn").values()])
    assert torch.equal(flat, initial)


def test_fedscale_trace_converts_to_offline_periods(tmp_path):
    """A FedScale availability pickle (active/inactive seconds, repeating every finish_time)
    becomes the gaps between active periods, and runs as a trace in seconds."""
    import pickle

    from meshlearn.dynamics.fedscale import main as convert_main

    trace = {7: {"active": [10, 50], "inactive": [30, 80], "finish_time": 100, "duration": 70, "model": "x"},
             3: {"active": [0], "inactive": [1000], "finish_time": 1000},
             9: {"active": [20], "inactive": [40], "finish_time": 60}}
    source = tmp_path / "client_behave_trace"
    source.write_bytes(pickle.dumps(trace, protocol=4))
    out = tmp_path / "trace.csv"
    assert convert_main([str(source), "--nodes", "2", "--horizon-s", "150", "--out", str(out)]) == 0
    # clients by id: 3 (always active) is node 0, 7 is node 1
    assert out.read_text().splitlines() == ["node,offline_from,online_from", "1,0,10", "1,30,50", "1,80,110",
                                            "1,130,"]
    cfg = AvailabilityConfig(model="trace", file=str(out), unit="seconds", round_s=10)
    av = Availability(cfg, 2, seed=0)
    assert [r for r in range(1, 16) if not av.online(r)[1]] == [1, 4, 5, 9, 10, 11, 14, 15]
    assert all(av.online(r)[0] for r in range(1, 16))


def test_fedscale_conversion_runs_no_code(tmp_path, capsys):
    """A pickle that names a global (here os.system) is refused, naming the file."""
    import os
    import pickle

    from meshlearn.dynamics.fedscale import main as convert_main

    class Evil:
        def __reduce__(self):
            return (os.system, ("echo pwned > " + str(tmp_path / "pwned"),))

    source = tmp_path / "evil"
    source.write_bytes(pickle.dumps({1: Evil()}))
    assert convert_main([str(source), "--nodes", "1", "--horizon-s", "10", "--out", str(tmp_path / "t.csv")]) == 2
    assert "not a FedScale availability trace" in capsys.readouterr().err and not (tmp_path / "pwned").exists()


def test_returning_node_can_pull_a_neighbours_model(tmp_path, monkeypatch):
    """With on_return = 'pull', node 2, back in round 6, starts it from the model its chosen
    online neighbour had after round 5; the engines agree on it, bytes included."""
    from meshlearn.engines.host import NodeHost

    availability = {"model": "trace", "file": trace(tmp_path, "node,offline_from,online_from\n2,3,6\n"),
                    "on_return": "pull"}
    after, pulled = {}, {}
    original_round, original_pull = NodeHost.play_round, NodeHost.pull_on_return

    def play_round(self, rnd):
        loss = original_round(self, rnd)
        after[rnd] = self.nodes.params.clone()
        return loss

    def pull_on_return(self, rnd):
        sources = original_pull(self, rnd)
        if sources:
            pulled[rnd] = (sources, self.nodes.params.clone())
        return sources

    monkeypatch.setattr(NodeHost, "play_round", play_round)
    monkeypatch.setattr(NodeHost, "pull_on_return", pull_on_return)
    sim = run_experiment(small_config(rounds=7, availability=availability), tmp_path / "sim")
    assert list(pulled) == [6]   # the only return
    sources, params = pulled[6]
    assert list(sources) == [2] and sources[2] != 2
    assert torch.equal(params[2], after[5][sources[2]])
    stale = run_experiment(small_config(rounds=7, availability={**availability, "on_return": "stale"}),
                           tmp_path / "stale")
    assert sim["bytes_sent_per_node"] > stale["bytes_sent_per_node"]
    monkeypatch.undo()
    processes = run_experiment(small_config(rounds=7, availability=availability,
                                            engine={"name": "processes", "workers": 3, "threads": 1}), tmp_path / "p")
    a, b = models(tmp_path / "sim"), models(tmp_path / "p")
    assert max(float((a[k] - b[k]).abs().max()) for k in a) <= 1e-6
    assert sim["bytes_sent_per_node"] == processes["bytes_sent_per_node"]
