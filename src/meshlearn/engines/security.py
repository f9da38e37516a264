"""Authenticated, encrypted sockets for a run: libzmq's CURVE security with a ZAP allow-list.

Every worker and the launcher hold a CURVE key pair made for the run. A socket that accepts
connections (a worker's data socket, the launcher's control socket) is a CURVE server; the
ZeroMQ authentication handler of its process (``AllowList``) lets in only clients whose public
key belongs to the run, and tags each message with the key it came in on, so a receiver knows
which worker sent it and refuses a message in which one worker speaks for a node it does not
host. Messages are encrypted on the wire. No cryptography is written here: the handshake,
encryption and authentication are libzmq's (CurveZMQ), the handler pyzmq's.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path

import zmq
from zmq.auth.thread import ThreadAuthenticator

__all__ = ["Keys", "Credentials", "AllowList", "serve_securely", "connect_securely", "write_machine_keys",
           "read_machine_keys", "CREDENTIALS_ENV"]

log = logging.getLogger("meshlearn.security")

CREDENTIALS_ENV = "MESHLEARN_CURVE"
"""Environment variable through which a launcher hands a worker process its key pair and the
launcher's public key (never on the command line, which other users can read)."""


@dataclass(frozen=True)
class Keys:
    """A CURVE key pair (Z85 text, as libzmq takes them)."""

    public: bytes
    secret: bytes

    @classmethod
    def new(cls) -> "Keys":
        public, secret = zmq.curve_keypair()
        return cls(public, secret)


@dataclass(frozen=True)
class Credentials:
    """What a worker needs to join a secure run: its control key pair, its launcher's public key,
    and the key pair of its data socket (its own on one machine; its machine's on several)."""

    control: Keys
    launcher: bytes
    data: Keys

    def to_text(self) -> str:
        pair = lambda keys: {"public": keys.public.decode(), "secret": keys.secret.decode()}
        return json.dumps({"control": pair(self.control), "launcher": self.launcher.decode(), "data": pair(self.data)})

    @classmethod
    def from_text(cls, text: str) -> "Credentials":
        data = json.loads(text)
        pair = lambda d: Keys(d["public"].encode(), d["secret"].encode())
        return cls(pair(data["control"]), data["launcher"].encode(), pair(data["data"]))

    @classmethod
    def from_env(cls) -> "Credentials | None":
        """This worker's credentials, taken out of the environment (its children do not inherit them)."""
        text = os.environ.pop(CREDENTIALS_ENV, None)
        return cls.from_text(text) if text else None


def write_machine_keys(machine_ids: list[int], folder: Path) -> list[Path]:
    """A key pair per machine of a hosts file: ``public.json`` (every machine's public key, for
    every machine) and ``machine-<id>.secret`` (for that machine only, readable by its owner)."""
    folder.mkdir(parents=True, exist_ok=True)
    taken = [p for p in [folder / "public.json", *(folder / f"machine-{m}.secret" for m in machine_ids)] if p.exists()]
    if taken:
        raise FileExistsError(f"{taken[0]} exists: keys are not replaced; choose another folder")
    pairs = {m: Keys.new() for m in machine_ids}
    written = []
    for m, keys in pairs.items():
        path = folder / f"machine-{m}.secret"
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            json.dump({"machine": m, "public": keys.public.decode(), "secret": keys.secret.decode()}, f)
        written.append(path)
    public = folder / "public.json"
    public.write_text(json.dumps({str(m): keys.public.decode() for m, keys in pairs.items()}, indent=1) + "\n")
    return [public, *written]


def read_machine_keys(folder: Path, machine_ids: list[int], machine_id: int) -> tuple[Keys, dict[int, bytes]]:
    """This machine's key pair and every machine's public key, from ``write_machine_keys``' files;
    ValueError naming the file that is missing or wrong."""
    public_path, secret_path = folder / "public.json", folder / f"machine-{machine_id}.secret"
    try:
        publics = {int(m): key.encode() for m, key in json.loads(public_path.read_text()).items()}
        own = json.loads(secret_path.read_text())
        keys = Keys(own["public"].encode(), own["secret"].encode())
    except FileNotFoundError as exc:
        raise ValueError(f"{exc.filename} not found: create the keys with 'meshlearn keys HOSTS --out {folder}' "
                         "and copy public.json to every machine and machine-<id>.secret to that machine") from None
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise ValueError(f"{folder}: malformed key file ({type(exc).__name__}: {exc})") from None
    missing = sorted(set(machine_ids) - set(publics))
    if missing:
        raise ValueError(f"{public_path} has no key for machines {missing}: make the keys for this hosts file")
    if publics[machine_id] != keys.public:
        raise ValueError(f"{secret_path} does not belong to {public_path} (another key pair of machine {machine_id})")
    return keys, publics


def serve_securely(sock: zmq.Socket, keys: Keys) -> None:
    """Make ``sock`` a CURVE server (set before it binds)."""
    sock.curve_secretkey = keys.secret
    sock.curve_publickey = keys.public
    sock.curve_server = True


def connect_securely(sock: zmq.Socket, keys: Keys, server: bytes) -> None:
    """Make ``sock`` a CURVE client of the server whose public key is ``server`` (set before it connects)."""
    sock.curve_secretkey = keys.secret
    sock.curve_publickey = keys.public
    sock.curve_serverkey = server


class AllowList:
    """The ZAP handler of one process's context: admits the run's public keys only, and says
    which peer (a worker; a machine, when all of a machine's workers share its key) a received
    message came from."""

    _LOGGED = 10   # denied connections logged one by one, then every 100th

    def __init__(self, context: zmq.Context):
        self.owners: dict[str, int] = {}
        self.denied = 0
        self.auth = ThreadAuthenticator(context, log=logging.getLogger("meshlearn.security.zap"))
        self.auth.start()
        self.auth.configure_curve_callback(domain="*", credentials_provider=self)

    def allow(self, keys: dict[int, bytes]) -> None:
        """Admit these public keys, each as the peer it belongs to."""
        self.owners.update({key.decode(): peer for peer, key in keys.items()})

    def callback(self, domain: str, key: bytes) -> bool:
        if key.decode() in self.owners:
            return True
        self.denied += 1
        if self.denied <= self._LOGGED or self.denied % 100 == 0:
            log.warning("refused a connection from an unknown key (%d refused so far)", self.denied)
        return False

    def peer_of(self, frame: zmq.Frame) -> int | None:
        """The peer (a worker, or a machine) a received frame came from (None: not a key of the run)."""
        try:
            return self.owners.get(frame.get("User-Id"))
        except zmq.ZMQError:   # a frame that did not come through CURVE carries no User-Id
            return None

    def stop(self) -> None:
        self.auth.stop()
