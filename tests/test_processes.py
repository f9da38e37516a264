"""The networked engines (worker processes over ZeroMQ/TCP, Ray actors, several "machines")
against the simulator, and how they survive dead workers and hostile messages.

Every run here is tiny (digits, a 16-unit MLP, a handful of nodes and rounds): the cost is
almost all worker start-up (a Python interpreter importing torch), so the tests use as few
workers as prove the point.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import msgpack
import numpy as np
import psutil
import pytest
import tomli_w
import torch
import zmq

from conftest import alive, small_config
from meshlearn import wire
from meshlearn.cli import main
from meshlearn.config import ConfigError
from meshlearn.engines.processes import ProcessesEngine
from meshlearn.engines.ray_actor import gpus_per_actor
from meshlearn.engines.sim import SimEngine
from meshlearn.engines.transport import Transport
from meshlearn.engines.worker import Worker
from meshlearn.evaluation import round_record
from meshlearn.experiment import Experiment
from meshlearn.results import metric_of, read_jsonl, read_models
from meshlearn.runner import run_experiment

RUN_ID = "0123456789ab"   # 12 hex characters, like the run ids of the runner and of `meshlearn node`
REPO = Path(__file__).resolve().parents[1]


# helpers

def drive(engine, rounds: int):
    """Run an engine the way the runner does; returns (reports, close() summary)."""
    engine.start()
    try:
        reports = [engine.step(rnd) for rnd in range(rounds + 1)]
    finally:
        extra = engine.close()
    return reports, extra


def records(reports) -> list[dict]:
    return [round_record(r)[0] for r in reports if r.evaluation is not None]


def run_sim(cfg, run_id: str = RUN_ID):
    sim = SimEngine(Experiment.build(cfg), run_id)
    reports = [sim.step(rnd) for rnd in range(cfg.rounds + 1)]
    return sim, reports


def run_processes(cfg, workers: int, run_id: str = RUN_ID):
    engine = ProcessesEngine(Experiment.build(cfg), run_id, workers=workers, keep_models=True)
    reports, extra = drive(engine, cfg.rounds)
    return engine, reports, extra


def assert_same_run(sim, sim_reports, engine, reports, *, exact_bytes: bool = True) -> None:
    """Same final models, same curve, same traffic (bytes are exact wire sizes in both)."""
    assert engine.params is not None and not torch.isnan(engine.params).any()
    diff = (engine.params - sim.nodes.params).abs().max().item()
    assert diff <= 1e-5, diff
    start = Experiment.build(sim.experiment.config).initial_params(list(range(sim.experiment.num_nodes)))
    assert (sim.nodes.params - start).abs().max().item() > 1e-3   # the models moved: not vacuous
    ours, theirs = records(reports), records(sim_reports)
    assert [r["round"] for r in ours] == [r["round"] for r in theirs] == list(range(len(theirs)))
    for a, b in zip(ours, theirs):
        m = metric_of(b)   # accuracy, or RMSE for regression
        assert a["eval_nodes"] == b["eval_nodes"] == sim.experiment.num_nodes
        assert abs(a[f"test_{m}_mean"] - b[f"test_{m}_mean"]) <= 1e-6, (a["round"], a, b)
        assert abs(a["test_loss_mean"] - b["test_loss_mean"]) <= 1e-5
        assert abs(a[f"avg_model_{m}"] - b[f"avg_model_{m}"]) <= 1e-6
        assert a["consensus_distance"] == pytest.approx(b["consensus_distance"], rel=1e-3, abs=1e-7)
        if exact_bytes:
            assert a["bytes_sent_per_node"] == b["bytes_sent_per_node"]
            assert a["header_bytes_per_node"] == b["header_bytes_per_node"]
    for a, b in zip(reports, sim_reports):
        np.testing.assert_array_equal(a.nodes, b.nodes)
        np.testing.assert_array_equal(a.bytes_sent, b.bytes_sent)
        np.testing.assert_array_equal(a.header_bytes, b.header_bytes)
        np.testing.assert_array_equal(a.node_metrics["messages_missing"], 0)
        # nothing lost: every byte sent up to a round was received by then, and counted in it
        assert a.node_metrics["bytes_received"].sum() == a.bytes_sent.sum()
    assert sim_reports[-1].bytes_sent.min() > 0


def write_config(path: Path, cfg) -> Path:
    path.write_text(tomli_w.dumps(cfg.to_toml_dict()))
    return path


def cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "meshlearn.cli", *args]


def free_ports(count: int) -> int:
    """A base port b such that b .. b + count - 1 are free on 127.0.0.1 right now."""
    for _ in range(200):
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            base = probe.getsockname()[1]
        if base + count > 65535:
            continue
        socks = []
        try:
            for port in range(base, base + count):
                s = socket.socket()
                socks.append(s)
                s.bind(("127.0.0.1", port))
            return base
        except OSError:
            continue
        finally:
            for s in socks:
                s.close()
    raise RuntimeError("no free ports")


# the same run as the simulator

@pytest.mark.parametrize("workers", [2, 6], ids=["P=2", "P=N"])
def test_processes_match_sim(workers):
    """Worker processes give the simulator's models, curve and byte counts (6 nodes, 5
    rounds, D-PSGD, full models); P = N puts one node per process, as one-process-per-node
    frameworks do, so every message crosses processes."""
    cfg = small_config(nodes=6, rounds=5, topology__kind="regular", topology__degree=3,
                       engine__timeout_s=120)
    sim, sim_reports = run_sim(cfg)
    engine, reports, extra = run_processes(cfg, workers)
    assert extra["failures"] == [] and len(extra["workers"]) == workers
    assert all(w["messages_rejected"] == 0 and w["send_failures"] == 0 for w in extra["workers"])
    assert_same_run(sim, sim_reports, engine, reports)
    assert engine.message_bytes == sim.message_bytes


def test_processes_match_sim_on_a_knn_overlay():
    """The overlay is built from the partition, which every process draws alike: same graph,
    same models."""
    cfg = small_config(nodes=8, rounds=2, data__partition="shards", topology={"kind": "knn", "options": {"degree": 2}},
                       engine__timeout_s=120)
    sim, sim_reports = run_sim(cfg)
    engine, reports, _ = run_processes(cfg, workers=2)
    assert_same_run(sim, sim_reports, engine, reports)


@pytest.mark.parametrize("sharing", [
    {"name": "topk", "fraction": 0.3, "error_feedback": True},
    {"name": "topk", "options": {"fraction": 0.05, "support": "indices"}, "compression": "elias-fpzip"},
    {"name": "jwins", "options": {"fractions": [0.2, 0.5], "level": 2}},
], ids=["topk-error-feedback", "elias-fpzip", "jwins"])
def test_processes_match_sim_with_other_sharing(sharing):
    """Sparsified payloads (values + indices, error feedback kept per node) and a lossless
    stage (Elias-gamma indices, fpzip values): same models, and bytes equal to the simulator's
    exact compressed sizes."""
    cfg = small_config(nodes=8, rounds=3, sharing=sharing, engine__timeout_s=120)
    sim, sim_reports = run_sim(cfg)
    engine, reports, _ = run_processes(cfg, workers=2)
    assert_same_run(sim, sim_reports, engine, reports)
    if "compression" in sharing:
        for a, b in zip(reports, sim_reports):
            np.testing.assert_array_equal(a.node_metrics["bytes_uncompressed"], b.node_metrics["bytes_uncompressed"])
        assert (reports[-1].bytes_sent < reports[-1].node_metrics["bytes_uncompressed"]).all()


# a worker dies mid-run

def test_killed_worker_is_recorded_and_run_completes(tmp_path):
    """SIGKILL one of three workers after round 1: the others stop waiting for its nodes,
    the run completes without them, the summary names the failure, and every process exits
    on its own, promptly (none left behind, none hanging on messages for the dead worker)."""
    cfg = small_config(nodes=12, rounds=8, engine__timeout_s=10, network__latency_ms=250)
    config = write_config(tmp_path / "fault.toml", cfg)
    out, log_out, log_err = tmp_path / "run", tmp_path / "stdout.txt", tmp_path / "stderr.txt"
    with log_out.open("w") as stdout, log_err.open("w") as stderr:
        proc = subprocess.Popen(cli("run", str(config), "--engine", "processes", "--workers", "3", "--out", str(out),
                                    "--no-progress"), cwd=REPO, stdout=stdout, stderr=stderr)
    launcher = psutil.Process(proc.pid)
    rounds = out / "rounds.jsonl"
    count = lambda: len(read_jsonl(rounds)) if rounds.exists() else 0
    seen: set[int] = set()
    victim = last_round_at = None
    try:
        deadline = time.monotonic() + 60
        while victim is None and time.monotonic() < deadline and proc.poll() is None:
            children = launcher.children(recursive=True)
            seen.update(c.pid for c in children)
            if count() >= 2:   # rounds 0 and 1 are done
                for child in children:
                    try:
                        cmd = child.cmdline()
                    except psutil.NoSuchProcess:
                        continue
                    if "meshlearn.engines.worker" in cmd and cmd[cmd.index("--index") + 1] == "1":
                        victim = child
                break
            time.sleep(0.05)
        assert victim is not None, "worker 1 not found while the run was going"
        seen.update(c.pid for c in launcher.children(recursive=True))
        victim.send_signal(signal.SIGKILL)
        while proc.poll() is None and time.monotonic() < deadline:
            if last_round_at is None and count() == cfg.rounds + 1:
                last_round_at = time.monotonic()
            time.sleep(0.05)
        exited_at = time.monotonic()
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
    err = log_err.read_text()
    assert proc.returncode == 0, err
    assert "worker 1 failed" in err
    # the survivors exit by themselves after their last report (close() would kill them after 10 s)
    assert last_round_at is not None and exited_at - last_round_at < 8, exited_at - last_round_at
    summary = json.loads((out / "summary.json").read_text())
    assert summary["status"] == "completed"
    assert summary["rounds_completed"] == cfg.rounds
    [failure] = summary["failures"]
    assert failure["worker"] == 1 and failure["nodes"] == [4, 5, 6, 7]
    assert "killed" in failure["reason"]
    assert 1 <= failure["last_round_reported"] < cfg.rounds
    recs = read_jsonl(rounds)
    assert [r["round"] for r in recs] == list(range(cfg.rounds + 1))
    assert recs[0]["eval_nodes"] == 12 and recs[-1]["eval_nodes"] == 8
    assert recs[-1]["test_acc_mean"] is not None
    done = {w["worker"]: w for w in summary["workers"]}
    assert "cpu_time_s" in done[0] and "cpu_time_s" in done[2] and "cpu_time_s" not in done[1]
    final = json.loads((out / "nodes_final.json").read_text())
    assert sorted(n["node"] for n in final) == [0, 1, 2, 3, 8, 9, 10, 11]
    time.sleep(0.5)
    assert alive(seen) == [], "orphan worker processes"


# several machines, described by a hosts file

def test_multi_machine_run_merges_to_the_sim_result(tmp_path):
    """Two `meshlearn node` launchers (1 + 2 workers) on 127.0.0.1 with their own base ports;
    `meshlearn merge` of their run directories gives the simulator's curve and bytes."""
    cfg = small_config(nodes=8, rounds=3, engine__timeout_s=120)
    config = write_config(tmp_path / "exp.toml", cfg)
    port0 = free_ports(5)   # machine 0: worker on port0, heartbeats on port0 + 1; machine 1: from port0 + 2
    port1 = port0 + 2
    hosts = tmp_path / "hosts.toml"
    hosts.write_text(f'base_port = {port0}\n\n[[machines]]\nid = 0\naddress = "127.0.0.1"\nworkers = 1\n\n'
                     f'[[machines]]\nid = 1\naddress = "127.0.0.1"\nworkers = 2\nport = {port1}\n')
    outs = [tmp_path / f"m{k}" for k in (0, 1)]
    assert main(["keys", str(hosts), "--out", str(tmp_path / "keys")]) == 0   # machine keys: CURVE between machines
    procs = [subprocess.Popen(cli("node", str(config), "--hosts", str(hosts), "--machine-id", str(k),
                                  "--out", str(outs[k]), "--no-progress", "--keys", str(tmp_path / "keys")),
                              cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for k in (0, 1)]
    try:
        results = [p.communicate(timeout=120) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.communicate()
    for p, (_, err) in zip(procs, results):
        assert p.returncode == 0, err
    summaries = [json.loads((o / "summary.json").read_text()) for o in outs]
    run_id = summaries[0]["run_id"]
    assert len(run_id) == 12 and summaries[1]["run_id"] == run_id
    assert [len(s["workers"]) for s in summaries] == [1, 2]
    assert sorted(n["node"] for n in read_jsonl(outs[0] / "nodes.jsonl") if n["round"] == 0) == [0, 1, 2]
    merged = tmp_path / "merged"
    assert main(["merge", str(outs[0]), str(outs[1]), "-o", str(merged)]) == 0
    sim_out = tmp_path / "sim"
    run_experiment(cfg, sim_out, run_id=run_id)
    ours, theirs = read_jsonl(merged / "rounds.jsonl"), read_jsonl(sim_out / "rounds.jsonl")
    assert [r["round"] for r in ours] == [r["round"] for r in theirs] == [0, 1, 2, 3]
    for a, b in zip(ours, theirs):
        assert a["eval_nodes"] == b["eval_nodes"] == 8
        assert abs(a["test_acc_mean"] - b["test_acc_mean"]) <= 1e-6
        assert a["bytes_sent_per_node"] == b["bytes_sent_per_node"]
        assert a["header_bytes_per_node"] == b["header_bytes_per_node"]
    key = lambda row: (row["round"], row["node"])
    rows, sim_rows = (sorted(read_jsonl(d / "nodes.jsonl"), key=key) for d in (merged, sim_out))
    assert [key(r) for r in rows] == [key(r) for r in sim_rows]
    for a, b in zip(rows, sim_rows):
        assert a["bytes_sent"] == b["bytes_sent"] and abs(a["test_acc"] - b["test_acc"]) <= 1e-6
    summary = json.loads((merged / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["rounds_completed"] == 3
    assert all(s["secure"] for s in summaries)
    assert len(summary["workers"]) == 3 and summary["failures"] == []
    assert summary["bytes_sent_per_node"] == json.loads((sim_out / "summary.json").read_text())["bytes_sent_per_node"]


def test_a_lost_machine_is_noticed_within_seconds(tmp_path):
    """Machine 1's launcher and workers are killed mid-run: machine 0 hears its heartbeats stop,
    takes its workers as gone, and finishes the remaining rounds in seconds, although each
    round would otherwise wait engine.timeout_s (60 s) for their messages."""
    cfg = small_config(nodes=8, rounds=20, evaluation__every=1, engine__timeout_s=60, network__latency_ms=50)
    config = write_config(tmp_path / "exp.toml", cfg)
    port0 = free_ports(5)
    hosts = tmp_path / "hosts.toml"
    hosts.write_text(f'base_port = {port0}\n\n[[machines]]\nid = 0\naddress = "127.0.0.1"\nworkers = 1\n\n'
                     f'[[machines]]\nid = 1\naddress = "127.0.0.1"\nworkers = 2\nport = {port0 + 2}\n')
    assert main(["keys", str(hosts), "--out", str(tmp_path / "keys")]) == 0
    outs = [tmp_path / f"m{k}" for k in (0, 1)]
    procs = [subprocess.Popen(cli("node", str(config), "--hosts", str(hosts), "--machine-id", str(k),
                                  "--out", str(outs[k]), "--no-progress", "--keys", str(tmp_path / "keys")),
                              cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                              start_new_session=True)
             for k in (0, 1)]
    try:
        deadline = time.monotonic() + 120
        rounds = outs[0] / "rounds.jsonl"
        while time.monotonic() < deadline and not (rounds.exists() and len(read_jsonl(rounds)) > 5):
            assert procs[0].poll() is None, procs[0].stderr.read()
            time.sleep(0.05)
        os.killpg(procs[1].pid, signal.SIGKILL)   # the whole machine: launcher and workers
        killed = time.monotonic()
        _, err = procs[0].communicate(timeout=60)
        after = time.monotonic() - killed
    finally:
        for p in procs:
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGKILL)
            p.communicate()
    assert procs[0].returncode == 0, err
    summary = json.loads((outs[0] / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["machines_lost"] == [1]
    assert sorted(f["worker"] for f in summary["remote_failures"]) == [1, 2]
    assert after < 25, f"the remaining rounds took {after:.0f} s"
    assert "machine 1 fell silent" in err


# hostile and malformed messages

@contextlib.contextmanager
def _lone_worker(cfg):
    """One in-process worker hosting every node of ``cfg`` on a real transport, and a PUSH
    socket to its address for a test to play a misbehaving peer."""
    exp = Experiment.build(cfg)
    transport = Transport("127.0.0.1", 0, max_bytes=cfg.engine.max_message_bytes)
    transport.connect({0: transport.address})
    worker = Worker(exp, RUN_ID, 0, list(range(cfg.nodes)), np.zeros(cfg.nodes, dtype=np.int64), transport)
    context = zmq.Context()
    peer = context.socket(zmq.PUSH)
    peer.setsockopt(zmq.LINGER, 0)
    peer.connect(transport.address)
    try:
        yield worker, peer
    finally:
        peer.close()
        context.term()
        transport.close()


@pytest.fixture
def lone_worker():
    with _lone_worker(small_config(nodes=6, rounds=2, engine__timeout_s=30,
                                   engine__max_message_bytes=1 << 20)) as pair:
        yield pair


def _frames(src, dst, rnd=1, run=RUN_ID, tensors=None, kind="model"):
    tensors = {"params": torch.zeros(4)} if tensors is None else tensors
    meta = {} if dst is None else {"dst": dst}
    return [bytes(f) for f in wire.encode(wire.Message(run, src, rnd, kind, tensors, meta))]


def _edit_header(frames, **changes):
    header = msgpack.unpackb(frames[0], raw=False)
    header.update(changes)
    return [msgpack.packb(header, use_bin_type=True), *frames[1:]]


def test_worker_rejects_bad_messages_and_still_matches_sim(lone_worker, caplog):
    """Garbage, foreign runs, lying sizes, wrong receivers or senders, and payloads that are
    not this run's: each is logged and counted, none crashes the worker or reaches a model."""
    worker, peer = lone_worker
    exp = worker.experiment
    n, size = exp.num_nodes, exp.layout.size
    dst = 0
    src = int(worker.neighbours(dst)[0])
    stranger = next(j for j in range(1, n) if j not in worker.neighbours(dst).tolist())
    params = {"params": torch.zeros(size)}
    good = _frames(src, dst, tensors=params)
    bad = {  # why -> (frames, what the log must say)
        "garbage": ([b"\xc1 not msgpack at all"], "not valid msgpack"),
        "empty header": ([b""], "not valid msgpack"),
        "wrong protocol version": (_edit_header(good, v=wire.PROTOCOL_VERSION + 1), "protocol version"),
        "wrong run id": (_frames(src, dst, run="ffffffffffff", tensors=params), "run id mismatch"),
        "truncated tensor frame": ([good[0], good[1][: len(good[1]) // 2]], "truncated"),
        "missing tensor frame": (good[:1], "missing frame"),
        "declares too many bytes": (_edit_header([good[0], b"\0" * 16], shapes=[[1 << 20]]), "too large"),
        "receiver not hosted": (_frames(src, n + 5, tensors=params), "not a node of this worker"),
        "no receiver": (_frames(src, None, tensors=params), "not a node of this worker"),
        "receiver not an int": (_frames(src, "0", tensors=params), "not a node of this worker"),
        "sender not a neighbour": (_frames(stranger, dst, tensors=params), "does not send to node"),
        "unknown kind": (_frames(src, dst, tensors=params, kind="hello"), "unexpected message kind"),
        # well-formed messages from a real neighbour whose tensors are not what this run sends
        "wrong shape": (_frames(src, dst, tensors={"params": torch.zeros(4)}), "not this run's payload"),
        "broadcastable shape": (_frames(src, dst, tensors={"params": torch.zeros(1)}), "not this run's payload"),
        "wrong dtype": (_frames(src, dst, tensors={"params": torch.zeros(size, dtype=torch.float64)}),
                        "not this run's payload"),
        "wrong name": (_frames(src, dst, tensors={"model": torch.zeros(size)}), "not this run's payload"),
    }
    for frames, _ in bad.values():
        peer.send_multipart(frames)
    time.sleep(0.3)   # all queued before round 1: fair queueing reads them among the round's own messages
    with caplog.at_level(logging.WARNING, logger="meshlearn.worker"):
        worker.run(exp.config.rounds)
    assert worker.rejected == len(bad)
    rejections = [r.getMessage() for r in caplog.records if "rejected a message" in r.getMessage()]
    assert len(rejections) == len(bad)
    for why, (_, reason) in bad.items():
        assert any(reason in line for line in rejections), (why, rejections)
    np.testing.assert_array_equal(worker.counters["messages_missing"], 0)
    sim, _ = run_sim(exp.config)
    assert (worker.nodes.params - sim.nodes.params).abs().max().item() <= 1e-5


# the command line

def test_cli_processes_run_reports_worker_metrics(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["run", "examples/quickstart.toml", "--engine", "processes", "--workers", "2",
                 "--set", "rounds=2", "--set", "nodes=8", "--set", "evaluation.every=1",
                 "--set", "evaluation.test_samples=100", "--set", "engine.timeout_s=120",
                 "--out", str(out), "--no-progress"]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["engine"] == "processes"
    assert summary["failures"] == [] and summary["placement"] == "processes"
    assert len(summary["workers"]) == 2
    for w in summary["workers"]:
        for key in ("cpu_time_s", "peak_rss_bytes", "train_time_s", "wait_time_s", "serialize_time_s"):
            assert w[key] > 0, (key, w)
        assert w["nodes"] == 4
    assert summary["peak_rss_bytes_total"] > sum(w["peak_rss_bytes"] for w in summary["workers"])
    rows = read_jsonl(out / "nodes.jsonl")
    assert len(rows) == 3 * 8
    assert all(r["messages_missing"] == 0 for r in rows)
    assert all(r["bytes_received"] > 0 for r in rows if r["round"] > 0)
    assert [r["round"] for r in read_jsonl(out / "rounds.jsonl")] == [0, 1, 2]
    assert "results:" in capsys.readouterr().out


# Ray placement (last: the module's Ray instance is shut down after it)

def test_ray_matches_sim(ray_cluster):
    cfg = small_config(nodes=8, rounds=3, engine__name="ray", engine__timeout_s=120)
    sim, sim_reports = run_sim(cfg)
    engine = ProcessesEngine(Experiment.build(cfg), RUN_ID, placement="ray", workers=2, keep_models=True)
    reports, extra = drive(engine, cfg.rounds)
    assert extra["placement"] == "ray" and extra["failures"] == []
    assert_same_run(sim, sim_reports, engine, reports)


def test_ray_actors_on_cuda_ask_ray_for_a_gpu_each(ray_cluster):
    """The module's Ray instance declares 2 GPUs: each of the 2 actors is given one, and, this
    torch having no CUDA, the actor says so, naming the GPU Ray gave it."""
    if torch.cuda.is_available():
        pytest.skip("this machine's torch has CUDA")
    cfg = small_config(nodes=8, rounds=1, engine__name="ray", engine__device="cuda", engine__timeout_s=120)
    experiment = Experiment.build(cfg)
    assert experiment.device.type == "cpu"   # the launcher has no GPU of its own: it evaluates on the CPU
    engine = ProcessesEngine(experiment, RUN_ID, placement="ray", workers=2)
    with pytest.raises(ConfigError, match=r"worker [01] on .* \(GPUs [01]\) has no CUDA device") as error:
        engine.start()
    engine.close()
    assert "engine.device" in str(error.value)


@pytest.mark.parametrize("gpus, workers, share", [(2, 2, 1.0), (4, 2, 1.0), (2, 3, 0.5), (2, 5, 1 / 3), (1, 4, 0.25)])
def test_ray_actors_share_the_clusters_gpus_so_that_all_fit(gpus, workers, share):
    cluster = SimpleNamespace(cluster_resources=lambda: {"CPU": 8.0, "GPU": float(gpus)})
    assert gpus_per_actor(cluster, workers) == pytest.approx(share)
    assert share * math.ceil(workers / gpus) <= 1.0 and math.floor(1 / share) * gpus >= workers


def test_ray_without_gpus_refuses_cuda_naming_the_key():
    with pytest.raises(ConfigError, match="engine.device = 'cuda', but the Ray cluster has no GPU"):
        gpus_per_actor(SimpleNamespace(cluster_resources=lambda: {"CPU": 8.0}), 2)


def test_ray_applies_churn_as_sim(ray_cluster, tmp_path):
    """The same trace on Ray actors: the simulator's models and bytes."""
    trace = tmp_path / "trace.csv"
    trace.write_text("node,offline_from,online_from\n1,2,4\n6,1,\n")
    availability = {"model": "trace", "file": str(trace)}
    sim = run_experiment(small_config(nodes=8, rounds=4, availability=availability), tmp_path / "sim")
    ray = run_experiment(small_config(nodes=8, rounds=4, availability=availability,
                                      engine={"name": "ray", "workers": 2, "timeout_s": 120}), tmp_path / "ray")
    a, b = (read_models(out / "models.safetensors") for out in (tmp_path / "sim", tmp_path / "ray"))
    assert max(float((a[k] - b[k]).abs().max()) for k in a) <= 1e-6
    assert ray["bytes_sent_per_node"] == sim["bytes_sent_per_node"] and ray["final"]["online_nodes"] == 7


def test_undecodable_payload_from_a_neighbour_is_dropped_not_fatal(caplog):
    """A well-formed message whose sparse payload the scheme cannot decode (indices out of
    range) is rejected at aggregation: the sender counts as missing for that round, the
    receiver's weights are renormalized, and the worker goes on."""
    cfg = small_config(nodes=6, rounds=1, engine__timeout_s=30,
                       sharing={"name": "topk", "fraction": 0.01})
    with _lone_worker(cfg) as (worker, peer):
        dst = 0
        src = int(worker.neighbours(dst)[0])
        k = max(1, int(0.01 * worker.experiment.layout.size))
        hostile = {"values": torch.zeros(k), "indices": torch.full((k,), 30000, dtype=torch.int16)}
        peer.send_multipart(_frames(src, dst, tensors=hostile))   # arrives before the real one
        time.sleep(0.3)
        with caplog.at_level(logging.WARNING, logger="meshlearn.worker"):
            worker.run(cfg.rounds)
    assert worker.rejected == 1
    assert any(f"rejected the payload of node {src}" in r.getMessage() for r in caplog.records)
    assert torch.isfinite(worker.nodes.params).all()
    sim, _ = run_sim(cfg)
    # exactly the receivers of ``src`` (which all use its first, hostile message) lost it
    differs = (worker.nodes.params - sim.nodes.params).abs().amax(1) > 1e-5
    assert sorted(np.flatnonzero(differs.numpy()).tolist()) == sorted(worker.neighbours(src).tolist())
