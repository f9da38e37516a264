"""Everything an engine needs, built once from a validated config.

Loading data, partitioning it, drawing the topology, and instantiating the model are
independent of how nodes are executed, so every engine starts from an ``Experiment``.
Problems only visible after loading (a partition that leaves a node without data) are
raised here as ``ConfigError``, before any training.
"""

from __future__ import annotations

import copy
import functools
import os
from collections.abc import Callable
from dataclasses import dataclass, field

import networkx as nx
import numpy as np
import scipy.sparse as sp
import torch
from torch import nn

from meshlearn import algorithms, data, models, plugins, streams, topology
from meshlearn.byzantine.placement import byzantine_nodes
from meshlearn.config import ConfigError, ExperimentConfig
from meshlearn.nodes import NodeBatch, ParamLayout
from meshlearn.dynamics import Availability, late, training_times
from meshlearn.topology.schedule import TopologySchedule
from meshlearn.streams import Stream
from meshlearn.tasks import TASKS, Task
from meshlearn.training import LocalTrainer, default_batching

__all__ = ["Experiment"]


@dataclass
class Experiment:
    config: ExperimentConfig
    dataset: data.Dataset
    parts: list[np.ndarray]           # training-sample indices of each node
    graph: nx.Graph                   # round 1's graph (undirected view)
    mixing: sp.csr_matrix             # round 1's N×N mixing matrix W (float64)
    topology: TopologySchedule        # the graph of every round
    model: nn.Module                  # template: structure and the shared initial weights
    layout: ParamLayout
    batching: str
    chunk_size: int
    byzantine: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))  # sorted ids
    local_tests: list[np.ndarray] = field(default_factory=list)   # each node's held-out samples (x_train rows)
    validations: list[np.ndarray] = field(default_factory=list)   # validation_from = "train": each node's (x_train rows)
    availability: Availability | None = None   # who is online each round (None: everyone, always)
    training_times: np.ndarray | None = None   # round-based engines: each node's virtual seconds per training
    device: torch.device = torch.device("cpu")   # where the hosted models, their state and the data live

    @classmethod
    def build(cls, cfg: ExperimentConfig) -> "Experiment":
        try:  # loaders, partitioners and graph builders report bad settings as ValueError
            dataset = data.load(cfg.data.dataset, cfg.data.root, cache=cfg.data.cache, **cfg.data.options)
            if len(dataset.y_test) == 0:
                raise ValueError(f"data.dataset = {cfg.data.dataset!r} has no test samples; "
                                 "raise data.options.limit_test")
            server = cfg.algorithm.implementation().server   # node 0 serves and holds no data
            parts = data.partition(dataset.y_train, cfg.nodes - server, cfg.data.partition, cfg.seed,
                                   users=dataset.users_train, min_samples=cfg.data.min_samples,
                                   **cfg.data.partition_options)
            if cfg.training.batch_size > len(dataset.y_train):
                raise ValueError(f"training.batch_size = {cfg.training.batch_size} exceeds the {len(dataset.y_train)} "
                                 f"training samples of data.dataset = {cfg.data.dataset!r}: lower it")
            if server:
                parts = [np.zeros(0, dtype=np.int64), *parts]
            parts, local_tests = hold_out_local_tests(parts, cfg.evaluation.local_test, cfg.data.min_samples, cfg.seed)
            held = cfg.evaluation.validation if cfg.evaluation.validation_from == "train" else 0.0
            parts, validations = hold_out_local_tests(parts, held, cfg.data.min_samples, cfg.seed, Stream.VALIDATION)
            labels = functools.cache(lambda: _label_counts(dataset, parts))   # only a data-built overlay asks
            pushed = cfg.topology.kind in ("epidemic", "peer_sampling")   # no fixed graph to build
            schedule = TopologySchedule(cfg, None if pushed else _build_graph(cfg, labels), label_counts=labels)
            for phase in cfg.topology.schedule:   # build (and check) later phases' graphs before training
                schedule.graph(phase.from_round)
            first = schedule.graph(1)
            graph = nx.from_scipy_sparse_array(first.weights + first.weights.T)
            graph.remove_edges_from(nx.selfloop_edges(graph))
            availability = times = None
            if cfg.availability.enabled:
                availability = Availability(cfg.availability, cfg.nodes, cfg.seed, always_online=(0,) if server else ())
            if not cfg.algorithm.implementation().asynchronous:   # the asynchronous simulator applies both itself
                if cfg.compute.emulated:
                    times = training_times(cfg.compute, cfg.seed, cfg.nodes)
                schedule.set_dynamics(availability, late(cfg.compute, times) if times is not None else None)
        except (FileNotFoundError, ValueError) as exc:
            raise ConfigError(str(exc)) from None
        model, layout = _build_model(cfg, dataset)
        if cfg.byzantine is not None and dataset.task != "classification":
            from meshlearn.byzantine.attacks import Attack

            if plugins.resolve("attack", cfg.byzantine.attack).labels is not Attack.labels:
                raise ConfigError(f"byzantine.attack = {cfg.byzantine.attack!r} poisons class labels, which "
                                  f"data.dataset = {cfg.data.dataset!r} ({dataset.task}) does not have; "
                                  "choose an attack on the messages")
        device = _device(cfg)
        batching, chunk = default_batching(model, device)
        if cfg.engine.batching != "auto":
            batching = cfg.engine.batching
        experiment = cls(cfg, dataset, parts, graph, first.mixing(), schedule, model, layout, batching,
                         cfg.engine.chunk_size or chunk, byzantine_nodes(cfg, graph), local_tests, validations,
                         availability, times, device)
        if cfg.sharing.private:
            experiment.shared_columns()   # refuse patterns that do not fit the model before any training
        if cfg.engine.name != "sim":
            experiment.check_message_size()
        return experiment

    @property
    def num_nodes(self) -> int:
        return self.config.nodes

    @property
    def task(self) -> Task:
        """The data set's loss and metric (classification unless it says otherwise)."""
        return TASKS[self.dataset.task]

    def initial_params(self, node_ids: list[int]) -> torch.Tensor:
        """(B, P) starting models: one shared initialization, or one per node seeded by its id."""
        if self.config.model.same_init:
            return self.layout.flatten(self.model).repeat(len(node_ids), 1).to(self.device)
        rows = []
        with torch.random.fork_rng():  # leave the global generator as it was
            for node in node_ids:
                torch.manual_seed(streams.seed_of(self.config.seed, Stream.INITIAL_MODEL, node))
                rows.append(self.layout.flatten(_new_model(self.config, self.dataset)))
        return torch.stack(rows).to(self.device)

    def honest(self, node_ids) -> np.ndarray:
        """Which of ``node_ids`` are honest (a bool mask)."""
        return ~np.isin(np.asarray(node_ids), self.byzantine)

    def make_trainer(self, node_ids: list[int]) -> LocalTrainer:
        cfg = self.config
        labels = torch.from_numpy(self.dataset.y_train)
        attackers = [node for node in node_ids if node in set(self.byzantine.tolist())]
        if attackers:   # data poisoning: an attacker trains on the labels its attack chooses
            attack, labels = self.make_attack(), labels.clone()
            for node in attackers:
                idx = torch.from_numpy(self.parts[node])
                labels[idx] = attack.labels(labels[idx], self.dataset.num_classes).to(labels.dtype)
        return LocalTrainer(
            copy.deepcopy(self.model), self.layout, cfg.training,
            torch.from_numpy(self.dataset.x_train).to(self.device), labels.to(self.device),
            {node: self.parts[node] for node in node_ids}, cfg.seed,
            batching=self.batching, chunk_size=self.chunk_size, dp=cfg.privacy.dp, rounds=cfg.rounds,
            task=self.task,
        )

    def make_algorithm(self) -> algorithms.Algorithm:
        cfg = self.config
        if cfg.privacy.secagg is not None:
            from meshlearn.sharing.secure import SecureAggregation

            scheme = SecureAggregation(cfg.seed, cfg.privacy.secagg.ring_bits, cfg.privacy.secagg.fraction_bits)
        else:
            scheme = cfg.sharing.build(seed=cfg.seed)
            if not cfg.aggregation.implementation().linear:
                scheme.aggregator = plugins.build("aggregator", cfg.aggregation.name, cfg.aggregation.options,
                                                  rounds=cfg.rounds)
        if cfg.sharing.private:
            from meshlearn.sharing.private import PrivateParameters

            scheme = PrivateParameters(scheme, self.shared_columns())
        return plugins.build("algorithm", cfg.algorithm.name, cfg.algorithm.options, sharing=scheme)

    def shared_columns(self) -> torch.Tensor:
        """Columns of the flat parameters that nodes share: all but those ``sharing.private`` names."""
        from meshlearn.sharing.private import shared_columns

        try:
            return shared_columns(self.layout, self.config.sharing.private)
        except ValueError as exc:
            raise ConfigError(str(exc)) from None

    def check_message_size(self) -> None:
        """Refuse a run whose messages exceed ``engine.max_message_bytes``: every receiver
        would reject them, and nodes would only ever wait for their neighbours."""
        from meshlearn.engines.links import header_base_bytes, payload_bytes

        nodes = NodeBatch(torch.zeros(1, dtype=torch.int64), self.initial_params([0]))
        sharing = self.make_algorithm().sharing
        sharing.setup(nodes)
        try:
            payload = sharing.encode(nodes, 1)
        except NotImplementedError:   # secure aggregation: per-link masked models, one number per shared parameter
            shared = self.shared_columns() if self.config.sharing.private else slice(None)
            payload = {"params": nodes.params[:, shared]}
        size = int(payload_bytes(payload)[0]) + header_base_bytes("0" * 12, payload, self.config.rounds)
        limit = self.config.engine.max_message_bytes
        if size > limit:
            raise ConfigError(f"engine.max_message_bytes = {limit} is smaller than one message of this run "
                              f"(about {size} bytes: {self.layout.size:,} parameters with sharing.name = "
                              f"{self.config.sharing.name!r}); raise it to at least {size} or shrink the model")

    def make_attack(self):
        """The ``Attack`` the Byzantine nodes run (``[byzantine]`` must be set)."""
        byz = self.config.byzantine
        return plugins.build("attack", byz.attack, byz.options, seed=self.config.seed)


