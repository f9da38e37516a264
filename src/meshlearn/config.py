"""Experiment configuration: a TOML file validated with pydantic before any work starts.

Every section is a small model with ``extra="forbid"`` so a misspelt key fails at once,
and cross-field checks (graph degree vs node count, dataset files present...) run in
``ExperimentConfig``'s validators, with messages that name the key and the fix.
"""

from __future__ import annotations

import copy
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from meshlearn import plugins

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

__all__ = [
    "ConfigError",
    "ExperimentConfig",
    "load_config",
    "parse_config",
    "apply_overrides",
]


class ConfigError(ValueError):
    """The experiment description is invalid; the message says which key and how to fix it."""


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


# the defaults old configs wrote for keys now in a module's options table, whatever the module
_OLD_DEFAULTS = {"alpha": 0.5, "shards_per_node": 2, "degree": 4, "momentum": 0.0, "nesterov": False,
                 "weight_decay": 0.0, "betas": [0.9, 0.999], "eps": 1e-8}


def _move_legacy(section: type[BaseModel], raw: Any, keys: tuple[str, ...], family_name: str,
                 name_field: str) -> Any:
    """Old configs gave a module's options as keys of their section; they now live in one
    table, where they are checked. An old key the named module does not take is dropped when
    it holds the old default (resolved old configs listed every key), and otherwise moved and
    refused there, naming it. A key given both ways is refused rather than one silently winning."""
    if not isinstance(raw, dict) or not any(key in raw for key in keys):
        return raw
    raw = dict(raw)
    into = plugins.family(family_name).options_key.rpartition(".")[2]
    name = raw.get(name_field, section.model_fields[name_field].default)
    try:
        accepted = {o.name for o in plugins.options_of(family_name, plugins.resolve(
            family_name, plugins.absolute_spec(name)))}
    except ValueError:   # not a generator ('file', 'epidemic'), or not loadable (reported later)
        accepted = set()
    table = raw.get(into)
    moved = dict(table) if isinstance(table, dict) else {}
    for key in keys:
        if key not in raw:
            continue
        value = raw.pop(key)
        old_default = _OLD_DEFAULTS.get(key, object())
        if value is None or key not in accepted and (list(value) if isinstance(value, tuple) else value) == old_default:
            continue
        if key in moved and moved[key] != value:
            raise ValueError(f"{key} is given twice, as {key} = {value!r} and {into}.{key} = {moved[key]!r}: "
                             f"keep only {into}.{key}")
        moved[key] = value
    raw[into] = moved
    return raw


_PUSHED = ("epidemic", "peer_sampling")   # topology kinds whose nodes push to `peers` nodes they pick each round
_GENERATED_ELSEWHERE = ("file", *_PUSHED)   # topology kinds that are not graph generators


def _resolve_module(section: BaseModel, family_name: str, name_field: str, options_field: str) -> None:
    """Record the implementation a section names as every process can load it (``plugins.locate``)
    and its options checked against its signature, defaults filled in."""
    name = plugins.locate(family_name, getattr(section, name_field))
    object.__setattr__(section, name_field, name)
    object.__setattr__(section, options_field, plugins.check_options(
        family_name, name, getattr(section, options_field), plugins.family(family_name).options_key))


class _Module(_Section):
    """A section naming one implementation of a module family (``name``: a built-in name or
    an import path) and its ``options``, checked against the implementation's signature."""

    FAMILY: ClassVar[str]
    LEGACY: ClassVar[tuple[str, ...]] = ()   # options that old configs wrote as keys of the section

    name: str
    options: dict[str, Any] = Field(default_factory=dict, description="keyword arguments of the implementation")

    @model_validator(mode="before")
    @classmethod
    def _legacy_options(cls, raw: Any) -> Any:
        return _move_legacy(cls, raw, cls.LEGACY, cls.FAMILY, "name")

    @model_validator(mode="after")
    def _check_options(self) -> "_Module":
        _resolve_module(self, self.FAMILY, "name", "options")
        return self

    def implementation(self) -> Any:
        """The class (or function) that ``name`` refers to."""
        return plugins.resolve(self.FAMILY, self.name)


class DataConfig(_Section):
    dataset: str = Field("digits", description="built-in dataset name or import path of a loader function")
    root: str | None = Field(None, description="folder with the dataset files (default: the loader's search path)")
    options: dict[str, Any] = Field(default_factory=dict, description="keyword arguments of the loader "
                                    "(and limit_train / limit_test: keep the first k samples)")
    partition: str = Field("dirichlet", description="built-in partitioner name or import path")
    partition_options: dict[str, Any] = Field(default_factory=dict, description="keyword arguments of the "
                                              "partitioner")
    min_samples: int = Field(1, ge=1, description="fewest training samples any node may get")
    cache: bool = Field(True, description="keep parsed data sets in the user cache folder ($MESHLEARN_CACHE, "
                        "~/.cache/meshlearn) and memory-map them while their files are unchanged")

    @model_validator(mode="before")
    @classmethod
    def _legacy_options(cls, raw: Any) -> Any:
        return _move_legacy(cls, raw, ("alpha", "shards_per_node"), "partitioner", "partition")

    @model_validator(mode="after")
    def _check_options(self) -> "DataConfig":
        from meshlearn.data import datasets

        object.__setattr__(self, "dataset", plugins.locate("dataset", self.dataset))
        object.__setattr__(self, "options", datasets.check_options(self.dataset, self.options))
        _resolve_module(self, "partitioner", "partition", "partition_options")
        return self


