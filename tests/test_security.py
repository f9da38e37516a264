"""Authenticated transport: on processes every socket is CURVE-encrypted and admits the run's
keys only, and a worker may speak only for the nodes it hosts, on the data and control channels."""

from __future__ import annotations

import numpy as np
import torch
import zmq

from conftest import small_config
from meshlearn import wire
from meshlearn.engines.control import pack
from meshlearn.engines.processes import ProcessesEngine
from meshlearn.engines.security import Keys, connect_securely
from meshlearn.experiment import Experiment
from test_processes import RUN_ID, drive, run_processes


def _nan_message(src: int, dst: int, rnd: int, size: int) -> list[bytes]:
    msg = wire.Message(RUN_ID, src, rnd, "model", {"params": torch.full((size,), float("nan"))}, {"dst": dst})
    return [bytes(frame) for frame in wire.encode(msg)]


def _socket(context, kind, address, keys=None, server=None):
    sock = context.socket(kind)
    sock.setsockopt(zmq.LINGER, 2000)
    if keys is not None:
        connect_securely(sock, keys, server)
    sock.connect(address)
    return sock


def test_forged_messages_and_forged_control_change_nothing():
    """An outsider (a random key, or no CURVE at all) cannot even connect; a worker's real key
    speaking for another worker's node or in another worker's name is refused and counted. The
    run's models are a clean run's, bit for bit."""
    cfg = small_config(rounds=4, model={"name": "mlp", "options": {"hidden": [16]}, "same_init": False})
    clean, _, _ = run_processes(cfg, workers=2)
    engine = ProcessesEngine(Experiment.build(cfg), RUN_ID, workers=2, keep_models=True)
    size = engine.experiment.layout.size
    engine.start()
    context = zmq.Context()
    try:
        dst = int(engine.assignment[0][0])
        neighbour = int(engine.experiment.topology.graph(cfg.rounds).weights[dst].indices[0])
        own = int(engine.assignment[0][-1])   # a node worker 0 hosts, claimed below by worker 1's key
        server = engine.keys[0].public
        forged = {  # who connects, and what it claims
            "outsider": (Keys.new(), _nan_message(neighbour, dst, cfg.rounds, size)),
            "no CURVE": (None, _nan_message(neighbour, dst, cfg.rounds, size)),
            "worker 1 as worker 0's node": (engine.keys[1], _nan_message(own, dst, cfg.rounds, size)),
        }
        for keys, frames in forged.values():
            _socket(context, zmq.PUSH, engine.book[0], keys, server).send_multipart(frames)
        launcher = engine.launcher_keys.public
        _socket(context, zmq.DEALER, engine.control_address, Keys.new(), launcher).send(
            pack({"kind": "error", "worker": 0, "message": "forged by an outsider"}))
        _socket(context, zmq.DEALER, engine.control_address, engine.keys[1], launcher).send(
            pack({"kind": "error", "worker": 0, "message": "forged by worker 1"}))
        reports = [engine.step(rnd) for rnd in range(cfg.rounds + 1)]
    finally:
        extra = engine.close()
        context.destroy(linger=0)
    assert extra["failures"] == [] and extra["secure"] is True
    assert torch.equal(engine.params, clean.params) and not torch.isnan(engine.params).any()
    assert extra["control_messages_rejected"] == 1        # worker 1's key naming worker 0
    assert extra["connections_refused"] >= 2               # the outsiders' keys, at a worker and the launcher
    assert extra["workers"][0]["messages_rejected"] == 1   # worker 1's key speaking for node `own`
    assert len(reports) == cfg.rounds + 1


def test_security_can_be_switched_off_for_trusted_benchmarks():
    cfg = small_config(rounds=2, engine__secure=False)
    secure, _, _ = run_processes(small_config(rounds=2), workers=2)
    engine = ProcessesEngine(Experiment.build(cfg), RUN_ID, workers=2, keep_models=True)
    _, extra = drive(engine, cfg.rounds)
    assert extra["secure"] is False and engine.keys == {}
    assert torch.equal(engine.params, secure.params)   # encryption changes no byte the nodes see
    assert np.isfinite(engine.params.numpy()).all()


def test_without_security_an_outsider_takes_over_a_node():
    """What ``engine.secure = false`` gives up: the same forged message from a socket without
    keys reaches its node (the reason security is on by default)."""
    cfg = small_config(rounds=4, engine__secure=False)
    engine = ProcessesEngine(Experiment.build(cfg), RUN_ID, workers=2, keep_models=True)
    engine.start()
    context = zmq.Context()
    try:
        dst = int(engine.assignment[0][0])
        neighbour = int(engine.experiment.topology.graph(cfg.rounds).weights[dst].indices[0])
        _socket(context, zmq.PUSH, engine.book[0]).send_multipart(
            _nan_message(neighbour, dst, cfg.rounds, engine.experiment.layout.size))
        for rnd in range(cfg.rounds + 1):
            engine.step(rnd)
    finally:
        engine.close()
        context.destroy(linger=0)
    assert torch.isnan(engine.params[dst]).all()
