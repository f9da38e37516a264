"""Evaluation and round records, shared by every engine.

An engine evaluates whichever nodes it holds (all of them in ``sim``, a worker's share in
``processes``) with the same ``Evaluator``: the node sample and the test sample are fixed by
the seed, so engines report the same curve for the same models. ``round_record`` turns the
per-node figures of a round into the flat ``rounds.jsonl`` record, and ``meshlearn merge``
rebuilds records from per-node rows with the same function.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from meshlearn import metrics, streams
from meshlearn.streams import Stream

__all__ = ["Evaluator", "RoundReport", "round_record"]


class Evaluator:
    """Evaluates a fixed sample of nodes on a fixed sample of the test set (both reported)."""

    def __init__(self, experiment):
        cfg = experiment.config.evaluation
        seed = experiment.config.seed
        n, ds = experiment.num_nodes, experiment.dataset
        # separate streams: changing the node sample must not change the test sample
        node_rng = streams.generator(seed, Stream.EVAL_NODES)
        test_rng = streams.generator(seed, Stream.EVAL_SAMPLES)
        honest = np.flatnonzero(experiment.honest(np.arange(n)))   # Byzantine nodes are never scored
        self.node_ids = (np.sort(node_rng.choice(honest, min(cfg.nodes, len(honest)), replace=False))
                         if 0 < cfg.nodes < len(honest) else honest)
        # in federated learning the model is the server's: clients hold stale local copies
        self.server_only = experiment.config.algorithm.implementation().server
        if self.server_only:
            self.node_ids = np.array([0])
        m = len(ds.y_test)
        test_idx = np.sort(test_rng.choice(m, cfg.test_samples, replace=False)) if 0 < cfg.test_samples < m else None
        self.x = torch.from_numpy(ds.x_test if test_idx is None else ds.x_test[test_idx])
        self.y = torch.from_numpy(ds.y_test if test_idx is None else ds.y_test[test_idx])
        self.experiment = experiment
        self.model = copy.deepcopy(experiment.model).to("meta")
        self.cfg = cfg

    def due(self, rnd: int) -> bool:
        """Round 0 (the initial models), every ``evaluation.every`` rounds, and the last round."""
        return rnd % self.cfg.every == 0 or rnd == self.experiment.config.rounds

    def models(self, params: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(accuracy, loss) of each row of ``params`` on the test sample."""
        exp = self.experiment
        return metrics.evaluate_models(self.model, exp.layout, params, self.x, self.y,
                                       batch_size=self.cfg.batch_size, chunk_size=exp.chunk_size,
                                       batched=exp.batching == "vmap")

    def local(self, ids: torch.Tensor, params: torch.Tensor) -> "Evaluation":
        """Evaluate the sampled nodes among ``ids`` (rows of ``params``)."""
        wanted = np.isin(ids.numpy(), self.node_ids)
        rows = torch.from_numpy(np.flatnonzero(wanted))
        acc, loss = self.models(params[rows]) if len(rows) else (torch.empty(0), torch.empty(0))
        return Evaluation(ids.numpy()[wanted].copy(), acc.numpy(), loss.numpy(), len(self.y))

    def average(self, evaluation: "Evaluation", mean: torch.Tensor) -> None:
        """Add the averaged model's accuracy and loss, when configured."""
        if self.cfg.average_model and not self.server_only:
            acc, loss = self.models(mean.reshape(1, -1).float())
            evaluation.avg_model_acc, evaluation.avg_model_loss = float(acc[0]), float(loss[0])


@dataclass
class Evaluation:
    """Test metrics of the evaluated nodes of one round."""

    nodes: np.ndarray
    acc: np.ndarray
    loss: np.ndarray
    samples: int
    consensus_distance: float | None = None
    avg_model_acc: float | None = None
    avg_model_loss: float | None = None
    topology: dict | None = None     # the round graph's label, degrees and spectral gap