class GraphConfig(_Section):
    """One communication graph: a generator (``kind``) and its ``options``, or a file, and the weights."""

    kind: str = Field("regular", description="built-in generator name, import path, 'file', 'epidemic' or "
                      "'peer_sampling'")
    options: dict[str, Any] = Field(default_factory=dict, description="keyword arguments of the generator")
    path: str | None = Field(None, description="edge-list or adjacency-list file (kind = 'file')")
    weights: Literal["metropolis_hastings", "uniform", "max_degree"] = Field(
        "metropolis_hastings", description="gossip mixing weights of the graph's links")
    dynamic: bool = Field(False, description="re-draw the (random) graph every round from (seed, round)")
    peers: int | None = Field(None, ge=1, description="kind = 'epidemic' or 'peer_sampling': nodes each node "
                              "pushes to per round")

    @model_validator(mode="before")
    @classmethod
    def _legacy_options(cls, raw: Any) -> Any:
        return _move_legacy(cls, raw, ("degree", "p", "k", "rows"), "topology", "kind")

    @model_validator(mode="after")
    def _check_options(self) -> "GraphConfig":
        if self.kind == "peer_sampling":   # the options of the protocol (its view size...)
            from meshlearn.topology.peer_sampling import PeerSampling

            object.__setattr__(self, "options", plugins.check_options(
                "topology", self.kind, self.options, "topology.options", obj=PeerSampling))
            return self
        if self.kind in _GENERATED_ELSEWHERE:
            if self.options:
                raise ValueError(f"topology.options apply to graph generators, not kind = {self.kind!r}; remove "
                                 f"{', '.join('topology.options.' + k for k in self.options)}")
            return self
        _resolve_module(self, "topology", "kind", "options")
        return self

    def check(self, nodes: int, where: str = "topology") -> None:
        """Reject impossible settings, naming the key."""
        from meshlearn import topology

        if self.kind in _PUSHED:
            if self.peers is None or not 1 <= self.peers < nodes:
                raise ValueError(f"{where}.kind = {self.kind!r} needs {where}.peers in 1..nodes-1 "
                                 f"(nodes each node pushes its model to per round), got {self.peers}")
        if self.kind == "peer_sampling":
            from meshlearn.topology.peer_sampling import PeerSampling

            if where != "topology":
                raise ValueError(f"{where}.kind = 'peer_sampling' keeps views from round 1 on: use it as "
                                 "topology.kind, not in a later phase")
            PeerSampling(nodes, 0, **self.options)   # checks the view size against the nodes
            if self.peers > self.options["view_size"]:
                raise ValueError(f"{where}.peers = {self.peers} is more than a view holds "
                                 f"(topology.options.view_size = {self.options['view_size']}); lower it")
        elif self.kind == "file":
            if self.dynamic:
                raise ValueError(f"{where}.dynamic = true needs a random generator, not a file; "
                                 f"set {where}.kind to e.g. 'regular'")
            if not self.path:
                raise ValueError(f"{where}.kind = 'file' needs {where}.path = '<edge or adjacency list>'")
            if not Path(self.path).is_file():
                raise ValueError(f"{where}.path = {self.path!r} does not exist; "
                                 "write one with 'meshlearn topology generate ... -o FILE'")
        elif self.kind in topology.TOPOLOGIES:
            try:
                topology.check_params(self.kind, nodes, **self.options)
            except ValueError as exc:
                raise ValueError(str(exc).replace("topology.", f"{where}.")) from None
        if self.peers is not None and self.kind not in _PUSHED:
            raise ValueError(f"{where}.peers applies to {where}.kind = 'epidemic' or 'peer_sampling'; remove it")


class TopologyPhase(GraphConfig):
    """A ``[[topology.schedule]]`` entry: the graph used from round ``from_round`` on."""

    from_round: int = Field(ge=2, description="first round of this phase (round 1 uses [topology])")


class TopologyConfig(GraphConfig):
    schedule: list[TopologyPhase] = Field(default_factory=list, description="graphs that take over later")
    final_average: bool = Field(False, description="average all models globally in the last round")

    @property
    def static(self) -> bool:
        """Every round uses the same graph (no schedule, re-drawing, final average or pushes)."""
        return not (self.schedule or self.dynamic or self.final_average or self.kind in _PUSHED)


class ModelConfig(_Module):
    FAMILY = "model"

    name: str = Field("mlp", description="built-in model name or import path of an nn.Module class")
    same_init: bool = Field(True, description="all nodes start from the same initial model")


