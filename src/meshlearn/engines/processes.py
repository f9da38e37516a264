"""The networked engines' launcher: worker processes (or Ray actors) over ZeroMQ/TCP.

The launcher starts the workers, hands each its configuration and its share of the nodes
(contiguous blocks), publishes the address book, and turns the workers' per-round reports
into the same ``RoundReport`` the simulator produces. It never touches models or messages
between nodes; those go worker to worker. When a worker dies, the launcher records the
failure and tells the others, so they stop waiting for its nodes.

Placements: ``processes`` (subprocesses on this machine), ``ray`` (one actor per worker on
a Ray cluster), and a share of a multi-machine run described by a hosts file.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import zmq

from meshlearn import plugins
from meshlearn.config import ConfigError
from meshlearn.engines.heartbeats import Heartbeats
from meshlearn.engines.host import AVAILABILITY_METRICS
from meshlearn.engines.hosts import Hosts, split_nodes
from meshlearn.engines.ray_actor import RayHandle, gpus_per_actor, import_ray
from meshlearn.engines.security import CREDENTIALS_ENV, AllowList, Credentials, Keys, read_machine_keys, serve_securely
from meshlearn.engines.control import NODE_METRICS, pack, unpack
from meshlearn.evaluation import Evaluation, Evaluator, RoundReport
from meshlearn.metrics import peak_rss_bytes
from meshlearn.sharing.secure import SECAGG_METRICS

__all__ = ["ProcessesEngine"]

STARTUP_TIMEOUT_S = 300.0


class ProcessesEngine:
    """Runs an ``Experiment`` on worker processes that exchange real messages."""

    def __init__(self, experiment, run_id: str, placement: str = "processes", workers: int | None = None,
                 hosts: Hosts | None = None, machine_id: int | None = None, keep_models: bool = False,
                 ray_address: str | None = None, keys: str | os.PathLike | None = None):
        cfg = experiment.config
        self.experiment, self.run_id, self.placement = experiment, run_id, placement
        self.name = placement
        self.asynchronous = cfg.algorithm.implementation().asynchronous   # workers play events on the real clock
        n = experiment.num_nodes
        if hosts is not None and experiment.config.privacy.secagg is not None:
            raise ConfigError("privacy.secagg needs every node's public key in one directory, which a "
                              "hosts-file run (one launcher per machine) does not build yet; run it on one "
                              "machine (--engine processes or ray)")
        if hosts is not None:
            if machine_id is None:
                raise ConfigError("a hosts file needs the machine id of this launcher (--machine-id)")
            total = hosts.total_workers
            self.local = hosts.workers_of(machine_id)
            self.static_book = hosts.book()
            machine = hosts.machine(machine_id)
            self.bind = {k: (machine.address, (machine.port or hosts.base_port) + i)
                         for i, k in enumerate(self.local)}
        else:
            total = min(workers or cfg.engine.workers, n)
            self.local = list(range(total))
            self.static_book = None
            self.bind = {k: (cfg.engine.host, 0) for k in self.local}
        if total > n:
            raise ConfigError(f"the hosts file has {total} workers for nodes = {n}: use at most one worker "
                              "per node")
        self.assignment = split_nodes(n, total)
        self.owner = np.empty(n, dtype=np.int64)
        for k, block in enumerate(self.assignment):
            self.owner[block] = k
        self.whole_run = len(self.local) == total   # this launcher sees every node
        # CURVE on every socket. The control channel: a key pair per local worker and one for the
        # launcher, made for this run. Data sockets: on one machine the workers' own pairs; on
        # several, every worker of a machine uses the machine's pair from `meshlearn keys`.
        self.secure = cfg.engine.secure
        self.keys = {k: Keys.new() for k in self.local} if self.secure else {}
        self.launcher_keys = Keys.new() if self.secure else None
        self.data_keys, self.peers, self.peer_keys = self.keys, list(range(total)), \
            {k: pair.public for k, pair in self.keys.items()}
        self.machine_keys: Keys | None = None   # this machine's pair (secure multi-machine runs)
        if self.secure and hosts is not None:
            if keys is None:
                raise ConfigError("a multi-machine run authenticates its machines: create their keys with "
                                  "'meshlearn keys HOSTS --out DIR', copy DIR/public.json to every machine and "
                                  "DIR/machine-<id>.secret to that machine only, and pass --keys DIR (or set "
                                  "engine.secure = false on a network you trust)")
            ids = [m.id for m in hosts.machines]
            try:
                own, self.peer_keys = read_machine_keys(Path(keys), ids, machine_id)
            except ValueError as exc:
                raise ConfigError(str(exc)) from None
            self.data_keys = {k: own for k in self.local}
            self.peers = [m.id for m in hosts.machines for _ in range(m.workers)]
            self.machine_keys = own
        self.hosts, self.machine_id = hosts, machine_id
        self.heartbeats: Heartbeats | None = None     # a share of a multi-machine run: the other machines' news
        self.remote_failures: dict[int, dict] = {}    # workers of other machines known to have failed
        self.allow: AllowList | None = None
        self.forged = 0   # control messages whose key is not the worker they name
        self.threads = cfg.engine.threads or max(1, (os.cpu_count() or 1) // len(self.local))
        self.evaluator = Evaluator(experiment)
        self.context = zmq.Context()
        self.control: zmq.Socket | None = None
        self.handles: dict[int, Any] = {}
        self.identity: dict[int, bytes] = {}
        self.reports: dict[int, dict[int, list]] = {}
        self.done: dict[int, dict] = {}
        self.handshakes: dict[str, list] = {}      # start-up messages not yet handled, by kind
        self.failures: dict[int, dict] = {}
        self.config_errors: dict[int, str] = {}    # workers on which the config did not load
        self.message_bytes = 0
        self.eval_time = 0.0
        self._last_round = -1
        self.keep_models = keep_models
        self.ray_address = ray_address
        self.params: torch.Tensor | None = None   # final models (N, P), with keep_models
        self.resume: dict[int, bytes] = {}         # each worker's state to continue from (restore)
        self.first_round = 0
        self.states: dict[int, bytes] = {}         # the workers' states sent with the last merged round
        self.requested: int | None = None          # the round after which the workers were asked for theirs
        self._extra_metrics = (("bytes_uncompressed",) if cfg.sharing.compression != "none" else ()) \
            + (SECAGG_METRICS if cfg.privacy.secagg is not None else ()) \
            + (AVAILABILITY_METRICS if cfg.availability.enabled else ()) \
            + (("view_bytes",) if cfg.topology.kind == "peer_sampling" else ()) \
            + (("updates",) if self.asynchronous else ())
        self._float_metrics = ("epsilon",) if cfg.privacy.dp is not None else ()   # not int counters

    # Engine
    def start(self) -> None:
        control_host = self._control_host()
        self.control = self.context.socket(zmq.ROUTER)
        self.control.setsockopt(zmq.LINGER, 0)
        if self.secure:
            self.allow = AllowList(self.context)
            self.allow.allow({k: keys.public for k, keys in self.keys.items()})
            serve_securely(self.control, self.launcher_keys)
        port = self.control.bind_to_random_port(f"tcp://{control_host}")
        self.control_address = address = f"tcp://{control_host}:{port}"
        for k in self.local:
            self.handles[k] = self._spawn(address, k)
        self._handshake("hello", lambda k, msg: self._send(k, self._setup(k)))
        ready: dict[int, str] = {}
        keys: dict[int, bytes] = {}   # the public-key directory of the nodes (secure aggregation)

        def on_ready(k: int, msg: dict) -> None:
            ready[k] = msg["address"]
            keys.update(msg.get("keys") or {})

        if self.hosts is not None and len(self.hosts.machines) > 1:
            self.heartbeats = Heartbeats(self.hosts, self.machine_id, self.machine_keys, self.peer_keys)
        self._handshake("ready", on_ready)
        self.book = book = self.static_book or ready   # each worker's data address
        start = {"kind": "start", "book": {str(k): v for k, v in book.items()}, "owner": self.owner.tolist(),
                 "down": sorted(self.failures), "keys": keys}
        for k in self._alive():
            self._send(k, start)

    def step(self, rnd: int) -> RoundReport:
        deadline = self._stall_limit()
        while True:
            have = self.reports.get(rnd, {})
            waiting = [k for k in self._alive() if k not in have]
            if not waiting:
                break
            if time.monotonic() > deadline:
                raise RuntimeError(f"workers {waiting} stalled: no report for round {rnd} and no other message "
                                   "for 3 × engine.timeout_s + 120 s")
            if self._pump(0.2):
                deadline = self._stall_limit()
        self._last_round = rnd
        reports = self.reports.pop(rnd, {})
        self.states = {k: msg.pop("checkpoint") for k, (msg, *_) in reports.items() if "checkpoint" in msg}
        if self.keep_models and rnd == self.experiment.config.rounds:
            self._keep_models(reports)
        return self._merge(rnd, reports)

    @property
    def checkpointable(self) -> bool:
        """Whether a checkpoint can be taken: not once a worker has failed, nor by a launcher
        that sees only its share of a multi-machine run."""
        return self.static_book is None and not self.failures and not self.asynchronous

    def checkpoint(self, rnd: int, due: bool) -> dict[int, bytes] | None:
        """Every worker's encoded state after round ``rnd`` if they sent it with that round
        (at ``checkpoint.every`` rounds, or the round a ``due`` checkpoint was asked for, a few
        rounds ahead since workers run ahead of the launcher). None while some are missing or
        when not ``checkpointable``."""
        if not self.checkpointable:
            return None
        if len(self.states) == len(self.local):
            return dict(self.states)
        if self.requested is not None and rnd >= self.requested:
            self.requested = None   # a worker read the request too late: ask again
        if due and self.requested is None:
            ahead = max([rnd, *self.reports]) + 3
            if ahead < self.experiment.config.rounds:
                self.requested = ahead
                for k in self._alive():
                    self._send(k, {"kind": "checkpoint", "round": ahead})
        return None

    def restore(self, hosts: dict[int, bytes], rnd: int) -> None:
        """Start the workers from the states ``checkpoint`` returned after round ``rnd``."""
        if sorted(hosts) != self.local:
            raise ConfigError(f"the checkpoint holds the state of {len(hosts)} workers, this run starts "
                              f"{len(self.local)}: resume with workers={len(hosts)}")
        self.resume, self.first_round, self._last_round = hosts, rnd + 1, rnd

    def _keep_models(self, reports: dict[int, list]) -> None:
        """Final models from the last frame of each worker's last report (NaN rows: failed)."""
        size = self.experiment.layout.size
        self.params = torch.full((self.experiment.num_nodes, size), float("nan"))
        for k, (msg, *frames) in reports.items():
            rows = np.frombuffer(frames[-1], dtype=np.float32).reshape(len(msg["nodes"]), size)
            self.params[msg["nodes"]] = torch.from_numpy(rows.copy())

    def close(self) -> dict[str, Any]:
        finished = self._last_round >= self.experiment.config.rounds
        if finished:  # let the workers send their final figures
            deadline = time.monotonic() + 30
            while any(k not in self.done for k in self._alive()) and time.monotonic() < deadline:
                self._pump(0.2)
        for k in self._alive():
            if k not in self.done:
                self._send(k, {"kind": "stop"})
        for k, handle in self.handles.items():
            handle.finish(timeout=10 if finished else 3)
        if self.control is not None:
            self.control.close()
        if self.allow is not None:
            self.allow.stop()
        if self.heartbeats is not None:
            self.heartbeats.close(sorted(self.failures))
        self.context.term()
        workers = [{"worker": k, "nodes": len(self.assignment[k]), **self.done.get(k, {})} for k in self.local]
        for row in workers:
            row.pop("kind", None)
        launcher_rss = peak_rss_bytes()
        return {
            "placement": self.placement, "workers": workers, "failures": list(self.failures.values()),
            **({"remote_failures": list(self.remote_failures.values()),
                "machines_lost": sorted(self.heartbeats.lost)} if self.heartbeats is not None else {}),
            "secure": self.secure, "control_messages_rejected": self.forged,
            "connections_refused": (self.allow.denied if self.allow is not None else 0)
            + sum(w.get("connections_refused", 0) for w in workers),
            "threads_per_worker": self.threads,
            "peak_rss_bytes": launcher_rss,
            "peak_rss_bytes_total": launcher_rss + sum(w.get("peak_rss_bytes", 0) for w in workers),
            "cpu_time_s_total": sum(w.get("cpu_time_s", 0.0) for w in workers),
        }

    # launching
    def _control_host(self) -> str:
        if self.placement == "ray":
            ray = import_ray()
            if not ray.is_initialized():
                address = self.ray_address or os.environ.get("RAY_ADDRESS")
                ray.init(address=address, log_to_driver=True) if address else \
                    ray.init(num_cpus=max(len(self.local), os.cpu_count() or 1), include_dashboard=False)
            return ray.util.get_node_ip_address()
        if self.static_book is not None:
            return "127.0.0.1"   # the launcher only talks to the workers of its own machine
        return self.experiment.config.engine.host

    def _spawn(self, address: str, k: int):
        credentials = Credentials(self.keys[k], self.launcher_keys.public, self.data_keys[k]) if self.secure else None
        if self.placement == "ray":
            cuda = self.experiment.config.engine.device == "cuda"
            return RayHandle(address, k, credentials, gpus_per_actor(import_ray(), len(self.local)) if cuda else 0.0)
        return _ProcessHandle(address, k, credentials)

    def _setup(self, k: int) -> dict[str, Any]:
        host, port = self.bind[k]
        return {"kind": "setup", "config": self.experiment.config.model_dump(mode="json"), "run_id": self.run_id,
                "nodes": self.assignment[k], "threads": self.threads, "keep_models": self.keep_models,
                "host": None if self.placement == "ray" else host, "port": port,
                "resume": self.resume.get(k), "first_round": self.first_round,
                "import_paths": plugins.import_folders(),   # where the launcher found the plug-ins
                "peers": self.peers, "peer_kind": "worker" if self.static_book is None else "machine",
                "peer_keys": {str(p): key.decode() for p, key in self.peer_keys.items()} if self.secure else {}}

    def _handshake(self, kind: str, on_message) -> None:
        """Wait until every live worker sent ``kind``, calling ``on_message`` for each."""
        seen: set[int] = set()
        deadline = time.monotonic() + STARTUP_TIMEOUT_S
        while any(k not in seen for k in self._alive()):
            if time.monotonic() > deadline:
                missing = [k for k in self._alive() if k not in seen]
                raise RuntimeError(f"workers {missing} did not start within {STARTUP_TIMEOUT_S:.0f}s")
            self._receive(0.2)
            if not self._alive():
                self._receive(1.0)   # the workers' last words may still be on their way
            if self.config_errors:   # a run without some workers' plug-ins is not the run asked for
                k, message = min(self.config_errors.items())
                raise ConfigError(f"worker {k} could not load the config: {message}\n(every worker must import "
                                  "the config's plug-ins: keep their files at the same path, or in a folder of "
                                  "import_paths, on every machine)")
            for k, msg in self.handshakes.pop(kind, []):
                seen.add(k)
                on_message(k, msg)
            if not self._alive():
                reasons = "; ".join(f"worker {k}: {f['reason']}" for k, f in self.failures.items())
                raise RuntimeError(f"every worker failed while starting ({reasons})")

    def _send(self, k: int, msg: dict) -> None:
        if k in self.identity:
            self.control.send_multipart([self.identity[k], pack(msg)])

    def _alive(self) -> list[int]:
        return [k for k in self.local if k not in self.failures]

    def _stall_limit(self) -> float:
        return time.monotonic() + 3 * self.experiment.config.engine.timeout_s + 120

    def _pump(self, timeout_s: float) -> bool:
        """Handle control messages for up to ``timeout_s``; True if any arrived."""
        return self._receive(timeout_s) > 0

    def _receive(self, timeout_s: float) -> int:
        """File reports, failures and handshake messages (a fast worker's "ready" may come
        before a slow one's "hello"); check liveness; return how many messages came."""
        count = 0
        if self.control.poll(int(timeout_s * 1000)):
            while self.control.poll(0):
                parts = self.control.recv_multipart(copy=False)
                identity, frames = parts[0].bytes, [part.bytes for part in parts[1:]]
                try:
                    msg = unpack(frames[0])
                    k = int(msg["worker"])
                except (ValueError, KeyError, TypeError, IndexError):
                    continue
                if k not in self.handles:
                    continue
                if self.allow is not None and self.allow.peer_of(parts[1]) != k:
                    self.forged += 1   # a worker's key speaking for another worker
                    if self.forged <= 10 or self.forged % 100 == 0:
                        print(f"meshlearn: refused a control message naming worker {k} from another key "
                              f"({self.forged} so far)", file=sys.stderr)
                    continue
                self.identity.setdefault(k, identity)
                kind = msg["kind"]
                if kind == "round":
                    self.reports.setdefault(int(msg["rnd"]), {})[k] = [msg, *frames[1:]]
                elif kind == "done":
                    self.done[k] = msg
                    self.message_bytes = msg.get("message_bytes", self.message_bytes)
                elif kind == "error" and msg.get("config"):
                    self.config_errors[k] = msg["message"]
                    self._fail(k, "could not load the config")
                elif kind == "error":
                    self._fail(k, msg["message"].strip().splitlines()[-1], detail=msg["message"])
                elif kind in ("hello", "ready"):
                    self.handshakes.setdefault(kind, []).append((k, msg))
                count += 1
        for k in self._alive():
            code = self.handles[k].exit_code()
            if code is not None and k not in self.done:
                self._fail(k, f"exited with code {code}" + (" (killed)" if code < 0 else ""))
        if self.heartbeats is not None:
            self._hear_other_machines()
        return count

    def _hear_other_machines(self) -> None:
        """Tell the other machines this one is alive, and the local workers which workers of
        other machines have failed or were lost with their machine."""
        self.heartbeats.beat(sorted(self.failures))
        failed, lost = self.heartbeats.listen()
        new = sorted(set(failed) - set(self.remote_failures))
        for m in lost:
            print(f"meshlearn: machine {m} fell silent: its workers are taken as gone", file=sys.stderr)
        for k in new:
            self.remote_failures[k] = {"worker": k, "nodes": self.assignment[k], "last_round_reported": self._last_round,
                                       "reason": "its machine fell silent" if any(k in self.hosts.workers_of(m)
                                                                                  for m in lost)
                                       else "failed on its machine"}
        if new:
            for k in self._alive():
                self._send(k, {"kind": "down", "workers": new})

    def _fail(self, k: int, reason: str, detail: str | None = None) -> None:
        if k in self.failures:
            return
        last = max((r for r, reports in self.reports.items() if k in reports), default=self._last_round)
        self.failures[k] = {"worker": k, "nodes": self.assignment[k], "reason": reason,
                            "last_round_reported": last}
        if detail:
            print(f"meshlearn: worker {k} failed:\n{detail}", file=sys.stderr)
        self.handles[k].kill()
        for other in self._alive():
            self._send(other, {"kind": "down", "workers": [k]})

    # reports
    def _merge(self, rnd: int, reports: dict[int, list]) -> RoundReport:
        """One RoundReport from the workers' reports of a round."""
        msgs = [reports[k][0] for k in sorted(reports)]
        cat = lambda key, dtype: np.concatenate([np.asarray(m[key], dtype=dtype) for m in msgs]) \
            if msgs else np.empty(0, dtype=dtype)
        nodes = cat("nodes", np.int64)
        report = RoundReport(
            rnd, nodes, cat("train_loss", np.float64), cat("bytes_sent", np.int64), cat("header_bytes", np.int64),
            wall_time_s=max((m["wall_time_s"] for m in msgs), default=0.0),
            sim_time_s=rnd * self.experiment.config.compute.mean_s if self.asynchronous else None,
            node_metrics={**{name: cat(name, np.int64) for name in NODE_METRICS + self._extra_metrics},
                          **{name: cat(name, np.float64) for name in self._float_metrics}})
        if msgs and "eval" in msgs[0]:
            evs = [m["eval"] for m in msgs]
            ev = Evaluation(np.concatenate([np.asarray(e["nodes"], dtype=np.int64) for e in evs]),
                            np.concatenate([np.asarray(e["acc"], dtype=np.float32) for e in evs]),
                            np.concatenate([np.asarray(e["loss"], dtype=np.float32) for e in evs]),
                            evs[0]["samples"], metric=self.experiment.task.metric)
            order = np.argsort(ev.nodes)
            ev.nodes, ev.acc, ev.loss = ev.nodes[order], ev.acc[order], ev.loss[order]
            if "val_acc" in evs[0]:
                ev.val_acc, ev.val_loss = (np.concatenate([np.asarray(e[key], dtype=np.float32) for e in evs])[order]
                                           for key in ("val_acc", "val_loss"))
            if "local_acc" in evs[0]:   # each node on its own local test set, in node order
                scored = "local_nodes" in evs[0]   # a server's model on its clients' sets
                who = np.concatenate([np.asarray(e["local_nodes" if scored else "nodes"], dtype=np.int64) for e in evs])
                local_order = np.argsort(who)
                local = lambda key: np.concatenate([np.asarray(e[key], dtype=np.float32) for e in evs])[local_order]
                ev.local_acc, ev.local_loss = local("local_acc"), local("local_loss")
                if scored:
                    ev.local_nodes = who[local_order]
            ev.topology = self.experiment.topology.graph(rnd).describe()
            t0 = time.perf_counter()
            if self.whole_run and len(nodes):
                total = sum(np.frombuffer(reports[k][1], dtype=np.float64) for k in reports)
                honest = max(1, int(self.experiment.honest(nodes).sum()))   # workers sum their honest nodes
                mean = total / honest
                sum_sq = sum(e["sum_sq"] for e in evs)
                ev.consensus_distance = max(0.0, sum_sq / honest - float(mean @ mean))
                self.evaluator.average(ev, torch.from_numpy(mean))
            self.eval_time += time.perf_counter() - t0
            report.evaluation = ev
            report.eval_time_s = self.eval_time + max(e["eval_time_s"] for e in evs)
        return report


class _ProcessHandle:
    """A worker as a subprocess of this machine."""

    def __init__(self, address: str, k: int, credentials: Credentials | None = None):
        env = dict(os.environ)   # keys travel in the environment, not on the command line
        if credentials is not None:
            env[CREDENTIALS_ENV] = credentials.to_text()
        self.proc = subprocess.Popen([sys.executable, "-m", "meshlearn.engines.worker",
                                      "--control", address, "--index", str(k),
                                      "--parent", str(os.getpid())], env=env)

    def exit_code(self) -> int | None:
        return self.proc.poll()

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()

    def finish(self, timeout: float) -> None:
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
