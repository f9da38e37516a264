"""Runs an experiment end to end: build, train round by round, evaluate, write results."""

from __future__ import annotations

import contextlib
import json
import platform
import random
import signal
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import torch

from meshlearn import plugins
from meshlearn.callbacks import Callback
from meshlearn.checkpoint import load_checkpoint, remove_checkpoint, save_checkpoint
from meshlearn.config import ExperimentConfig, parse_config
from meshlearn.engines import build_engine
from meshlearn.evaluation import RoundReport, round_record
from meshlearn.experiment import Experiment
from meshlearn.metrics import peak_rss_bytes
from meshlearn.privacy.secagg import KEY_BYTES
from meshlearn.results import RunDirError, RunWriter, claim_run_dir, clean_json

__all__ = ["run_experiment", "resume_run", "RunInterrupted"]

STOP_SIGNALS = ("SIGINT", "SIGTERM", "SIGHUP")


class RunInterrupted(KeyboardInterrupt):
    """A run stopped by a signal (Ctrl-C, SIGTERM, SIGHUP); ``signal`` is its name."""

    def __init__(self, signal_name: str = "SIGINT"):
        super().__init__(signal_name)
        self.signal = signal_name


def run_experiment(cfg: ExperimentConfig, out_dir: str | Path,
                   on_round: Callable[[int, dict[str, Any] | None], None] | None = None, *,
                   callbacks: Sequence[Callback] = (), overwrite: bool = False, resume: bool = False,
                   **engine_options: Any) -> dict[str, Any]:
    """Run ``cfg`` and write its run directory; returns the summary.

    ``callbacks`` see the run start, every evaluation and round, and its end (see
    ``Callback``); ``on_round(rnd, record)`` is a shorthand for one ``on_round`` hook, e.g.
    to drive a progress bar. ``engine_options`` go to the engine (e.g. ``workers`` for
    ``processes``). A directory that holds a run already is refused unless ``overwrite``;
    with ``resume`` the run in it continues from its latest checkpoint (``resume_run``).
    SIGTERM and SIGHUP stop the run like Ctrl-C (``RunInterrupted``, a ``KeyboardInterrupt``),
    so its summary records how it ended; the run first goes on to its next checkpoint (the
    simulators: the round in progress; worker processes: a few rounds) unless a second signal
    stops it at once. The caller's signal handlers,
    torch threads and global random generators are left as they were, so a run inside a
    notebook or a larger program changes nothing around it.
    """
    stop = _StopRequest()
    with _caller_state_kept(), _signals_interrupt(stop):
        if cfg.engine.threads:
            torch.set_num_threads(cfg.engine.threads)
        with claim_run_dir(out_dir, overwrite, resume=resume):
            return _run(cfg, out_dir, on_round, list(callbacks), engine_options, stop, resume)


def resume_run(run_dir: str | Path, on_round: Callable[[int, dict[str, Any] | None], None] | None = None, *,
               callbacks: Sequence[Callback] = (), **engine_options: Any) -> dict[str, Any]:
    """Continue the interrupted or killed run in ``run_dir`` from its latest checkpoint, with
    the config and engine it was started with; returns the summary. Records of rounds after
    the checkpoint are dropped and played again, so the run ends as it would have uninterrupted."""
    return run_experiment(checkpointed_config(run_dir), run_dir, on_round, callbacks=callbacks, resume=True,
                          **engine_options)


def checkpointed_config(run_dir: str | Path) -> ExperimentConfig:
    """The config of the run whose checkpoint is in ``run_dir`` (its plug-in folders importable)."""
    run, _ = _resumable(run_dir, states=False)   # the run reads the states once it holds the folder
    plugins.add_import_paths(run.get("import_paths", []))
    return parse_config(run["config"])


class _StopRequest:
    """A stop signal that waits for the end of the round in progress while ``deferring``."""

    deferring = False
    signal: str | None = None


