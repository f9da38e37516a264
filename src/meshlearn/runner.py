"""Runs an experiment end to end: build, train round by round, evaluate, write results."""

from __future__ import annotations

import copy
import platform
import resource
import sys
import time
import uuid
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import torch

from meshlearn import metrics
from meshlearn.config import ExperimentConfig
from meshlearn.engines import ENGINES
from meshlearn.experiment import Experiment
from meshlearn.results import RunWriter

__all__ = ["run_experiment", "Evaluator", "peak_rss_bytes"]


class Evaluator:
    """Evaluates a fixed sample of nodes on a fixed sample of the test set (both reported)."""

    def __init__(self, experiment: Experiment):
        cfg = experiment.config.evaluation
        seed = experiment.config.seed
        n, ds = experiment.num_nodes, experiment.dataset
        # separate streams: changing the node sample must not change the test sample
        node_rng = np.random.default_rng([seed, 0xE7A1, 0])
        test_rng = np.random.default_rng([seed, 0xE7A1, 1])
        self.node_ids = (np.sort(node_rng.choice(n, cfg.nodes, replace=False)) if 0 < cfg.nodes < n
                         else np.arange(n))
        m = len(ds.y_test)
        test_idx = np.sort(test_rng.choice(m, cfg.test_samples, replace=False)) if 0 < cfg.test_samples < m else None
        self.x = torch.from_numpy(ds.x_test if test_idx is None else ds.x_test[test_idx])
        self.y = torch.from_numpy(ds.y_test if test_idx is None else ds.y_test[test_idx])
        self.experiment = experiment
        self.model = copy.deepcopy(experiment.model).to("meta")
        self.cfg = cfg

    def __call__(self, params: torch.Tensor) -> tuple[dict[str, Any], list[dict[str, Any]]]:
        exp = self.experiment
        kwargs = dict(batch_size=self.cfg.batch_size, chunk_size=exp.chunk_size,
                      batched=exp.batching == "vmap")
        sel = torch.from_numpy(self.node_ids)
        acc, loss = metrics.evaluate_models(self.model, exp.layout, params[sel], self.x, self.y, **kwargs)
        record = {**metrics.describe(acc, "test_acc"), **metrics.describe(loss, "test_loss"),
                  "consensus_distance": metrics.consensus_distance(params),
                  "eval_nodes": len(self.node_ids), "eval_samples": len(self.y)}
        if self.cfg.average_model:
            avg_acc, avg_loss = metrics.evaluate_models(self.model, exp.layout, params.mean(0, keepdim=True),
                                                        self.x, self.y, **kwargs)
            record.update(avg_model_acc=float(avg_acc[0]), avg_model_loss=float(avg_loss[0]))
        per_node = [{"node": int(node), "test_acc": float(a), "test_loss": float(lo)}
                    for node, a, lo in zip(self.node_ids, acc, loss)]
        return record, per_node


def peak_rss_bytes() -> int:
    """Peak resident memory of this process (ru_maxrss is KiB on Linux, bytes on macOS)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(peak if sys.platform == "darwin" else peak * 1024)


def run_experiment(cfg: ExperimentConfig, out_dir: str | Path,
                   on_round: Callable[[int, dict[str, Any] | None], None] | None = None) -> dict[str, Any]:
    """Run ``cfg`` and write its run directory; returns the summary.

    ``on_round(rnd, record)`` is called after every round (``record`` is the evaluation
    record on evaluation rounds, else None), e.g. to drive a progress bar.
    """
    if cfg.engine.threads:
        torch.set_num_threads(cfg.engine.threads)
    started = time.time()
    experiment = Experiment.build(cfg)
    engine = ENGINES[cfg.engine.name](experiment, run_id=uuid.uuid4().hex[:12])
    evaluate = Evaluator(experiment)
    writer = RunWriter(out_dir, cfg.to_toml_dict())
    summary: dict[str, Any] = {
        "name": cfg.name, "status": "running", "engine": cfg.engine.name, "nodes": cfg.nodes,
        "rounds": cfg.rounds, "rounds_completed": 0, "seed": cfg.seed,
        "model": cfg.model.name, "parameters": experiment.layout.size,
        "batching": experiment.batching, "chunk_size": experiment.chunk_size,
        "started": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "setup_time_s": time.time() - started, "torch_threads": torch.get_num_threads(),
        "python": platform.python_version(), "torch": torch.__version__,
    }
    writer.write_json("summary.json", summary)
    train_time = eval_time = 0.0
    last_loss = torch.full((cfg.nodes,), float("nan"))

    def evaluate_round(rnd: int) -> dict[str, Any]:
        nonlocal eval_time
        t0 = time.perf_counter()
        record, per_node = evaluate(engine.nodes.params)
        eval_time += time.perf_counter() - t0
        record = {"round": rnd, "wall_time_s": train_time, "sim_time_s": None,
                  "bytes_sent_per_node": float(engine.bytes_sent.mean()),
                  "bytes_sent_per_node_max": int(engine.bytes_sent.max()),
                  "header_bytes_per_node": float(engine.header_bytes.mean()),
                  **metrics.describe(last_loss, "train_loss"), **record,
                  "eval_time_s": eval_time}
        writer.write_round(record)
        writer.write_nodes([{"round": rnd, **row, "train_loss": float(last_loss[row["node"]]),
                             "bytes_sent": int(engine.bytes_sent[row["node"]])} for row in per_node])
        summary["final"] = record
        return record

    try:
        evaluate_round(0)
        for rnd in range(1, cfg.rounds + 1):
            t0 = time.perf_counter()
            last_loss = engine.run_round(rnd)
            train_time += time.perf_counter() - t0
            summary["rounds_completed"] = rnd
            record = evaluate_round(rnd) if rnd % cfg.evaluation.every == 0 or rnd == cfg.rounds else None
            if on_round:
                on_round(rnd, record)
        summary["status"] = "completed"
    except KeyboardInterrupt:
        summary["status"] = "interrupted"
        raise
    except BaseException as exc:
        summary["status"] = "failed"
        summary["error"] = f"{type(exc).__name__}: {exc}"
        raise
    finally:
        done = summary["rounds_completed"]
        summary.update(
            ended=datetime.now(timezone.utc).isoformat(timespec="seconds"),
            wall_time_s=train_time, eval_time_s=eval_time,
            time_per_round_s=train_time / done if done else None,
            message_bytes=engine.message_bytes,
            bytes_sent_per_node=float(engine.bytes_sent.mean()),
            peak_rss_bytes=peak_rss_bytes(),
        )
        writer.write_json("summary.json", summary)
        writer.write_json("nodes_final.json", _final_nodes(experiment, engine, last_loss))
        writer.close()
    return summary


def _final_nodes(experiment: Experiment, engine, last_loss: torch.Tensor) -> list[dict[str, Any]]:
    """Per-node facts at the end: data, degree, traffic, last training loss."""
    labels = experiment.dataset.y_train
    return [{"node": node, "train_samples": int(len(idx)),
             "classes": int(len(np.unique(labels[idx]))),
             "degree": int(experiment.graph.degree(node)),
             "bytes_sent": int(engine.bytes_sent[node]),
             "train_loss": float(last_loss[node])}
            for node, idx in enumerate(experiment.parts)]
