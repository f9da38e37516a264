"""The run directory: resolved config, per-round and per-node JSON lines, a summary, and
the final models (``models.safetensors``, written when a run completes).

Lines are flushed as they are written and the summary is replaced atomically, so a run
that crashes or is interrupted leaves every completed evaluation readable (its summary says
``"status": "interrupted"`` or ``"failed"``; a killed process leaves ``"running"``).

A run claims its directory first (``claim_run_dir``): a ``.lock`` file holding the launcher's
pid keeps a second run out while the first is alive, and a directory that already holds a
run is only replaced when asked (``overwrite``), so results are never lost by accident.
"""

from __future__ import annotations

import json
import math
import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import psutil
import tomli_w

__all__ = ["RunWriter", "RunDirError", "claim_run_dir", "read_jsonl", "read_models", "merge_runs", "MODELS_FILE",
           "clean_json"]

MODELS_FILE = "models.safetensors"
LOCK_FILE = ".lock"
# what a run writes (with the --log loggers' files): the files --overwrite removes
RUN_FILES = ("config.toml", "rounds.jsonl", "nodes.jsonl", "nodes_final.json", "summary.json", MODELS_FILE,
             "rounds.csv", "tensorboard", "wandb", "checkpoint", "checkpoint.new", "checkpoint.old")


class RunDirError(ValueError):
    """The run directory cannot be used: another run holds it, or it holds results already."""


@contextmanager
def claim_run_dir(out_dir: str | Path, overwrite: bool = False, resume: bool = False) -> Iterator[Path]:
    """Hold ``out_dir`` for one run: take its lock, refuse (or with ``overwrite`` empty) a
    directory that holds results already unless the run in it ``resume``s, and release the
    lock however the run ends."""
    out = Path(out_dir)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise RunDirError(f"cannot create the run folder {out}: {exc.strerror}; choose another output "
                          "folder (--out)") from None
    lock = out / LOCK_FILE
    _lock(lock)
    try:
        present = sorted(p.name for p in out.iterdir() if p.name != LOCK_FILE)
        if present and not overwrite and not resume:
            listed = ", ".join(present[:4]) + (", ..." if len(present) > 4 else "")
            raise RunDirError(f"{out} is not empty ({listed}): choose another output folder (--out), or pass "
                              "--overwrite (overwrite=True from Python) to replace the run in it")
        if overwrite:
            for name in RUN_FILES:
                path = out / name
                if path.is_dir() and not path.is_symlink():
                    shutil.rmtree(path)
                elif path.exists() or path.is_symlink():
                    path.unlink()
        yield out
    finally:
        lock.unlink(missing_ok=True)


def _lock(lock: Path) -> None:
    """Create ``lock`` atomically with this process's pid; take over a lock whose process is gone."""
    for _ in range(2):
        try:
            fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            pid = _lock_owner(lock)
            if pid is None or psutil.pid_exists(pid):
                owner = f"pid {pid}" if pid is not None else "an unknown process"
                raise RunDirError(f"{lock.parent} is in use by another run ({owner}): wait for it to end or "
                                  f"choose another output folder (--out); if no run uses it, delete {lock}") from None
            lock.unlink(missing_ok=True)   # stale: its run was killed
            continue
        with os.fdopen(fd, "w") as fh:
            fh.write(f"{os.getpid()}\n")
        return
    raise RunDirError(f"{lock.parent} is in use by another run that started at the same time: choose another "
                      "output folder (--out)")


def _lock_owner(lock: Path) -> int | None:
    try:
        return int(lock.read_text().strip())
    except (OSError, ValueError):
        return None


