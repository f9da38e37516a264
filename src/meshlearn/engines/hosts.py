"""The hosts file of a multi-machine run: which machine runs which workers, at which address.

```toml
base_port = 47000          # worker k of a machine listens on base_port + k

[[machines]]
id = 0
address = "10.0.0.1"
workers = 2

[[machines]]
id = 1
address = "10.0.0.2"
workers = 4
port = 48000               # this machine's own base port (optional)
```
Workers are numbered machine by machine in id order, and nodes are split over all workers
in contiguous blocks, so every machine derives the same plan from the same file. A machine
uses its base port + k for its worker k and the port after its workers' for its launcher's
heartbeats (``engines.heartbeats``): keep those ports free and reachable.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from meshlearn.config import ConfigError, tomllib

__all__ = ["Machine", "Hosts", "load_hosts", "split_nodes"]


class Machine(BaseModel):
    model_config = ConfigDict(extra="forbid")
    id: int = Field(ge=0)
    address: str = Field(min_length=1, description="IP or host name the other machines reach this one at")
    workers: int = Field(1, ge=1, description="worker processes on this machine")
    port: int | None = Field(None, ge=1, le=65535, description="base port of this machine (default: base_port)")


class Hosts(BaseModel):
    model_config = ConfigDict(extra="forbid")
    base_port: int = Field(47000, ge=1, le=65535)
    machines: list[Machine] = Field(min_length=1)

    @model_validator(mode="after")
    def _unique_ids(self) -> "Hosts":
        ids = [m.id for m in self.machines]
        if len(set(ids)) != len(ids):
            raise ValueError(f"machine ids must be unique, got {ids}")
        self.machines.sort(key=lambda m: m.id)
        return self

    @property
    def total_workers(self) -> int:
        return sum(m.workers for m in self.machines)

    def machine(self, machine_id: int) -> Machine:
        for m in self.machines:
            if m.id == machine_id:
                return m
        raise ConfigError(f"--machine-id {machine_id} is not in the hosts file (ids: {[m.id for m in self.machines]})")

    def workers_of(self, machine_id: int) -> list[int]:
        """Global indices of a machine's workers."""
        start = 0
        for m in self.machines:
            if m.id == machine_id:
                return list(range(start, start + m.workers))
            start += m.workers
        raise ConfigError(f"--machine-id {machine_id} is not in the hosts file")

    def book(self) -> dict[int, str]:
        """Data-socket address of every worker."""
        out, k = {}, 0
        for m in self.machines:
            for local in range(m.workers):
                out[k] = f"tcp://{m.address}:{(m.port or self.base_port) + local}"
                k += 1
        return out

    def heartbeat_address(self, machine_id: int) -> str:
        """Where a machine's launcher publishes its heartbeats: the port after its workers'."""
        m = self.machine(machine_id)
        return f"tcp://{m.address}:{(m.port or self.base_port) + m.workers}"

    def digest(self) -> str:
        return hashlib.sha256(json.dumps(self.model_dump(), sort_keys=True).encode()).hexdigest()


def load_hosts(path: str | Path) -> Hosts:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"hosts file {str(path)!r} not found")
    try:
        return Hosts.model_validate(tomllib.loads(path.read_text()))
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML ({exc})") from None
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
        raise ConfigError(f"{path}: invalid hosts file: {problems}") from None


def split_nodes(nodes: int, workers: int) -> list[list[int]]:
    """Contiguous blocks of node ids, one per worker, sizes differing by at most one."""
    return [block.tolist() for block in np.array_split(np.arange(nodes), workers)]
