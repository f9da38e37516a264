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
        # one write per round, so an interrupted run never leaves half a round
        self._nodes.write("".join(json.dumps(_clean(record)) + "\n" for record in records))
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
    """Read JSON-object lines, skipping unparsable lines at the end.

    A killed writer can only damage the tail; damage before valid records
    means the file is corrupt, which is reported rather than hidden.
    """
    path = Path(path)
    records: list[dict[str, Any]] = []
    bad_line: int | None = None
    with path.open("r", encoding="utf-8", errors="replace") as fh:
        for lineno, line in enumerate(fh, start=1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError:
                obj = None
            if not isinstance(obj, dict):
                if bad_line is None:
                    bad_line = lineno
                continue
            if bad_line is not None:
                raise ValueError(f"{path}: line {bad_line} is not a JSON object")
            records.append(obj)
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
