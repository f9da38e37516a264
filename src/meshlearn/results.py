"""The run directory: resolved config, per-round and per-node JSON lines, and a summary.

Lines are flushed as they are written and the summary is replaced atomically, so a run
that crashes or is interrupted leaves every completed evaluation readable (its summary says
``"status": "interrupted"`` or ``"failed"``; a killed process leaves ``"running"``).
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

import tomli_w

__all__ = ["RunWriter", "read_jsonl"]


class RunWriter:
    def __init__(self, out_dir: str | Path, config: dict[str, Any]):
        self.dir = Path(out_dir)
        self.dir.mkdir(parents=True, exist_ok=True)
        (self.dir / "config.toml").write_text(tomli_w.dumps(config))
        self._rounds = open(self.dir / "rounds.jsonl", "w")
        self._nodes = open(self.dir / "nodes.jsonl", "w")

    def write_round(self, record: dict[str, Any]) -> None:
        _append(self._rounds, record)

    def write_nodes(self, records: list[dict[str, Any]]) -> None:
        for record in records:
            self._nodes.write(json.dumps(_clean(record)) + "\n")
        self._nodes.flush()

    def write_json(self, name: str, obj: Any) -> None:
        """Atomically (re)write a JSON file in the run directory."""
        tmp = self.dir / f".{name}.tmp"
        tmp.write_text(json.dumps(_clean(obj), indent=2) + "\n")
        os.replace(tmp, self.dir / name)

    def close(self) -> None:
        self._rounds.close()
        self._nodes.close()


def read_jsonl(path: str | Path) -> list[dict[str, Any]]:
    """Records of a JSON-lines file, skipping a truncated last line."""
    records = []
    for line in Path(path).read_text().splitlines():
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            break
    return records


def _append(handle, record: dict[str, Any]) -> None:
    handle.write(json.dumps(_clean(record)) + "\n")
    handle.flush()


def _clean(value: Any) -> Any:
    """JSON-safe: NaN/inf become null, numpy scalars become Python numbers."""
    if isinstance(value, dict):
        return {str(k): _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    if hasattr(value, "item") and not isinstance(value, (str, bytes)):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value