@contextlib.contextmanager
def _signals_interrupt(stop: _StopRequest) -> Iterator[None]:
    """Turn SIGINT, SIGTERM and SIGHUP into ``RunInterrupted`` while the run lasts (or, while
    ``stop.deferring``, note the first in ``stop`` for the run to act on after the round), then
    put the previous handlers back. Handlers can only be set from the main thread: elsewhere
    the signals keep their handlers."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    fired: list[int] = []

    def interrupt(signum, frame):
        name = signal.Signals(signum).name
        if stop.deferring and stop.signal is None:
            stop.signal = name
            print(f"meshlearn: {name}: stopping once a checkpoint is saved, after a round or a few (send it again "
                  "to stop now)", file=sys.stderr)
            return
        if not fired:   # once: a second signal must not cut short the closing of the run
            fired.append(signum)
            raise RunInterrupted(name)

    names = [name for name in STOP_SIGNALS if hasattr(signal, name)]   # Windows has no SIGHUP
    previous = {name: signal.signal(getattr(signal, name), interrupt) for name in names}
    try:
        yield
    finally:
        for name, handler in previous.items():
            signal.signal(getattr(signal, name), handler if handler is not None else signal.SIG_DFL)


@contextlib.contextmanager
def _caller_state_kept() -> Iterator[None]:
    """Restore torch's thread count and the global generators of torch, numpy and ``random``
    (plug-ins may seed or draw from them)."""
    threads, torch_rng = torch.get_num_threads(), torch.get_rng_state()
    numpy_rng, python_rng = np.random.get_state(), random.getstate()
    try:
        yield
    finally:
        torch.set_num_threads(threads)
        torch.set_rng_state(torch_rng)
        np.random.set_state(numpy_rng)
        random.setstate(python_rng)


def _run(cfg: ExperimentConfig, out_dir: str | Path, on_round, callbacks: list[Callback],
         engine_options: dict[str, Any], stop: _StopRequest, resume: bool) -> dict[str, Any]:
    started = time.time()
    saved = _resumable(out_dir) if resume else None
    if saved is not None:   # the run as it was launched; options given now win
        if saved[0]["config"] != cfg.model_dump(mode="json"):
            raise RunDirError(f"the config differs from the one of the run in {out_dir}: resume it with its own "
                              "(meshlearn resume, or meshlearn.runner.resume_run)")
        engine_options = {**saved[0]["engine_options"], **engine_options, "run_id": saved[0]["run_id"]}
    experiment = Experiment.build(cfg)
    run_id = engine_options.pop("run_id", None) or uuid.uuid4().hex[:12]
    if cfg.engine.name != "sim" and "hosts" not in engine_options:
        engine_options.setdefault("keep_models", True)   # the final models come back to the launcher
    engine = build_engine(cfg.engine.name, experiment, run_id, **engine_options)
    first = 0
    summary: dict[str, Any] = {
        "name": cfg.name, "status": "running", "engine": cfg.engine.name, "run_id": run_id,
        "nodes": cfg.nodes, "rounds": cfg.rounds, "rounds_completed": 0, "seed": cfg.seed,
        "model": cfg.model.name, "parameters": experiment.layout.size,
        "batching": experiment.batching, "chunk_size": experiment.chunk_size, "device": str(experiment.device),
        "started": _now(), "torch_threads": torch.get_num_threads(),
        "python": platform.python_version(), "torch": torch.__version__,
    }
    if saved is not None:
        run, hosts = saved
        first = run["round"] + 1
        summary = {**run["summary"], "status": "running",
                   "resumed": [*run["summary"].get("resumed", []), {"from_round": run["round"], "at": _now()}]}
        engine.restore(hosts, run["round"])
    if cfg.byzantine is not None:   # left out of every accuracy and consensus figure
        summary["byzantine_nodes"] = experiment.byzantine.tolist()
    writer = RunWriter(out_dir, cfg.to_toml_dict(), after_round=first - 1 if saved is not None else None)
    checkpoints = _Checkpoints(cfg, out_dir, engine, {
        "run_id": run_id, "config": cfg.model_dump(mode="json"), "import_paths": plugins.import_folders(),
        "engine_options": {k: v for k, v in engine_options.items() if k in _RESUMED_OPTIONS}})
    report = None
    diverged = summary.get("diverged")
    try:
        for callback in callbacks:
            callback.on_start(cfg)
        engine.start()
        summary["setup_time_s"] = time.time() - started
        writer.write_json("summary.json", summary)
        stop.deferring = engine.checkpointable
        for rnd in range(first, cfg.rounds + 1):
            report = engine.step(rnd)
            summary["rounds_completed"] = rnd
            record = None
            if report.evaluation is not None:
                record, rows = round_record(report)
                writer.write_round(record)
                writer.write_nodes(rows)
                summary["final"] = record
                for callback in callbacks:
                    callback.on_evaluate(record)
            if rnd:
                for callback in callbacks:
                    callback.on_round(rnd, record)
                if on_round:
                    on_round(rnd, record)
            bad = diverged_nodes(engine, report)
            if bad and diverged is None:
                diverged = summary["diverged"] = {"round": rnd, "nodes": bad}
                if cfg.evaluation.stop_on_divergence:
                    break
            if 0 < rnd < cfg.rounds:
                checkpointed = checkpoints.after_round(rnd, summary, now=stop.signal is not None)
                if stop.signal is not None and (checkpointed or not engine.checkpointable):
                    raise RunInterrupted(stop.signal)
        if diverged is not None and cfg.evaluation.stop_on_divergence:
            summary["status"] = "diverged"
        else:
            params = _final_params(engine)
            if params is not None:
                writer.write_models(experiment.layout, params)
            summary["status"] = "completed"
        remove_checkpoint(out_dir)   # the run has ended: nothing to resume
    except KeyboardInterrupt as exc:
        summary["status"] = "interrupted"
        if isinstance(exc, RunInterrupted):
            summary["signal"] = exc.signal
        raise
    except BaseException as exc:
        summary["status"] = "failed"
        summary["error"] = f"{type(exc).__name__}: {exc}"
        raise
    finally:
        stop.deferring = False
        done = summary["rounds_completed"]
        wall = report.wall_time_s if report else 0.0
        summary.update(engine.close())
        summary.update(
            ended=_now(),
            wall_time_s=wall, eval_time_s=report.eval_time_s if report else 0.0,
            sim_time_s=report.sim_time_s if report else None,
            time_per_round_s=wall / done if done else None,
            message_bytes=engine.message_bytes,
            bytes_sent_per_node=float(report.bytes_sent.mean()) if report and len(report.nodes) else 0.0,
        )
        summary.setdefault("peak_rss_bytes", peak_rss_bytes())
        if cfg.privacy.secagg is not None:   # the key directory: a public key up, every node's key down
            summary["secagg_key_bytes"] = {"sent_per_node": KEY_BYTES, "received_per_node": KEY_BYTES * cfg.nodes}
        writer.write_json("summary.json", summary)
        if report is not None:
            writer.write_json("nodes_final.json", _final_nodes(experiment, report))
        writer.close()
        for callback in callbacks:
            callback.on_end(summary)
    return summary


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


_RESUMED_OPTIONS = ("workers", "ray_address", "keep_models")
"""Engine options a resumed run is launched with again (JSON values)."""


def _resumable(out_dir: str | Path, states: bool = True) -> tuple[dict[str, Any], dict[int, bytes]]:
    """The checkpoint of a run that did not end (``load_checkpoint``); a run that did is refused."""
    path = Path(out_dir) / "summary.json"
    try:
        status = json.loads(path.read_text()).get("status")
    except (OSError, ValueError):
        status = None
    if status in ("completed", "diverged"):
        raise RunDirError(f"the run in {out_dir} has {status}: there is nothing to resume (start a new run with "
                          "'meshlearn run')")
    return load_checkpoint(out_dir, states)


class _Checkpoints:
    """Saves the run's checkpoint after the rounds ``[checkpoint]`` asks for (and when told to)."""

    def __init__(self, cfg: ExperimentConfig, out_dir: str | Path, engine, meta: dict[str, Any]):
        self.every, self.every_s = cfg.checkpoint.every, cfg.checkpoint.every_s
        self.out_dir, self.engine, self.meta = out_dir, engine, meta
        self.last = time.monotonic()

    def after_round(self, rnd: int, summary: dict[str, Any], now: bool = False) -> bool:
        """Save a checkpoint after round ``rnd`` if one is due (or ``now``) and the engine has
        it; True if saved."""
        due = now or (rnd % self.every == 0 if self.every else time.monotonic() - self.last >= self.every_s)
        hosts = self.engine.checkpoint(rnd, due)
        if hosts is None:
            return False
        summary["checkpoint_round"] = rnd
        run = {**self.meta, "round": rnd, "hosts": sorted(hosts), "summary": clean_json(summary)}
        save_checkpoint(self.out_dir, run, hosts)
        self.last = time.monotonic()
        return True