class RunWriter:
    """Writes a run directory; ``after_round`` continues one (a resumed run): the records of
    later rounds are dropped, the new ones appended."""

    def __init__(self, out_dir: str | Path, config: dict[str, Any], after_round: int | None = None):
        self.dir = Path(out_dir)
        self.dir.mkdir(parents=True, exist_ok=True)
        (self.dir / "config.toml").write_text(tomli_w.dumps(config))
        if after_round is not None:
            for name in ("rounds.jsonl", "nodes.jsonl"):
                self._keep_until(name, after_round)
        mode = "w" if after_round is None else "a"
        self._rounds = open(self.dir / "rounds.jsonl", mode)
        self._nodes = open(self.dir / "nodes.jsonl", mode)

    def _keep_until(self, name: str, last_round: int) -> None:
        """Rewrite ``name`` (atomically) with only its records of rounds up to ``last_round``."""
        path = self.dir / name
        kept = [r for r in read_jsonl(path) if r.get("round", 0) <= last_round] if path.exists() else []
        self._replace(name, "".join(json.dumps(record) + "\n" for record in kept))

    def write_round(self, record: dict[str, Any]) -> None:
        _append(self._rounds, record)

    def write_nodes(self, records: list[dict[str, Any]]) -> None:
        # one write per round, so an interrupted run never leaves half a round
        self._nodes.write("".join(json.dumps(clean_json(record)) + "\n" for record in records))
        self._nodes.flush()

    def write_json(self, name: str, obj: Any) -> None:
        """Atomically (re)write a JSON file in the run directory."""
        self._replace(name, json.dumps(clean_json(obj), indent=2) + "\n")

    def _replace(self, name: str, text: str) -> None:
        """Write ``text`` to a file of the run directory, swapped in whole (never half written)."""
        tmp = self.dir / f".{name}.tmp"
        tmp.write_text(text)
        os.replace(tmp, self.dir / name)

    def write_models(self, layout, params) -> None:
        """Write the (N, P) final models as safetensors, one tensor per parameter stacked over
        nodes (shape (N, *shape)): the keys are the model's own parameter names, so node i's
        state dict is ``{name: t[i] for name, t in tensors.items()}``, whatever N is."""
        from safetensors.torch import save_file

        tensors = {name: view.contiguous() for name, view in layout.views(params.detach().cpu()).items()}
        tmp = self.dir / f".{MODELS_FILE}.tmp"
        save_file(tensors, str(tmp), metadata={"parameters": json.dumps(list(layout.names))})
        shutil.copymode(self.dir / "config.toml", tmp)   # readable like the other files, not owner-only
        os.replace(tmp, self.dir / MODELS_FILE)

    def close(self) -> None:
        self._rounds.close()
        self._nodes.close()


def metric_of(record: dict[str, Any]) -> str:
    """The task metric a round record's or node row's keys are named by: ``"acc"``
    (test_acc_mean, test_acc...), or ``"rmse"`` for regression (test_rmse_mean, test_rmse...)."""
    from meshlearn.tasks import TASKS

    return next((t.metric for t in TASKS.values() for key in record
                 if key == f"test_{t.metric}" or key.startswith(f"test_{t.metric}_")), "acc")


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


def read_models(path: str | Path) -> dict:
    """The tensors of a ``models.safetensors`` file, in the model's parameter order: name →
    (N, *shape). Safetensors holds only raw tensors, so reading one runs no code."""
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as fh:
        names = json.loads((fh.metadata() or {}).get("parameters", "null")) or list(fh.keys())
        return {name: fh.get_tensor(name) for name in names}


def _append(handle, record: dict[str, Any]) -> None:
    handle.write(json.dumps(clean_json(record)) + "\n")
    handle.flush()


