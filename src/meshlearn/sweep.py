"""Sweeps: a grid of config values × seeds, each run in its own directory, resumable.

A sweep is the product of the values given for some keys and of ``seeds`` seeds (the
config's seed, then the next ones). Every combination is an ordinary run, written to
``OUT/<key>=<value>,.../seed=<s>`` (``OUT/seed=<s>`` with seeds alone) by ``meshlearn run`` in a process of its own (``jobs`` of
them at once, the cores shared out as torch threads). Running the same sweep again skips
the runs that ended (completed or diverged), resumes those that were interrupted after a checkpoint, and starts
the others afresh; ``OUT/index.json`` lists every run with its values, seed, status and
final figures.
"""

from __future__ import annotations

import itertools
import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from meshlearn.config import ConfigError, load_config, tomllib
from meshlearn.checkpoint import CHECKPOINT_DIR
from meshlearn.results import metric_of

__all__ = ["SweepRun", "plan_sweep", "run_sweep", "parse_values"]

INDEX = "index.json"
ENDED = ("completed", "diverged")   # outcomes a rerun would only repeat


@dataclass(frozen=True)
class SweepRun:
    """One run of a sweep: its values (key → value), seed and directory."""

    values: tuple[tuple[str, Any], ...]
    seed: int
    out: Path

    def overrides(self) -> list[str]:
        return [f"{key}={_toml(value)}" for key, value in self.values] + [f"seed={self.seed}"]

    def status(self) -> str | None:
        """The run's summary status (None: never started or no summary)."""
        try:
            return json.loads((self.out / "summary.json").read_text()).get("status")
        except (OSError, ValueError):
            return None


def parse_values(item: str) -> tuple[str, list[Any]]:
    """``key=v1,v2,...`` → (key, [v1, v2, ...]); values are TOML (a bare word is text)."""
    key, sep, text = item.partition("=")
    if not sep or not key.strip() or not text.strip():
        raise ConfigError(f"--set {item!r}: expected key=value[,value...], e.g. --set training.lr=0.05,0.1")
    try:
        values = tomllib.loads(f"v = [{text}]")["v"]
    except tomllib.TOMLDecodeError:
        values = [part.strip() for part in text.split(",")]
    if not values:
        raise ConfigError(f"--set {item!r}: no values")
    return key.strip(), values


def plan_sweep(config: str | Path, grid: dict[str, list[Any]], seeds: int, out: str | Path) -> list[SweepRun]:
    """Every run of the sweep; each combination's config is validated first, so a bad value
    is refused before anything runs."""
    if seeds < 1:
        raise ConfigError(f"--seeds {seeds}: give at least 1")
    base = load_config(config)
    runs = []
    for combination in itertools.product(*(grid[key] for key in grid)):
        values = tuple(zip(grid, combination))
        load_config(config, [f"{k}={_toml(v)}" for k, v in values])   # ConfigError naming the key
        folder = Path(out, ",".join(f"{k}={_label(v)}" for k, v in values))   # no grid: OUT/seed=S
        runs.extend(SweepRun(values, base.seed + k, folder / f"seed={base.seed + k}") for k in range(seeds))
    return runs


def run_sweep(config: str | Path, grid: dict[str, list[Any]], seeds: int, out: str | Path, jobs: int = 1,
              log=print) -> list[dict[str, Any]]:
    """Run (or continue) the sweep; returns the index it writes to ``out/index.json``."""
    runs = plan_sweep(config, grid, seeds, out)
    Path(out).mkdir(parents=True, exist_ok=True)
    threads = max(1, (os.cpu_count() or 1) // max(1, jobs))
    todo = [run for run in runs if run.status() not in ENDED]
    log(f"sweep: {len(runs)} runs, {len(runs) - len(todo)} already ended, {len(todo)} to run, {jobs} at a time")
    running: list[tuple[SweepRun, subprocess.Popen]] = []
    try:
        while todo or running:
            while todo and len(running) < jobs:
                run = todo.pop(0)
                running.append((run, subprocess.Popen(_command(config, run, threads), stdout=subprocess.DEVNULL,
                                                      stderr=subprocess.PIPE, text=True)))
            for run, proc in list(running):
                if proc.poll() is not None:
                    running.remove((run, proc))
                    err = proc.stderr.read().strip().splitlines()
                    log(f"  {run.out}: {run.status() or 'failed'}" + (f" ({err[-1]})" if proc.returncode and err
                                                                    else ""))
            time.sleep(0.1)
    finally:
        for _, proc in running:   # interrupted: stop the runs in flight (they checkpoint and can resume)
            proc.terminate()
        for _, proc in running:
            proc.wait()
        index = [_entry(run) for run in runs]
        Path(out, INDEX).write_text(json.dumps(index, indent=1) + "\n")
    return index


def _command(config: str | Path, run: SweepRun, threads: int) -> list[str]:
    """``meshlearn resume`` for an interrupted run with a checkpoint, else ``meshlearn run``."""
    cli = [sys.executable, "-m", "meshlearn.cli"]
    if run.status() in ("interrupted", "failed", "running") and (run.out / CHECKPOINT_DIR / "run.json").is_file():
        return [*cli, "resume", str(run.out), "--no-progress"]
    overrides = [*run.overrides(), f"engine.threads={threads}"]
    return [*cli, "run", str(config), *(a for o in overrides for a in ("--set", o)), "--out", str(run.out),
            "--overwrite", "--no-progress"]


def _entry(run: SweepRun) -> dict[str, Any]:
    entry: dict[str, Any] = {"dir": str(run.out), "values": dict(run.values), "seed": run.seed, "status": run.status()}
    try:
        final = json.loads((run.out / "summary.json").read_text()).get("final") or {}
    except (OSError, ValueError):
        final = {}
    entry.update({k: final.get(k) for k in ("round", f"test_{metric_of(final)}_mean", "test_loss_mean",
                                            "bytes_sent_per_node")})
    return entry


def _toml(value: Any) -> str:
    """A value as TOML text (for --set)."""
    import tomli_w

    return tomli_w.dumps({"v": value}).partition("=")[2].strip()


def _label(value: Any) -> str:
    """A value as a folder-name part."""
    text = value if isinstance(value, str) else _toml(value)
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in text)