class TrainingConfig(_Section):
    local_steps: int | None = Field(10, ge=1, description="local SGD steps per round (or set local_epochs)")
    local_epochs: float | None = Field(None, gt=0, description="passes over the node's data per round, rounded "
                                       "up to whole steps (instead of local_steps)")
    batch_size: int = Field(16, ge=1, description="samples per local step")
    lr: float = Field(0.05, gt=0, description="learning rate of the local optimizer")
    optimizer: str = Field("sgd", description="built-in optimizer name or import path")
    optimizer_options: dict[str, Any] = Field(default_factory=dict, description="keyword arguments of the "
                                              "optimizer (momentum, betas...)")

    @model_validator(mode="before")
    @classmethod
    def _legacy_options(cls, raw: Any) -> Any:
        return _move_legacy(cls, raw, ("momentum", "nesterov", "weight_decay", "betas", "eps"), "optimizer",
                            "optimizer")

    @model_validator(mode="after")
    def _one_budget(self) -> "TrainingConfig":
        if self.local_epochs is not None:
            if "local_steps" in self.model_fields_set and self.local_steps is not None:
                raise ValueError("set only one of training.local_steps and training.local_epochs")
            object.__setattr__(self, "local_steps", None)
        if self.local_steps is None and self.local_epochs is None:
            raise ValueError("set training.local_steps or training.local_epochs")
        _resolve_module(self, "optimizer", "optimizer", "optimizer_options")
        try:   # cross-option rules live in the constructor (it is cheap: no state yet)
            plugins.build("optimizer", self.optimizer, self.optimizer_options, lr=self.lr)
        except (ValueError, TypeError) as exc:
            raise ValueError(f"training.optimizer_options: {exc}") from None
        return self


class AlgorithmConfig(_Module):
    """What nodes do each round: D-PSGD, a federated server on a star, asynchronous gossip,
    or the user's own ``Algorithm`` subclass."""

    FAMILY = "algorithm"
    LEGACY = ("client_fraction", "server_lr", "server_momentum")

    name: str = Field("dpsgd", description="built-in algorithm name or import path of an Algorithm subclass")


class ComputeClassConfig(_Section):
    nodes: list[int] = Field(description="node ids in this class")
    factor: float = Field(gt=0, allow_inf_nan=False, description="their training time relative to the others "
                          "(5: five times slower)")


class ComputeConfig(_Section):
    """How long a node's local training takes (virtual seconds): heterogeneous compute.

    Each node gets a fixed speed drawn once from (seed, node); one local training of node i
    then takes ``mean_s`` × its factor: ``constant`` (all 1), ``uniform`` (1 ± spread),
    ``lognormal`` (σ = spread, mean 1) or ``exponential`` (mean 1, heavy stragglers), times
    the largest ``factor`` of the classes it is in. The asynchronous simulator always runs on
    these times; the round-based engines use them once they differ between nodes or a deadline
    is set (``emulated``).
    """

    distribution: Literal["constant", "uniform", "lognormal", "exponential"] = Field(
        "constant", description="how nodes' training times spread around mean_s")
    mean_s: float = Field(1.0, gt=0, description="mean virtual seconds of one local training")
    spread: float = Field(0.5, ge=0, description="uniform: ± share of the mean; lognormal: σ")
    classes: dict[str, ComputeClassConfig] = Field(default_factory=dict, description="per-node speed classes "
                                                   "(e.g. stragglers)")
    deadline_s: float | None = Field(None, gt=0, allow_inf_nan=False, description="round-based engines: a node "
                                     "whose training takes longer is late, and its messages of the round are "
                                     "dropped like lost ones (unset: everyone is waited for)")

    @property
    def emulated(self) -> bool:
        """Whether round-based engines charge these times (sim's clock) and make slow nodes slow (processes)."""
        return self.distribution != "constant" or bool(self.classes) or self.deadline_s is not None

    @model_validator(mode="after")
    def _spread(self) -> "ComputeConfig":
        if self.distribution == "uniform" and self.spread >= 1:
            raise ValueError(f"compute.spread = {self.spread} must be < 1 with distribution = 'uniform' "
                             "(step times must stay positive)")
        return self


class DPConfig(_Section):
    """Node-level differential privacy of local training (DP-SGD), ``[privacy.dp]``.

    Each local step clips every sample's gradient to ``clip_norm`` and adds Gaussian noise of
    std ``noise_multiplier × clip_norm``, so no single sample can move a node's model much;
    an accountant per node reports the (ε, δ) spent so far. The noise is either fixed
    (``noise_multiplier``) or solved per node so that it spends ``target_epsilon`` by the
    last round (nodes with more data need less noise for the same ε).
    """

    clip_norm: float = Field(1.0, gt=0, description="C: largest L2 norm of one sample's gradient")
    noise_multiplier: float | None = Field(None, ge=0, description="σ: noise std in units of clip_norm "
                                           "(0: clipping only, ε = ∞)")
    target_epsilon: float | None = Field(None, gt=0, description="ε each node reaches after all rounds "
                                         "(σ solved per node from its sample rate and local steps)")
    delta: float = Field(1e-5, gt=0, lt=1, description="δ of the reported (ε, δ); keep it below 1 / samples")
    accountant: Literal["rdp", "prv"] = Field("rdp", description="Opacus accountant: rdp (Rényi DP, fast) or "
                                              "prv (numerical composition: tighter ε, slower)")

    @model_validator(mode="after")
    def _one_noise_setting(self) -> "DPConfig":
        if (self.noise_multiplier is None) == (self.target_epsilon is None):
            raise ValueError("set exactly one of privacy.dp.noise_multiplier (σ, a fixed noise level) and "
                             "privacy.dp.target_epsilon (σ solved per node to end the run at that ε)")
        return self