def clean_json(value: Any) -> Any:
    """JSON-safe: NaN/inf become null, numpy scalars become Python numbers."""
    if isinstance(value, dict):
        return {str(k): clean_json(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [clean_json(v) for v in value]
    if hasattr(value, "item") and not isinstance(value, (str, bytes)):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


_ROW_KEYS = {"round", "node", "test_loss", "train_loss", "bytes_sent", "header_bytes", "local_loss", "val_loss"}


def merge_runs(parts: list[str | Path], out_dir: str | Path) -> dict[str, Any]:
    """Combine the run directories of one multi-machine run (one per machine) into one.

    Round records are rebuilt from the per-node rows of every part with the same function
    the engines use; figures that need all models at once (consensus distance, averaged
    model) are not available after the fact and are left out.
    """
    import numpy as np

    from meshlearn.config import tomllib
    from meshlearn.evaluation import Evaluation, RoundReport, round_record

    parts = [Path(p) for p in parts]
    for part in parts:
        for name in ("config.toml", "nodes.jsonl", "summary.json"):
            if not (part / name).is_file():
                raise ValueError(f"{part} is not a run directory: {name} is missing")
    configs = [tomllib.loads((part / "config.toml").read_text()) for part in parts]
    if any(c != configs[0] for c in configs[1:]):
        raise ValueError("the run directories come from different configs; merge only the parts of one run")
    summaries = [json.loads((part / "summary.json").read_text()) for part in parts]
    run_ids = {s.get("run_id") for s in summaries}
    if len(run_ids) > 1:
        raise ValueError(f"the run directories belong to different runs (run ids {sorted(map(str, run_ids))})")
    rows_by_round: dict[int, list[dict[str, Any]]] = {}
    for part in parts:
        for row in read_jsonl(part / "nodes.jsonl"):
            rows_by_round.setdefault(int(row["round"]), []).append(row)
    walls = {}
    for part in parts:
        for rec in read_jsonl(part / "rounds.jsonl"):
            walls[rec["round"]] = max(walls.get(rec["round"], 0.0), rec.get("wall_time_s") or 0.0)
    samples = max((s.get("final", {}).get("eval_samples") or 0) for s in summaries)
    writer = RunWriter(out_dir, configs[0])
    summary: dict[str, Any] = {**summaries[0], "merged_from": [str(p) for p in parts],
                               "workers": [w for s in summaries for w in s.get("workers", [])],
                               "failures": [f for s in summaries for f in s.get("failures", [])],
                               "status": "completed" if all(s["status"] == "completed" for s in summaries)
                               else "incomplete",
                               "rounds_completed": min(s["rounds_completed"] for s in summaries),
                               "peak_rss_bytes_total": sum(s.get("peak_rss_bytes_total", 0) for s in summaries)}
    metric = metric_of({key: None for rows in rows_by_round.values() for r in rows for key in r})
    metric_keys = {f"{kind}_{metric}" for kind in ("test", "val", "local")}
    try:
        for rnd in sorted(rows_by_round):
            rows = sorted(rows_by_round[rnd], key=lambda r: r["node"])
            col = lambda key, dtype: np.array([r.get(key, np.nan) for r in rows], dtype=dtype)
            extra = sorted({k for r in rows for k in r} - _ROW_KEYS - metric_keys)
            nodes = col("node", np.int64)
            tested = np.array([f"test_{metric}" in r for r in rows], dtype=bool)
            report = RoundReport(rnd, nodes, col("train_loss", np.float64), col("bytes_sent", np.float64),
                                 col("header_bytes", np.float64), walls.get(rnd, 0.0),
                                 evaluation=Evaluation(nodes[tested], col(f"test_{metric}", np.float64)[tested],
                                                       col("test_loss", np.float64)[tested], samples, metric),
                                 node_metrics={k: col(k, np.float64) for k in extra})
            if any(f"val_{metric}" in r for r in rows):   # evaluation.validation > 0
                report.evaluation.val_acc = col(f"val_{metric}", np.float64)[tested]
                report.evaluation.val_loss = col("val_loss", np.float64)[tested]
            local = np.array([f"local_{metric}" in r for r in rows], dtype=bool)
            if local.any():   # evaluation.local_test > 0
                ev = report.evaluation
                ev.local_acc = col(f"local_{metric}", np.float64)[local]
                ev.local_loss = col("local_loss", np.float64)[local]
                if not np.array_equal(local, tested):   # a server's model scored on its clients' sets
                    ev.local_nodes = nodes[local]
            record, node_rows = round_record(report)
            writer.write_round(record)
            writer.write_nodes(node_rows)
            summary["final"] = record
        summary["bytes_sent_per_node"] = summary.get("final", {}).get("bytes_sent_per_node")
        writer.write_json("summary.json", summary)
    finally:
        writer.close()
    return summary