def hold_out_local_tests(parts: list[np.ndarray], share: float, min_samples: int, seed: int,
                         stream: Stream = Stream.LOCAL_TEST) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Split each node's samples into (training, local test) with the node's own ``stream``
    (a validation set: ``VALIDATION``), so the split depends only on the seed and the node,
    whatever the engine.

    The test set is a uniform draw from the node's samples, hence follows its label distribution.
    A node with m samples holds out round(m·share), at least 1 while m ≥ 2, but always keeps
    ``min_samples`` for training: a node too small for both gets an empty local test set.
    """
    if share <= 0:
        return parts, [np.zeros(0, dtype=np.int64) for _ in parts]
    train, tests = [], []
    for node, part in enumerate(parts):
        m = len(part)
        held = max(0, min(max(round(m * share), 1 if m >= 2 else 0), m - min_samples))
        chosen = np.zeros(m, dtype=bool)
        chosen[streams.generator(seed, stream, node).choice(m, held, replace=False)] = True
        train.append(part[~chosen])
        tests.append(np.sort(part[chosen]))
    return train, tests


def _build_graph(cfg: ExperimentConfig, label_counts: Callable[[], np.ndarray]) -> nx.Graph:
    """The first phase's fixed graph (a dynamic topology's round graphs are drawn per round);
    ``label_counts`` gives the nodes × classes counts the overlays built on the data read."""
    topo = cfg.topology
    if topo.kind == "file":
        try:
            graph = topology.read_graph(topo.path, nodes=cfg.nodes)
        except ValueError as exc:
            raise ValueError(f"topology.path = {topo.path!r}: {exc}") from None
    else:
        graph = topology.build(topo.kind, cfg.nodes, seed=cfg.seed, label_counts=label_counts, **topo.options)
    if cfg.nodes > 1 and not topo.dynamic and not topology.is_connected(graph):
        raise ValueError("the topology is not connected, so models can never reach consensus; "
                         "raise topology.options.degree / topology.options.p or fix the topology file")
    return graph


def _label_counts(dataset: data.Dataset, parts: list[np.ndarray]) -> np.ndarray:
    """Nodes × classes counts of training labels."""
    if dataset.task != "classification":
        raise ValueError(f"topology.kind builds the graph from label histograms, which data.dataset = "
                         f"{dataset.name!r} ({dataset.task}) does not have; choose another topology.kind")
    return np.stack([np.bincount(dataset.y_train[part], minlength=dataset.num_classes) for part in parts])


def _device(cfg: ExperimentConfig) -> torch.device:
    """``engine.device`` resolved on this machine. Accelerators hold the nodes of the
    synchronous simulator and of networked workers (``processes``: worker k on the machine's
    GPU k mod count; ``ray``: each actor on the GPU Ray gives it, so a Ray launcher without one
    keeps the CPU for itself and each actor checks its own); the event-driven engines and
    DP-SGD train on the CPU."""
    name = cfg.engine.device
    ray = cfg.engine.name == "ray"
    cpu_only = cfg.algorithm.implementation().asynchronous or cfg.privacy.dp is not None
    if name == "auto":   # Ray's GPUs are resources an actor asks for: only when told to
        name = "cuda" if torch.cuda.is_available() and not cpu_only and not ray else "cpu"
    if name == "cpu":
        return torch.device("cpu")
    if cpu_only:
        raise ConfigError(f"engine.device = {name!r} holds the nodes of synchronous algorithms without "
                          "privacy.dp; this run trains on the CPU: set engine.device = 'cpu' or 'auto'")
    if ray:
        if name != "cuda":
            raise ConfigError(f"engine.device = {name!r}: Ray chooses the GPU of each actor; set engine.device = 'cuda'")
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if not torch.cuda.is_available():
        raise ConfigError(f"engine.device = {name!r}, but this machine's torch has no CUDA device "
                          f"(torch {torch.__version__}): set engine.device = 'cpu' or 'auto'")
    device = torch.device(name)
    if device.index is not None and device.index >= torch.cuda.device_count():
        raise ConfigError(f"engine.device = {name!r}: this machine has {torch.cuda.device_count()} CUDA device(s), "
                          f"numbered from 0; choose one of them")
    return device


def _new_model(cfg: ExperimentConfig, dataset: data.Dataset) -> nn.Module:
    """The configured model, sized for the data set (weights from the global generator)."""
    return models.build(cfg.model.name, dataset.input_shape, dataset.num_classes, dataset.cardinalities,
                        **cfg.model.options)


def _build_model(cfg: ExperimentConfig, dataset: data.Dataset) -> tuple[nn.Module, ParamLayout]:
    """Build the model and try it on two samples, so a model that does not fit the data
    (wrong options, images into an LSTM...) fails before any training."""
    _check_model_fits_memory(cfg, dataset)
    with torch.random.fork_rng():   # seeded weights, and the caller's global generator left as it was
        torch.manual_seed(streams.seed_of(cfg.seed, Stream.INITIAL_MODEL))
        try:
            model = _new_model(cfg, dataset)
            layout = ParamLayout.of(model)
            with torch.no_grad():
                out = model(torch.from_numpy(dataset.x_train[:2]))
        except Exception as exc:  # any failure here means the settings do not fit together
            raise ConfigError(f"model.name = {cfg.model.name!r} with model.options = {cfg.model.options} does not "
                              f"run on data.dataset = {cfg.data.dataset!r} (input shape {dataset.input_shape}): "
                              f"{exc}") from None
    if tuple(out.shape) != (2, dataset.num_classes):
        raise ConfigError(f"model.name = {cfg.model.name!r} outputs shape {tuple(out.shape[1:])} per sample but "
                          f"data.dataset = {cfg.data.dataset!r} has {dataset.num_classes} "
                          f"{'classes' if dataset.task == 'classification' else 'outputs'}")
    return model, layout


def _check_model_fits_memory(cfg: ExperimentConfig, dataset: data.Dataset) -> None:
    """Refuse a model whose nodes' parameters alone (each node's row and one working copy, float32)
    exceed this machine's memory, counted on the meta device before any weight is allocated."""
    try:
        with torch.device("meta"):
            probe = _new_model(cfg, dataset)
        size = sum(p.numel() for p in probe.parameters())
    except Exception:   # a model that cannot be built on the meta device is checked by the real build
        return
    need = 2 * 4 * size * cfg.nodes
    memory = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    if need > memory:
        raise ConfigError(f"model.name = {cfg.model.name!r} with model.options = {cfg.model.options} has {size:,} "
                          f"parameters: {cfg.nodes} nodes need about {need / 2**30:.1f} GiB for their parameters "
                          f"alone, more than this machine's {memory / 2**30:.1f} GiB; use a smaller model or "
                          "fewer nodes")