class SecAggConfig(_Section):
    """Secure aggregation among neighbours (``[privacy.secagg]``): pairwise-masked messages in
    fixed point, so a receiver learns only the weighted sum of its senders' models."""

    ring_bits: Literal[32, 64] = Field(32, description="messages are integers mod 2**ring_bits")
    fraction_bits: int | None = Field(None, ge=1, description="fixed-point scale 2**fraction_bits "
                                      "(default 16 for a 32-bit ring, 32 for 64)")


class PrivacyConfig(_Section):
    """Privacy mechanisms, each off unless its section is present."""

    dp: DPConfig | None = Field(None, description="differentially private local training (DP-SGD)")
    secagg: SecAggConfig | None = Field(None, description="secure aggregation among neighbours")


class SharingConfig(_Module):
    """What nodes send (``name``) and that scheme's ``options``; ``compression`` is a lossless
    stage every message goes through, whatever the scheme."""

    FAMILY = "sharing"
    LEGACY = ("fraction", "indices", "error_feedback", "gamma", "compressor", "method", "levels", "bits",
              "bucket_size")

    name: str = Field("full", description="built-in sharing scheme or import path of a Sharing subclass")
    compression: Literal["none", "zstd", "lz4", "elias", "fpzip", "elias-fpzip"] = Field(
        "none", description="lossless stage on every message (elias: sorted indices; fpzip: floats)")
    private: list[str] = Field(default_factory=list, description="fnmatch patterns over the model's parameter names "
                               "(its named_parameters(), e.g. 'net.2.*'): those parameters stay on their node, "
                               "never sent nor mixed")

    @model_validator(mode="after")
    def _scheme_builds(self) -> "SharingConfig":
        try:   # cross-option rules live in the constructor (it is cheap: no state yet)
            self.build(seed=0)
        except (ValueError, TypeError) as exc:
            raise ValueError(f"sharing.options: {exc}") from None
        if self.compression != "none":
            from meshlearn import wire

            try:
                wire.check_codec(self.compression)
            except ImportError as exc:
                raise ValueError(f"sharing.compression = {self.compression!r}: {exc}") from None
        return self

    def build(self, seed: int):
        return plugins.build("sharing", self.name, self.options, seed=seed)


class AggregationConfig(_Module):
    """How a node folds the models it received into its own (D-PSGD's mixing step): the
    weighted mean, or a robust rule that bounds what a faulty or Byzantine neighbour can do."""

    FAMILY = "aggregator"

    name: str = Field("mean", description="built-in rule (meshlearn list aggregator) or import path of an "
                      "Aggregator subclass")


class ByzantineConfig(_Section):
    """Byzantine nodes (``[byzantine]``): how many, where, and the ``attack`` they run.

    They train like everyone (on flipped labels for ``label_flip``) but send crafted models;
    they are left out of every accuracy and consensus figure.
    """

    count: int | None = Field(None, ge=0, description="number of Byzantine nodes")
    fraction: float | None = Field(None, ge=0, lt=1, description="share of the nodes that are Byzantine "
                                   "(rounded to the nearest count)")
    nodes: list[int] | None = Field(None, description="the Byzantine node ids (placement = 'given')")
    placement: Literal["random", "highest_degree", "given"] = Field(
        "random", description="random (drawn from the seed), highest_degree (best-connected nodes) or given (nodes)")
    attack: str = Field("sign_flip", description="built-in attack (meshlearn list attack) or import path of an "
                        "Attack subclass")
    options: dict[str, Any] = Field(default_factory=dict, description="keyword arguments of the attack")

    @model_validator(mode="after")
    def _one_choice(self) -> "ByzantineConfig":
        given = [key for key in ("count", "fraction", "nodes") if getattr(self, key) is not None]
        if len(given) != 1:
            raise ValueError("set exactly one of byzantine.count, byzantine.fraction and byzantine.nodes "
                             f"(got {', '.join(given) or 'none'})")
        if self.nodes is not None:
            if "placement" in self.model_fields_set and self.placement != "given":
                raise ValueError(f"byzantine.nodes gives the ids itself: remove byzantine.placement = "
                                 f"{self.placement!r} (or set it to 'given')")
            if len(set(self.nodes)) != len(self.nodes):
                raise ValueError(f"byzantine.nodes = {self.nodes} lists a node twice")
            object.__setattr__(self, "placement", "given")
        elif self.placement == "given":
            raise ValueError("byzantine.placement = 'given' needs byzantine.nodes = [ids]")
        _resolve_module(self, "attack", "attack", "options")
        try:   # cross-option rules live in the constructor
            plugins.build("attack", self.attack, self.options, seed=0)
        except (ValueError, TypeError) as exc:
            raise ValueError(f"byzantine.options: {exc}") from None
        return self

    def count_of(self, nodes: int) -> int:
        """How many of ``nodes`` nodes are Byzantine."""
        if self.nodes is not None:
            return len(self.nodes)
        return self.count if self.count is not None else int(round(self.fraction * nodes))

    def implementation(self) -> Any:
        return plugins.resolve("attack", self.attack)


