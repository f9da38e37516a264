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

import zmq
from zmq.auth.thread import ThreadAuthenticator

__all__ = ["Keys", "AllowList", "serve_securely", "connect_securely", "CREDENTIALS_ENV"]

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

    def to_text(self, launcher: bytes) -> str:
        """The key pair and the launcher's public key as text, for handing to a worker."""
        return json.dumps({"public": self.public.decode(), "secret": self.secret.decode(),
                           "launcher": launcher.decode()})

    @classmethod
    def from_text(cls, text: str) -> tuple["Keys", bytes]:
        """A worker's keys and its launcher's public key from ``to_text``'s text."""
        data = json.loads(text)
        return cls(data["public"].encode(), data["secret"].encode()), data["launcher"].encode()

    @classmethod
    def from_env(cls) -> tuple["Keys", bytes] | None:
        """This worker's credentials, taken out of the environment (its children do not inherit them)."""
        text = os.environ.pop(CREDENTIALS_ENV, None)
        return cls.from_text(text) if text else None


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
    which peer (a worker index, or -1 for the launcher) a received message came from."""

    _LOGGED = 10   # denied connections logged one by one, then every 100th

    def __init__(self, context: zmq.Context):
        self.owners: dict[str, int] = {}
        self.denied = 0
        self.auth = ThreadAuthenticator(context, log=logging.getLogger("meshlearn.security.zap"))
        self.auth.start()
        self.auth.configure_curve_callback(domain="*", credentials_provider=self)

    def allow(self, keys: dict[int, bytes]) -> None:
        """Admit these public keys, each as the peer it belongs to."""
        self.owners.update({key.decode() if isinstance(key, bytes) else key: peer for peer, key in keys.items()})

    def callback(self, domain: str, key: bytes) -> bool:
        if key.decode() in self.owners:
            return True
        self.denied += 1
        if self.denied <= self._LOGGED or self.denied % 100 == 0:
            log.warning("refused a connection from an unknown key (%d refused so far)", self.denied)
        return False

    def peer_of(self, frame: zmq.Frame) -> int | None:
        """The peer a received frame came from (None: not a key of the run)."""
        try:
            return self.owners.get(frame.get("User-Id"))
        except zmq.ZMQError:   # a frame that did not come through CURVE carries no User-Id
            return None

    def stop(self) -> None:
        self.auth.stop()