@dataclass
class RoundReport:
    """What an engine knows after a round: per-node figures aligned with ``nodes``."""

    rnd: int
    nodes: np.ndarray                 # node ids reported (nodes of failed workers are absent)
    train_loss: np.ndarray
    bytes_sent: np.ndarray            # cumulative, exact wire sizes
    header_bytes: np.ndarray          # the header part of bytes_sent
    wall_time_s: float                # training + communication time so far (no evaluation)
    sim_time_s: float | None = None   # virtual-clock time (sim with network emulation)
    evaluation: Evaluation | None = None
    eval_time_s: float = 0.0
    node_metrics: dict[str, np.ndarray] = field(default_factory=dict)  # further per-node figures

    def node_figures(self, i: int) -> dict[str, Any]:
        """Training loss, traffic and further figures of the node at position ``i``."""
        return {"train_loss": float(self.train_loss[i]), "bytes_sent": int(self.bytes_sent[i]),
                **{name: values[i].item() for name, values in self.node_metrics.items()}}


def round_record(report: RoundReport) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """The ``rounds.jsonl`` record and the ``nodes.jsonl`` rows (evaluated nodes) of a round."""
    ev = report.evaluation
    record: dict[str, Any] = {
        "round": report.rnd, "wall_time_s": report.wall_time_s, "sim_time_s": report.sim_time_s,
        "bytes_sent_per_node": float(report.bytes_sent.mean()) if len(report.nodes) else None,
        "bytes_sent_per_node_max": int(report.bytes_sent.max()) if len(report.nodes) else None,
        "header_bytes_per_node": float(report.header_bytes.mean()) if len(report.nodes) else None,
        **_describe(report.train_loss, "train_loss"),
    }
    for name, values in report.node_metrics.items():
        record[f"{name}_per_node"] = float(np.mean(values)) if len(values) else None
    if "epsilon" in report.node_metrics:   # DP: nodes that hold no data (a server) report NaN
        spent = report.node_metrics["epsilon"][~np.isnan(report.node_metrics["epsilon"])]
        record["epsilon_per_node"] = float(spent.mean()) if len(spent) else None
        record["epsilon_max"] = float(spent.max()) if len(spent) else None
    if "bytes_uncompressed" in report.node_metrics and report.bytes_sent.sum():
        record["compression_ratio"] = float(report.node_metrics["bytes_uncompressed"].sum() / report.bytes_sent.sum())
    rows: list[dict[str, Any]] = []
    if ev is not None:
        record.update(**_describe(ev.acc, "test_acc"), **_describe(ev.loss, "test_loss"),
                      consensus_distance=ev.consensus_distance, eval_nodes=len(ev.nodes),
                      eval_samples=ev.samples)
        scored = np.isfinite(np.asarray(ev.acc, dtype=np.float64))
        if scored.any():
            record["test_acc_worst_node"] = int(ev.nodes[scored][np.argmin(np.asarray(ev.acc)[scored])])
        if ev.avg_model_acc is not None:
            record.update(avg_model_acc=ev.avg_model_acc, avg_model_loss=ev.avg_model_loss)
        if ev.topology:
            record.update(ev.topology)
        position = {int(node): i for i, node in enumerate(report.nodes)}
        for node, acc, loss in zip(ev.nodes, ev.acc, ev.loss):
            i = position.get(int(node))
            row = {"round": report.rnd, "node": int(node), "test_acc": float(acc), "test_loss": float(loss)}
            if i is not None:
                row.update(report.node_figures(i), header_bytes=int(report.header_bytes[i]))
            rows.append(row)
    record["eval_time_s"] = report.eval_time_s
    return record, rows


def _describe(values: np.ndarray, prefix: str) -> dict[str, float | None]:
    values = np.asarray(values, dtype=np.float64)
    values = values[np.isfinite(values)]     # nodes that did not train this round report NaN
    if len(values) == 0:
        return {f"{prefix}_{stat}": None for stat in ("mean", "min", "max", "std")}
    return metrics.describe(torch.as_tensor(np.asarray(values, dtype=np.float64)), prefix)