class EvaluationConfig(_Section):
    every: int = Field(5, ge=1, description="evaluate every k rounds (and after the last)")
    nodes: int = Field(0, ge=0, description="evaluate this many sampled nodes; 0 = all")
    test_samples: int = Field(0, ge=0, description="use this many sampled test samples; 0 = all")
    batch_size: int = Field(1024, ge=1, description="test samples per forward pass")
    average_model: bool = Field(True, description="also test the average of all node models")
    local_test: float = Field(0.0, ge=0, lt=1, description="share of each node's own training samples held out "
                              "as its local test set (same label distribution as the node); 0 = none")
    validation: float = Field(0.0, ge=0, lt=1, description="share held out as a validation set, scored next to the "
                              "test set (val_acc, val_loss); 0 = none")
    validation_from: Literal["train", "test"] = Field(
        "train", description="train: each node's own training samples (its label distribution); test: the test set "
        "(one validation set for every node, out of the test samples)")
    stop_on_divergence: bool = Field(True, description="stop the run (status \"diverged\") once a node's model "
                                     "turns NaN or infinite; false: record the round and keep going")


class CheckpointConfig(_Section):
    every: int = Field(0, ge=0, description="checkpoint after every k-th round; 0 = by elapsed time (every_s)")
    every_s: float = Field(300.0, gt=0, description="with every = 0: checkpoint after the first round that ends "
                           "this many seconds after the last checkpoint")


class EngineConfig(_Section):
    name: Literal["sim", "processes", "ray"] = Field("sim", description="sim (vectorized, one process), "
                                                     "processes (workers over ZeroMQ/TCP) or ray (workers as actors)")
    batching: Literal["auto", "vmap", "loop"] = Field("auto", description="train nodes batched with vmap or in "
                                                      "a loop (auto: the model's batching attribute)")
    chunk_size: int = Field(0, ge=0, description="nodes trained per batched call; 0 = chosen per model")
    device: str = Field("cpu", pattern=r"^(auto|cpu|cuda(:[0-9]+)?)$",
                        description="sim and networked workers: where the stacked models, optimizer state, training "
                        "data, mixing and evaluation live: cpu, cuda (processes: worker k on GPU k mod count; ray: "
                        "each actor asks Ray for a GPU), cuda:K, or auto (cuda when this machine's torch has it)")
    threads: int | None = Field(None, ge=1, description="torch intra-op threads per process "
                                "(default: all cores for sim, cores / workers for processes)")
    workers: int = Field(2, ge=1, description="processes/ray: worker processes, each hosting nodes / workers nodes")
    host: str = Field("127.0.0.1", description="processes: address the workers bind to")
    timeout_s: float = Field(60.0, gt=0, description="processes/ray: how long a node waits for a round's "
                             "messages before going on without the missing neighbours")
    max_message_bytes: int = Field(1 << 30, ge=1024, description="larger incoming messages are rejected")
    secure: bool = Field(True, description="processes/ray: authenticate and encrypt every socket with CURVE "
                         "(libzmq), admit only the run's keys, and refuse a worker speaking for a node it does not "
                         "host; false only for trusted benchmarks")

    @model_validator(mode="after")
    def _host_is_local(self) -> "EngineConfig":
        """Workers bind to ``host``: it must be an address of this machine (tried, not parsed)."""
        if self.name == "processes":
            import socket

            try:
                with socket.socket(socket.AF_INET6 if ":" in self.host else socket.AF_INET) as probe:
                    probe.bind((self.host, 0))
            except OSError as exc:
                raise ValueError(f"engine.host = {self.host!r} is not an address of this machine ({exc.strerror}): "
                                 "use 127.0.0.1, 0.0.0.0 or one of its interfaces' addresses") from None
        return self


class LinkConfig(_Section):
    """Properties of a network link; unset values fall back to the enclosing section."""

    latency_ms: float | None = Field(None, ge=0, allow_inf_nan=False, description="one-way delay of every message")
    bandwidth_mbps: float | None = Field(None, gt=0, allow_inf_nan=False, description="link rate in Mbit/s "
                                         "(unset: unlimited)")
    loss: float | None = Field(None, ge=0, lt=1, description="probability that a message is lost")


class NodeClassConfig(LinkConfig):
    nodes: list[int] = Field(description="node ids in this class")


class NetworkConfig(_Section):
    """Network emulation, applied by the transport (processes, ray) and by a virtual clock (sim).

    A link i→j takes the defaults below, then the slowest values of the classes of i and j
    (highest latency and loss, lowest bandwidth), then its row in ``file`` if any.
    """

    latency_ms: float = Field(0.0, ge=0, allow_inf_nan=False, description="one-way delay of every message")
    bandwidth_mbps: float | None = Field(None, gt=0, allow_inf_nan=False, description="link rate in Mbit/s "
                                         "(unset: unlimited)")
    loss: float = Field(0.0, ge=0, lt=1, description="probability that a message is lost")
    classes: dict[str, NodeClassConfig] = Field(default_factory=dict, description="per-node link classes")
    file: str | None = Field(None, description="CSV of directed links: src,dst,latency_ms,bandwidth_mbps,loss")

    @property
    def enabled(self) -> bool:
        return bool(self.latency_ms or self.bandwidth_mbps or self.loss or self.classes or self.file)


