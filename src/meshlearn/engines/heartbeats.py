"""Heartbeats between the launchers of a multi-machine run.

A launcher learns of its own workers' deaths from their processes; of another machine's,
only through these heartbeats. Every launcher publishes, every ``INTERVAL_S``, that it is
alive and which of its workers have failed, on a PUB socket at its machine's heartbeat
address (``Hosts.heartbeat_address``); it subscribes to every other machine's. A machine
heard from and then silent for ``SILENCE_S`` is lost with all its workers, so the nodes
waiting for their messages stop waiting within seconds instead of ``engine.timeout_s`` every
round. A launcher that ends its run says so last, so its silence after that is no loss.

With security on, the sockets use the machines' CURVE keys (``meshlearn keys``): a
subscriber only accepts the publisher whose public key it expects, and a publisher admits
only the run's machines. The handler lives in a context of its own, apart from the one that
admits the launcher's workers.
"""

from __future__ import annotations

import time

import zmq

from meshlearn.engines.control import pack, unpack
from meshlearn.engines.security import AllowList, Keys, connect_securely, serve_securely

__all__ = ["Heartbeats"]


class Heartbeats:
    """This machine's heartbeat, and what the others' say."""

    INTERVAL_S = 0.5
    SILENCE_S = 3.0

    def __init__(self, hosts, machine_id: int, keys: Keys | None = None, machine_keys: dict[int, bytes] | None = None):
        self.machine_id = machine_id
        self.context = zmq.Context()
        self.allow = AllowList(self.context) if keys is not None else None
        self.publisher = self.context.socket(zmq.PUB)
        self.publisher.setsockopt(zmq.LINGER, 0)
        if keys is not None:
            self.allow.allow({m: key for m, key in machine_keys.items() if m != machine_id})
            serve_securely(self.publisher, keys)
        self.publisher.bind(hosts.heartbeat_address(machine_id))
        self.subscribers: dict[zmq.Socket, int] = {}
        self.poller = zmq.Poller()
        for machine in hosts.machines:
            if machine.id == machine_id:
                continue
            sock = self.context.socket(zmq.SUB)
            sock.setsockopt(zmq.LINGER, 0)
            sock.setsockopt(zmq.SUBSCRIBE, b"")
            if keys is not None:
                connect_securely(sock, keys, machine_keys[machine.id])
            sock.connect(hosts.heartbeat_address(machine.id))
            self.subscribers[sock] = machine.id
            self.poller.register(sock, zmq.POLLIN)
        self.workers = {m.id: hosts.workers_of(m.id) for m in hosts.machines}
        self.last_seen: dict[int, float] = {}
        self.finished: set[int] = set()
        self.lost: set[int] = set()
        self._sent = 0.0

    def beat(self, failed: list[int], finished: bool = False) -> None:
        """Say this machine is alive (at most every ``INTERVAL_S``, unless ``finished``) and
        which of its workers have ``failed``."""
        now = time.monotonic()
        if finished or now - self._sent >= self.INTERVAL_S:
            self.publisher.send(pack({"kind": "heartbeat", "machine": self.machine_id, "failed": failed,
                                      "finished": finished}))
            self._sent = now

    def listen(self) -> tuple[set[int], list[int]]:
        """Read the heartbeats that arrived; returns the workers of other machines newly known
        to have failed, and the machines newly lost (silent too long)."""
        failed: set[int] = set()
        for sock, _ in self.poller.poll(0):
            machine = self.subscribers[sock]
            while sock.poll(0):
                try:
                    msg = unpack(sock.recv())
                except ValueError:
                    continue
                if msg.get("machine") != machine:   # a machine speaks only for itself
                    continue
                self.last_seen[machine] = time.monotonic()
                if msg.get("finished"):
                    self.finished.add(machine)
                own, said = set(self.workers[machine]), msg.get("failed")
                failed.update(k for k in (said if isinstance(said, list) else []) if isinstance(k, int) and k in own)
        now = time.monotonic()
        lost = [m for m, seen in self.last_seen.items()
                if m not in self.lost and m not in self.finished and now - seen > self.SILENCE_S]
        self.lost.update(lost)
        for m in lost:
            failed.update(self.workers[m])
        return failed, lost

    def close(self, failed: list[int]) -> None:
        self.beat(failed, finished=True)
        time.sleep(0.05)   # let the last word leave before the socket closes
        for sock in [self.publisher, *self.subscribers]:
            sock.close()
        if self.allow is not None:
            self.allow.stop()
        self.context.term()
