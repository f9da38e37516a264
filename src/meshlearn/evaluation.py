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


_DEVICE_EVAL_SAMPLES = 1 << 14
"""On an accelerator, models × test samples evaluated at once (16 models on batches of 1024)."""


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
        tests = np.arange(len(ds.y_test))
        self.validation: tuple[torch.Tensor, torch.Tensor] | None = None   # validation_from = "test": the shared set
        if cfg.validation > 0 and cfg.validation_from == "test":
            held = np.zeros(len(tests), dtype=bool)
            held[streams.generator(seed, Stream.VALIDATION).choice(len(tests), max(1, round(cfg.validation *
                                                                                          len(tests))), replace=False)] = True
            self.validation = _on(experiment.device, ds.x_test[held], ds.y_test[held])
            tests = tests[~held]
        m = len(tests)
        if 0 < cfg.test_samples < m:
            tests = tests[np.sort(test_rng.choice(m, cfg.test_samples, replace=False))]
        self.x, self.y = _on(experiment.device, ds.x_test[tests], ds.y_test[tests])
        self.experiment = experiment
        self.model = copy.deepcopy(experiment.model).to("meta")
        self.cfg = cfg
        self._own_samples: dict[tuple[str, int], tuple[torch.Tensor, torch.Tensor] | None] = {}   # held-out sets

    def due(self, rnd: int) -> bool:
        """Round 0 (the initial models), every ``evaluation.every`` rounds, and the last round."""
        return rnd % self.cfg.every == 0 or rnd == self.experiment.config.rounds

    def models(self, params: torch.Tensor, samples: tuple[torch.Tensor, torch.Tensor] | None = None
               ) -> tuple[torch.Tensor, torch.Tensor]:
        """(accuracy, loss) of each row of ``params`` on the test sample (or ``samples``)."""
        exp = self.experiment
        x, y = samples or (self.x, self.y)
        if len(params) > 1 and all(torch.equal(row, params[0]) for row in params[1:]):
            # one model for all (round 0 with model.same_init): evaluated once
            acc, loss = self.models(params[:1], samples)
            return acc.expand(len(params)).clone(), loss.expand(len(params)).clone()
        # a GPU trains hundreds of nodes per call, but their activations on a whole test batch would not fit
        chunk = exp.chunk_size if exp.device.type == "cpu" else max(1, _DEVICE_EVAL_SAMPLES // self.cfg.batch_size)
        return metrics.evaluate_models(self.model, exp.layout, params, x, y,
                                       batch_size=self.cfg.batch_size, chunk_size=chunk,
                                       batched=exp.batching == "vmap", task=exp.task)

    def local(self, ids: torch.Tensor, params: torch.Tensor) -> "Evaluation":
        """Evaluate the sampled nodes among ``ids`` (rows of ``params``)."""
        wanted = np.isin(ids.numpy(), self.node_ids)
        rows = torch.from_numpy(np.flatnonzero(wanted))
        acc, loss = self.models(params[rows]) if len(rows) else (torch.empty(0), torch.empty(0))
        evaluation = Evaluation(ids.numpy()[wanted].copy(), acc.numpy(), loss.numpy(), len(self.y),
                                metric=self.experiment.task.metric)
        if self.cfg.local_test > 0 and self.server_only:
            # the server's model is every client's: score it on each client's own data
            clients = np.arange(1, self.experiment.num_nodes) if len(rows) else np.empty(0, dtype=np.int64)
            evaluation.local_nodes = clients
            evaluation.local_acc, evaluation.local_loss = self.own(clients, params[rows].expand(len(clients), -1))
        elif self.cfg.local_test > 0:
            evaluation.local_acc, evaluation.local_loss = self.own(evaluation.nodes, params[rows])
        if self.validation is not None:
            acc, loss = self.models(params[rows], self.validation) if len(rows) else (torch.empty(0), torch.empty(0))
            evaluation.val_acc, evaluation.val_loss = acc.numpy(), loss.numpy()
        elif self.cfg.validation > 0:
            evaluation.val_acc, evaluation.val_loss = self.own(evaluation.nodes, params[rows], "validation")
        return evaluation

    def own(self, nodes: np.ndarray, params: torch.Tensor, kind: str = "local test") -> tuple[np.ndarray, np.ndarray]:
        """(accuracy, loss) of each node's model (row of ``params``) on the node's own local test
        set (``kind = "validation"``: its validation set): how well it serves its own data
        distribution. NaN for a node without one."""
        acc = np.full(len(nodes), np.nan, dtype=np.float32)
        loss = np.full(len(nodes), np.nan, dtype=np.float32)
        exp = self.experiment
        for i, node in enumerate(nodes.tolist()):
            samples = self._samples_of(node, kind)
            if samples is None:
                continue
            node_acc, node_loss = metrics.evaluate_models(self.model, exp.layout, params[i:i + 1], *samples,
                                                          batch_size=self.cfg.batch_size, chunk_size=1,
                                                          batched=exp.batching == "vmap", task=exp.task)
            acc[i], loss[i] = float(node_acc[0]), float(node_loss[0])
        return acc, loss

    def _samples_of(self, node: int, kind: str) -> tuple[torch.Tensor, torch.Tensor] | None:
        """A node's held-out samples; a server's validation set is its clients' together."""
        if (kind, node) not in self._own_samples:
            exp = self.experiment
            sets = exp.local_tests if kind == "local test" else exp.validations
            idx = np.concatenate(sets) if self.server_only and kind == "validation" else \
                sets[node] if node < len(sets) else np.zeros(0, dtype=np.int64)
            ds = exp.dataset
            self._own_samples[kind, node] = _on(exp.device, ds.x_train[idx], ds.y_train[idx]) if len(idx) else None
        return self._own_samples[kind, node]

    def average(self, evaluation: "Evaluation", mean: torch.Tensor) -> None:
        """Add the averaged model's accuracy and loss, when configured."""
        if self.cfg.average_model and not self.server_only:
            acc, loss = self.models(mean.reshape(1, -1).float().to(self.x.device))
            evaluation.avg_model_acc, evaluation.avg_model_loss = float(acc[0]), float(loss[0])


def _on(device: torch.device, x: np.ndarray, y: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    """Samples as tensors where the models are evaluated."""
    return torch.from_numpy(x).to(device), torch.from_numpy(y).to(device)


@dataclass
class Evaluation:
    """Test metrics of the evaluated nodes of one round. ``acc``, ``val_acc``, ``local_acc`` and
    ``avg_model_acc`` hold the task's metric, which records name by ``metric`` (test_acc_mean,
    or test_rmse_mean for regression)."""

    nodes: np.ndarray
    acc: np.ndarray
    loss: np.ndarray
    samples: int
    metric: str = "acc"
    consensus_distance: float | None = None
    avg_model_acc: float | None = None
    avg_model_loss: float | None = None
    topology: dict | None = None     # the round graph's label, degrees and spectral gap
    local_acc: np.ndarray | None = None    # each node on its own local test set (NaN: it has none);
    local_loss: np.ndarray | None = None   # None unless evaluation.local_test > 0
    local_nodes: np.ndarray | None = None  # whom local_acc is about when not ``nodes`` (a server's clients)
    val_acc: np.ndarray | None = None      # each evaluated node on the validation set (its own, or the shared);
    val_loss: np.ndarray | None = None     # None unless evaluation.validation > 0

    @property
    def locally_scored(self) -> np.ndarray:
        """The nodes ``local_acc`` and ``local_loss`` are aligned with."""
        return self.nodes if self.local_nodes is None else self.local_nodes


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
    if "online" in report.node_metrics:   # churn: how many nodes took part in this round
        record["online_nodes"] = int(np.sum(report.node_metrics["online"]))
    if "epsilon" in report.node_metrics:   # DP: nodes that hold no data (a server) report NaN
        spent = report.node_metrics["epsilon"][~np.isnan(report.node_metrics["epsilon"])]
        record["epsilon_per_node"] = float(spent.mean()) if len(spent) else None
        record["epsilon_max"] = float(spent.max()) if len(spent) else None
    if "bytes_uncompressed" in report.node_metrics and report.bytes_sent.sum():
        record["compression_ratio"] = float(report.node_metrics["bytes_uncompressed"].sum() / report.bytes_sent.sum())
    rows: list[dict[str, Any]] = []
    if ev is not None:
        m, worst = ev.metric, _worst(ev.metric)
        record.update(**_describe(ev.acc, f"test_{m}"), **_describe(ev.loss, "test_loss"),
                      consensus_distance=ev.consensus_distance, eval_nodes=len(ev.nodes),
                      eval_samples=ev.samples)
        scored = np.isfinite(np.asarray(ev.acc, dtype=np.float64))
        if scored.any():
            record[f"test_{m}_worst_node"] = int(ev.nodes[scored][worst(np.asarray(ev.acc)[scored])])
        if ev.avg_model_acc is not None:
            record.update({f"avg_model_{m}": ev.avg_model_acc, "avg_model_loss": ev.avg_model_loss})
        if ev.topology:
            record.update(ev.topology)
        if ev.local_acc is not None:
            record.update(_local_figures(ev))
        if ev.val_acc is not None:
            record.update(**_describe(ev.val_acc, f"val_{m}"), **_describe(ev.val_loss, "val_loss"))
        position = {int(node): i for i, node in enumerate(report.nodes)}
        by_node: dict[int, dict[str, Any]] = {}

        def row_of(node: int) -> dict[str, Any]:
            if node not in by_node:
                by_node[node] = {"round": report.rnd, "node": node}
                i = position.get(node)
                if i is not None:
                    by_node[node].update(report.node_figures(i), header_bytes=int(report.header_bytes[i]))
            return by_node[node]

        for node, acc, loss in zip(ev.nodes, ev.acc, ev.loss):
            row_of(int(node)).update({f"test_{m}": float(acc), "test_loss": float(loss)})
        if ev.val_acc is not None:
            for node, acc, loss in zip(ev.nodes, ev.val_acc, ev.val_loss):
                row_of(int(node)).update({f"val_{m}": float(acc), "val_loss": float(loss)})
        if ev.local_acc is not None:
            for node, acc, loss in zip(ev.locally_scored, ev.local_acc, ev.local_loss):
                row_of(int(node)).update({f"local_{m}": float(acc), "local_loss": float(loss)})
        rows = [by_node[node] for node in sorted(by_node)]
    record["eval_time_s"] = report.eval_time_s
    return record, rows


def _worst(metric: str):
    """argmin for accuracy, argmax for an error such as RMSE."""
    from meshlearn.tasks import by_metric

    return np.argmin if by_metric(metric).higher_is_better else np.argmax


def _local_figures(ev: Evaluation) -> dict[str, Any]:
    """Local-test figures over the evaluated nodes that have a local test set: mean, min (max
    for an error), the mean of the worst 10 % (at least one node; a tail the mean hides), and
    the worst node."""
    m, worst = f"local_{ev.metric}", _worst(ev.metric)
    acc = np.asarray(ev.local_acc, dtype=np.float64)
    loss = np.asarray(ev.local_loss, dtype=np.float64)
    scored = np.isfinite(acc)
    extreme = "min" if worst is np.argmin else "max"
    out: dict[str, Any] = {f"{m}_mean": None, f"{m}_{extreme}": None, f"{m}_p10": None,
                           f"{m}_worst_node": None, "local_loss_mean": None, "local_nodes": int(scored.sum())}
    if scored.any():
        values, losses = acc[scored], loss[scored]
        tail = np.sort(values)[:max(1, len(values) // 10)] if worst is np.argmin else \
            np.sort(values)[::-1][:max(1, len(values) // 10)]
        out.update({f"{m}_mean": float(values.mean()), f"{m}_{extreme}": float(values[worst(values)]),
                    f"{m}_p10": float(tail.mean()),
                    f"{m}_worst_node": int(np.asarray(ev.locally_scored)[scored][worst(values)]),
                    "local_loss_mean": float(losses[np.isfinite(losses)].mean()) if np.isfinite(losses).any()
                    else None})
    return out


def _describe(values: np.ndarray, prefix: str) -> dict[str, float | None]:
    values = np.asarray(values, dtype=np.float64)
    values = values[np.isfinite(values)]     # nodes that did not train this round report NaN
    if len(values) == 0:
        return {f"{prefix}_{stat}": None for stat in ("mean", "min", "max", "std")}
    return metrics.describe(torch.as_tensor(np.asarray(values, dtype=np.float64)), prefix)