class AvailabilityConfig(_Section):
    """When nodes are online (churn). An offline node neither trains nor sends, and its model and
    state stay as they were; its neighbours renormalize their weights over who is present, as
    when messages are lost. On its return it goes on from its own stale model, or first takes
    a neighbour's (``on_return``)."""

    model: Literal["always", "bernoulli", "sessions", "trace"] = Field(
        "always", description="always online; bernoulli (each round online with probability online_probability); "
        "sessions (alternating online/offline spells, geometric with means mean_online/mean_offline rounds); "
        "trace (offline periods from file)")
    online_probability: float = Field(0.8, gt=0, le=1, description="bernoulli: chance a node is online in a round")
    mean_online: float = Field(20.0, ge=1, allow_inf_nan=False, description="sessions: mean rounds of an online spell")
    mean_offline: float = Field(5.0, ge=1, allow_inf_nan=False, description="sessions: mean rounds of an offline spell")
    file: str | None = Field(None, description="trace: CSV of offline periods with the header "
                             "node,offline_from,online_from (online_from empty: never back)")
    unit: Literal["rounds", "seconds"] = Field("rounds", description="trace: unit of offline_from/online_from")
    round_s: float = Field(1.0, gt=0, allow_inf_nan=False, description="trace with unit = 'seconds': seconds one "
                           "round lasts (round r covers [(r-1)·round_s, r·round_s))")
    on_return: Literal["stale", "pull"] = Field("stale", description="a returning node goes on from its own stale "
                                                "model, or first pulls the model of a random online neighbour")

    @model_validator(mode="after")
    def _trace_file(self) -> "AvailabilityConfig":
        if self.model == "trace" and not self.file:
            raise ValueError("availability.model = 'trace' needs availability.file, a CSV with the header "
                             "node,offline_from,online_from")
        return self

    @property
    def enabled(self) -> bool:
        return self.model != "always"


