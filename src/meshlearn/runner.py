"""Runs an experiment end to end: build, train round by round, evaluate, write results."""

from __future__ import annotations

import contextlib
import platform
import random
import signal
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import torch

from meshlearn.callbacks import Callback
from meshlearn.config import ExperimentConfig
from meshlearn.engines import build_engine
from meshlearn.evaluation import RoundReport, round_record
from meshlearn.experiment import Experiment
from meshlearn.metrics import peak_rss_bytes
from meshlearn.privacy.secagg import KEY_BYTES
from meshlearn.results import RunWriter, claim_run_dir

__all__ = ["run_experiment", "RunInterrupted"]

STOP_SIGNALS = ("SIGINT", "SIGTERM", "SIGHUP")


class RunInterrupted(KeyboardInterrupt):
    """A run stopped by a signal (Ctrl-C, SIGTERM, SIGHUP); ``signal`` is its name."""

    def __init__(self, signal_name: str = "SIGINT"):
        super().__init__(signal_name)
        self.signal = signal_name


def run_experiment(cfg: ExperimentConfig, out_dir: str | Path,
                   on_round: Callable[[int, dict[str, Any] | None], None] | None = None, *,
                   callbacks: Sequence[Callback] = (), overwrite: bool = False,
                   **engine_options: Any) -> dict[str, Any]:
    """Run ``cfg`` and write its run directory; returns the summary.

    ``callbacks`` see the run start, every evaluation and round, and its end (see
    ``Callback``); ``on_round(rnd, record)`` is a shorthand for one ``on_round`` hook, e.g.
    to drive a progress bar. ``engine_options`` go to the engine (e.g. ``workers`` for
    ``processes``). A directory that holds a run already is refused unless ``overwrite``.
    SIGTERM and SIGHUP stop the run like Ctrl-C (``RunInterrupted``, a ``KeyboardInterrupt``),
    so its summary records how it ended. The caller's signal handlers, torch threads and
    global random generators are left as they were, so a run inside a notebook or a larger
    program changes nothing around it.
    """
    with _caller_state_kept(), _signals_interrupt():
        if cfg.engine.threads:
            torch.set_num_threads(cfg.engine.threads)
        with claim_run_dir(out_dir, overwrite):
            return _run(cfg, out_dir, on_round, list(callbacks), engine_options)


@contextlib.contextmanager
def _signals_interrupt() -> Iterator[None]:
    """Turn SIGINT, SIGTERM and SIGHUP into ``RunInterrupted`` while the run lasts, then put the
    previous handlers back. Handlers can only be set from the main thread: elsewhere the
    signals keep their handlers."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    fired: list[int] = []

    def interrupt(signum, frame):
        if not fired:   # once: a second signal must not cut short the closing of the run
            fired.append(signum)
            raise RunInterrupted(signal.Signals(signum).name)

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
         engine_options: dict[str, Any]) -> dict[str, Any]:
    started = time.time()
    experiment = Experiment.build(cfg)
    run_id = engine_options.pop("run_id", None) or uuid.uuid4().hex[:12]
    if cfg.engine.name != "sim" and "hosts" not in engine_options:
        engine_options.setdefault("keep_models", True)   # the final models come back to the launcher
    engine = build_engine(cfg.engine.name, experiment, run_id, **engine_options)
    writer = RunWriter(out_dir, cfg.to_toml_dict())
    summary: dict[str, Any] = {
        "name": cfg.name, "status": "running", "engine": cfg.engine.name, "run_id": run_id,
        "nodes": cfg.nodes, "rounds": cfg.rounds, "rounds_completed": 0, "seed": cfg.seed,
        "model": cfg.model.name, "parameters": experiment.layout.size,
        "batching": experiment.batching, "chunk_size": experiment.chunk_size,
        "started": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "torch_threads": torch.get_num_threads(),
        "python": platform.python_version(), "torch": torch.__version__,
    }
    if cfg.byzantine is not None:   # left out of every accuracy and consensus figure
        summary["byzantine_nodes"] = experiment.byzantine.tolist()
    report = None
    diverged = None
    try:
        for callback in callbacks:
            callback.on_start(cfg)
        engine.start()
        summary["setup_time_s"] = time.time() - started
        writer.write_json("summary.json", summary)
        for rnd in range(cfg.rounds + 1):
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
        if diverged is not None and cfg.evaluation.stop_on_divergence:
            summary["status"] = "diverged"
        else:
            params = _final_params(engine)
            if params is not None:
                writer.write_models(experiment.layout, params)
            summary["status"] = "completed"
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
        done = summary["rounds_completed"]
        wall = report.wall_time_s if report else 0.0
        summary.update(engine.close())
        summary.update(
            ended=datetime.now(timezone.utc).isoformat(timespec="seconds"),
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