def diverged_nodes(engine, report: RoundReport) -> int:
    """How many honest nodes' models have gone non-finite after a round: the nodes whose parameters
    hold NaN or infinity (or overflow when summed), where the engine holds the models (sim,
    async), and on evaluation rounds the evaluated nodes whose test loss is not finite (every
    engine). The training loss cannot tell: NaN there also marks nodes that did not train."""
    bad: set[int] = set()
    nodes = getattr(engine, "nodes", None)
    if nodes is not None:
        finite = torch.isfinite(nodes.params.sum(dim=1)).cpu().numpy()
        honest = getattr(engine, "honest", None)
        if honest is not None:   # an attacker's own model may be anything
            finite |= ~honest
        bad.update(np.flatnonzero(~finite).tolist())
    if report.evaluation is not None:
        ev = report.evaluation
        bad.update(np.asarray(ev.nodes)[~np.isfinite(np.asarray(ev.loss, dtype=np.float64))].tolist())
    return len(bad)


def _final_params(engine) -> torch.Tensor | None:
    """The (N, P) models of every node after the last round: the simulators hold them, the
    networked engines get them from their workers (None: a share of a multi-machine run)."""
    nodes = getattr(engine, "nodes", None)
    return nodes.params if nodes is not None else getattr(engine, "params", None)


def _final_nodes(experiment: Experiment, report: RoundReport) -> list[dict[str, Any]]:
    """Per-node facts at the end: data, degree, traffic, last training loss."""
    labels = experiment.dataset.y_train
    rows = []
    for i, node in enumerate(report.nodes.tolist()):
        idx = experiment.parts[node]
        rows.append({"node": node, "train_samples": int(len(idx)), "classes": int(len(np.unique(labels[idx]))),
                     "degree": int(experiment.graph.degree(node)), **report.node_figures(i)})
        if experiment.config.evaluation.local_test > 0:   # held out of train_samples
            rows[-1]["local_test_samples"] = int(len(experiment.local_tests[node]))
        if experiment.config.byzantine is not None:
            rows[-1]["byzantine"] = node in experiment.byzantine
    return rows