class ExperimentConfig(_Section):
    name: str = Field("experiment", description="labels the run (default run directory runs/<name>-<time>)")
    seed: int = Field(0, ge=0, lt=1 << 63, description="seeds every random draw of the run (streams.py), "
                      "0 ≤ seed < 2⁶³")
    nodes: int = Field(16, ge=1, description="number of nodes")
    rounds: int = Field(20, ge=1, description="number of rounds")
    data: DataConfig = Field(default_factory=DataConfig)
    topology: TopologyConfig = Field(default_factory=TopologyConfig)
    model: ModelConfig = Field(default_factory=ModelConfig)
    training: TrainingConfig = Field(default_factory=TrainingConfig)
    algorithm: AlgorithmConfig = Field(default_factory=AlgorithmConfig)
    sharing: SharingConfig = Field(default_factory=SharingConfig)
    evaluation: EvaluationConfig = Field(default_factory=EvaluationConfig)
    engine: EngineConfig = Field(default_factory=EngineConfig)
    checkpoint: CheckpointConfig = Field(default_factory=CheckpointConfig, description="when a run saves the "
                                         "state `meshlearn resume` continues from (also when Ctrl-C or SIGTERM stops it)")
    network: NetworkConfig = Field(default_factory=NetworkConfig)
    availability: AvailabilityConfig = Field(default_factory=AvailabilityConfig)
    compute: ComputeConfig = Field(default_factory=ComputeConfig)
    privacy: PrivacyConfig = Field(default_factory=PrivacyConfig)
    aggregation: AggregationConfig = Field(default_factory=AggregationConfig)
    byzantine: ByzantineConfig | None = Field(None, description="Byzantine nodes and their attack "
                                              "(absent: every node is honest)")
    import_paths: list[str] = Field(default_factory=list, description="more folders importable by plug-ins, "
                                    "relative to the config file (its folder and the working directory always are)")

    @model_validator(mode="before")
    @classmethod
    def _importable(cls, raw: Any) -> Any:
        """Plug-ins named by import path must import while the sections are checked."""
        if isinstance(raw, dict) and isinstance(raw.get("import_paths"), list):
            raw = {**raw, "import_paths": [plugins.config_path(str(p)) for p in raw["import_paths"]]}
            plugins.add_import_paths(raw["import_paths"])
        return raw

    @model_validator(mode="after")
    def _cross_checks(self) -> "ExperimentConfig":
        topo = self.topology
        topo.check(self.nodes)
        starts = [phase.from_round for phase in topo.schedule]
        if len(set(starts)) != len(starts):
            raise ValueError(f"topology.schedule has two phases starting at the same round ({sorted(starts)}); "
                             "give each phase its own from_round")
        for k, phase in enumerate(topo.schedule):
            phase.check(self.nodes, f"topology.schedule[{k}]")
        for section, classes in (("compute", self.compute.classes), ("network", self.network.classes)):
            for name, cls in classes.items():
                bad = [node for node in cls.nodes if not 0 <= node < self.nodes]
                if bad:
                    raise ValueError(f"{section}.classes.{name}.nodes has ids {bad[:5]} outside 0..{self.nodes - 1}")
        # what the chosen modules need is known to their classes (subclasses inherit it)
        self.algorithm.implementation().check_config(self)
        self.sharing.implementation().check_config(self)
        if self.privacy.secagg is not None:
            from meshlearn.sharing import FullSharing

            # secure aggregation replaces the sharing scheme: a scheme of the user's own would be dropped
            if not self.algorithm.implementation().supports_secagg or self.sharing.implementation() is not FullSharing:
                raise ValueError("privacy.secagg masks whole models exchanged by D-PSGD: set algorithm.name = "
                                 "'dpsgd' and sharing.name = 'full', or remove [privacy.secagg]")
        self._check_robustness()
        self._check_private()
        self._check_availability()
        if self.network.file and not Path(self.network.file).is_file():
            raise ValueError(f"network.file = {self.network.file!r} does not exist; write a CSV with a "
                             "header src,dst,latency_ms,bandwidth_mbps,loss")
        if self.evaluation.nodes > self.nodes:
            raise ValueError(f"evaluation.nodes = {self.evaluation.nodes} exceeds nodes = {self.nodes}; "
                             "use 0 for all nodes")
        return self

    def _check_availability(self) -> None:
        """Churn changes each round's graph and weights: schemes that keep state about fixed
        neighbours cannot follow, and a pull on return needs the rounds' exchanges."""
        if not self.availability.enabled:
            return
        what = f"availability.model = {self.availability.model!r}"
        if self.availability.on_return == "pull" and self.algorithm.implementation().asynchronous:
            raise ValueError(f"availability.on_return = 'pull' applies to round-based algorithms; algorithm.name = "
                             f"{self.algorithm.name!r} is asynchronous: use on_return = 'stale'")
        if self.sharing.implementation().static_graph:
            raise ValueError(f"{what} changes every round's neighbours and weights, and sharing.name = "
                             f"{self.sharing.name!r} keeps state about fixed neighbours: use another sharing "
                             "scheme or availability.model = 'always'")
        if self.availability.model == "trace" and not Path(self.availability.file).is_file():
            raise ValueError(f"availability.file = {self.availability.file!r} does not exist; write a CSV with "
                             "the header node,offline_from,online_from")

    def _check_private(self) -> None:
        """Private parameters are withheld by the sharing scheme, so they need an algorithm that
        exchanges through it and nodes that send what the scheme encodes (the patterns are
        checked against the model in ``Experiment.build``)."""
        if not self.sharing.private:
            return
        what = f"sharing.private = {self.sharing.private}"
        if self.byzantine is not None:
            raise ValueError(f"{what} cannot go with [byzantine]: attacks craft whole models; remove one of them")
        algorithm = self.algorithm.implementation()
        if not algorithm.sends_through_sharing:
            raise ValueError(f"{what}: algorithm.name = {self.algorithm.name!r} exchanges models or updates "
                             "outside the sharing scheme, so it would send private parameters; use "
                             "algorithm.name = 'dpsgd' or 'fedavg', or remove sharing.private")

    def _check_robustness(self) -> None:
        """Robust aggregation and Byzantine nodes need whole models exchanged by a gossip
        algorithm; omniscient or per-receiver attacks need the simulator."""
        from meshlearn.sharing import DenseSharing

        rule = self.aggregation.implementation()
        byz = self.byzantine
        if rule.linear and byz is None:
            return
        what = f"aggregation.name = {self.aggregation.name!r}" if byz is None else "[byzantine]"
        if self.privacy.secagg is not None:
            raise ValueError(f"{what} reads each neighbour's model, but privacy.secagg hides individual models "
                             "(a receiver learns only their weighted sum): remove [privacy.secagg], or use "
                             "aggregation.name = 'mean' with no [byzantine]")
        algorithm = self.algorithm.implementation()
        if algorithm.server or algorithm.asynchronous:
            raise ValueError(f"{what} applies to gossip rounds among neighbours, not to algorithm.name = "
                             f"{self.algorithm.name!r}: use algorithm.name = 'dpsgd'")
        if not issubclass(self.sharing.implementation(), DenseSharing):
            raise ValueError(f"{what} needs messages that each carry a whole model: set sharing.name = 'full' "
                             f"or 'quantize' (a DenseSharing), not {self.sharing.name!r}")
        if byz is None:
            return
        count = byz.count_of(self.nodes)
        if byz.nodes is not None and any(not 0 <= node < self.nodes for node in byz.nodes):
            raise ValueError(f"byzantine.nodes = {byz.nodes} has ids outside 0..{self.nodes - 1}")
        if count >= self.nodes:
            raise ValueError(f"[byzantine] makes {count} of the {self.nodes} nodes Byzantine: leave at least one "
                             "honest node")
        attack = byz.implementation()
        attack.check_config(self)
        if (attack.omniscient or attack.per_receiver) and self.engine.name != "sim":
            reason = "reads every node's model and the whole graph" if attack.omniscient else \
                "sends each receiver its own message"
            elsewhere = [name for name, cls in plugins.family("attack").builtins().items()
                         if not (cls.omniscient or cls.per_receiver)]
            raise ValueError(f"byzantine.attack = {byz.attack!r} {reason}, which only the simulator offers: "
                             f"set engine.name = 'sim', or choose an attack every engine runs "
                             f"({', '.join(elsewhere)})")

    def check_data_available(self) -> None:
        """Fail early, naming data.dataset/data.root, when the dataset files are missing."""
        from meshlearn import data

        data.check_available(self.data.dataset, self.data.root)

    def to_toml_dict(self) -> dict[str, Any]:
        """Plain dict without None values (TOML has no null)."""
        return _drop_none(self.model_dump(mode="json"))


