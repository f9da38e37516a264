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


def test_machine_keys_stay_on_their_machine_and_are_never_replaced(tmp_path):
    import os

    import pytest

    from meshlearn.engines.security import read_machine_keys, write_machine_keys

    written = write_machine_keys([0, 1], tmp_path / "keys")
    assert [p.name for p in written] == ["public.json", "machine-0.secret", "machine-1.secret"]
    assert all(os.stat(p).st_mode & 0o777 == 0o600 for p in written[1:])   # secrets: owner only
    with pytest.raises(FileExistsError, match="not replaced"):
        write_machine_keys([0, 1], tmp_path / "keys")
    one = tmp_path / "machine1"   # what machine 1 holds: the public keys and its own secret
    one.mkdir()
    for name in ("public.json", "machine-1.secret"):
        (one / name).write_bytes((tmp_path / "keys" / name).read_bytes())
    own, publics = read_machine_keys(one, [0, 1], 1)
    assert publics[1] == own.public and publics[0] != own.public
    with pytest.raises(ValueError, match="machine-0.secret not found"):
        read_machine_keys(one, [0, 1], 0)
    with pytest.raises(ValueError, match="no key for machines \\[2\\]"):
        read_machine_keys(one, [0, 1, 2], 1)
    (one / "machine-1.secret").write_bytes((tmp_path / "keys" / "machine-0.secret").read_bytes())
    with pytest.raises(ValueError, match="does not belong"):
        read_machine_keys(one, [0, 1], 1)


def test_a_multi_machine_run_without_keys_is_refused_unless_security_is_off():
    import pytest

    from meshlearn.config import ConfigError
    from meshlearn.engines.hosts import Hosts

    hosts = Hosts.model_validate({"machines": [{"id": 0, "address": "127.0.0.1"}, {"id": 1, "address": "127.0.0.1"}]})
    with pytest.raises(ConfigError, match="meshlearn keys HOSTS"):
        ProcessesEngine(Experiment.build(small_config()), RUN_ID, hosts=hosts, machine_id=0)
    engine = ProcessesEngine(Experiment.build(small_config(engine__secure=False)), RUN_ID, hosts=hosts, machine_id=0)
    assert engine.secure is False