def parse_config(raw: dict[str, Any], *, check_files: bool = True,
                 folder: str | Path | None = None) -> ExperimentConfig:
    """Validate a config dict; raise ConfigError with one line per problem.

    ``folder`` is where the config file lives: ``"file.py:Name"`` plug-ins are relative to
    it, and it and the working directory are importable (for the rest of the process, and in
    the run's worker processes: ``plugins.import_folders``).
    """
    if not isinstance(raw, dict):
        raise ConfigError(f"a config is a table of sections, got {type(raw).__name__}")
    plugins.add_import_paths([*([folder] if folder is not None else []), Path.cwd()])
    try:
        with plugins.config_folder(folder):
            cfg = ExperimentConfig.model_validate(raw)
        if check_files:
            cfg.check_data_available()
    except ValidationError as exc:
        raise ConfigError(_format_validation_error(exc)) from None
    except (FileNotFoundError, ValueError) as exc:  # dataset unknown or its files missing
        raise ConfigError(str(exc)) from None
    return cfg


def load_config(path: str | Path, overrides: list[str] | None = None, *, check_files: bool = True,
                values: Mapping[str, Any] | None = None) -> ExperimentConfig:
    """Read a TOML experiment file, apply ``key=value`` overrides (and ``set_values``), and
    validate it."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {str(path)!r} not found")
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: not a text file (TOML is UTF-8 text); give an experiment config "
                          "such as examples/quickstart.toml") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML ({exc})") from None
    raw = set_values(apply_overrides(raw, overrides or []), values or {})
    return parse_config(raw, check_files=check_files, folder=path.resolve().parent)


def apply_overrides(raw: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply ``--set section.key=value`` overrides; values are parsed as TOML (else kept as text)."""
    values: dict[str, Any] = {}
    for item in overrides:
        key, sep, text = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--set {item!r}: expected key=value, e.g. --set training.lr=0.1")
        try:
            values[key.strip()] = tomllib.loads(f"v = {text}")["v"]
        except tomllib.TOMLDecodeError:
            values[key.strip()] = text
    return set_values(raw, values)


def set_values(raw: dict[str, Any], values: Mapping[str, Any]) -> dict[str, Any]:
    """A copy of the raw config with keys set: dotted paths (or ``section__key``), Python
    values used as given (None removes a key, so its default applies). Naming another
    implementation of a module (``sharing.name``, ``topology.kind``...) drops the options the
    config gave the previous one, which the new one would not take."""
    raw = copy.deepcopy(raw)
    for key, value in values.items():
        path = key.replace("__", ".")
        *parents, leaf = path.split(".")
        if not leaf or not all(parents):
            raise ConfigError(f"{key!r} is not a config key; write section.key (or section__key), e.g. training.lr")
        node = raw
        for part in parents:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise ConfigError(f"{key} = {value!r}: {part!r} is not a section")
            node = child
        if value is None:
            node.pop(leaf, None)
            continue
        options = _OPTIONS_OF_NAME.get(path)
        if options is not None and value != node.get(leaf, _default_name(path)):
            node.pop(options, None)
        node[leaf] = value
    return raw


# the options table that goes with each module-naming key of a section, e.g. sharing.name → options
_OPTIONS_OF_NAME = {f.key: f.options_key.rpartition(".")[2] for f in plugins.FAMILIES.values()
                    if f.key.count(".") == 1}


def _default_name(path: str) -> Any:
    section, _, leaf = path.partition(".")
    return getattr(ExperimentConfig.model_fields[section].default_factory(), leaf, None) \
        if section in ExperimentConfig.model_fields else None


def _format_validation_error(exc: ValidationError) -> str:
    lines = ["invalid experiment config:"]
    for err in exc.errors():
        loc = ".".join(str(part) for part in err["loc"])
        msg = err["msg"].removeprefix("Value error, ")
        if err["type"] == "extra_forbidden":
            msg = "unknown key; check its spelling against the documented keys (meshlearn run --help)"
        elif err["type"] == "missing":
            msg = "required key is missing"
        lines.append(f"  {loc}: {msg}" if loc else f"  {msg}")
    return "\n".join(lines)


def _drop_none(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _drop_none(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [_drop_none(v) for v in value]
    return value
