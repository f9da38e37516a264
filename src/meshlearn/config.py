"""Experiment configuration: a TOML file validated with pydantic before any work starts.

Every section is a small model with ``extra="forbid"`` so a misspelt key fails at once,
and cross-field checks (graph degree vs node count, dataset files present...) run in
``ExperimentConfig``'s validators, with messages that name the key and the fix.
"""

from __future__ import annotations

import copy
import sys
from pathlib import Path
from typing import Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

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


class DataConfig(_Section):
    dataset: str = "digits"
    root: str | None = Field(None, description="folder with the dataset files (default: the loader's search path)")
    partition: Literal["iid", "shards", "dirichlet", "natural"] = "dirichlet"
    alpha: float = Field(0.5, gt=0, description="Dirichlet concentration: small = more non-IID")
    shards_per_node: int = Field(2, ge=1)
    min_samples: int = Field(1, ge=1, description="fewest training samples any node may get")
    options: dict[str, Any] = Field(default_factory=dict, description="extra loader options")


class GraphConfig(_Section):
    """One communication graph: a generator and its parameters, or a file, and the weights."""

    kind: str = "regular"
    degree: int | None = 4
    p: float | None = None
    k: int | None = None
    rows: int | None = None
    path: str | None = Field(None, description="edge-list or adjacency-list file (kind = 'file')")
    weights: Literal["metropolis_hastings", "uniform", "max_degree"] = "metropolis_hastings"
    dynamic: bool = Field(False, description="re-draw the (random) graph every round from (seed, round)")
    peers: int | None = Field(None, ge=1, description="kind = 'epidemic': nodes each node pushes to per round")

    def generator_params(self) -> dict[str, Any]:
        """Only the parameters the chosen generator takes."""
        wanted = {
            "regular": ("degree",), "erdos_renyi": ("p",), "watts_strogatz": ("k", "p"),
            "torus": ("rows",), "grid": ("rows",),
        }.get(self.kind, ())
        return {key: getattr(self, key) for key in wanted if getattr(self, key) is not None}

    def check(self, nodes: int, where: str = "topology") -> None:
        """Reject impossible settings, naming the key."""
        from meshlearn import topology

        if self.kind == "epidemic":
            if self.peers is None or not 1 <= self.peers < nodes:
                raise ValueError(f"{where}.kind = 'epidemic' needs {where}.peers in 1..nodes-1 "
                                 f"(nodes each node pushes its model to per round), got {self.peers}")
        elif self.kind == "file":
            if self.dynamic:
                raise ValueError(f"{where}.dynamic = true needs a random generator, not a file; "
                                 f"set {where}.kind to e.g. 'regular'")
            if not self.path:
                raise ValueError(f"{where}.kind = 'file' needs {where}.path = '<edge or adjacency list>'")
            if not Path(self.path).is_file():
                raise ValueError(f"{where}.path = {self.path!r} does not exist; "
                                 "write one with 'meshlearn topology generate ... -o FILE'")
        else:
            try:
                topology.check_params(self.kind, nodes, **self.generator_params())
            except ValueError as exc:
                raise ValueError(str(exc).replace("topology.", f"{where}.")) from None
        if self.peers is not None and self.kind != "epidemic":
            raise ValueError(f"{where}.peers applies to {where}.kind = 'epidemic'; remove it")


class TopologyPhase(GraphConfig):
    """A ``[[topology.schedule]]`` entry: the graph used from round ``from_round`` on."""

    from_round: int = Field(ge=2, description="first round of this phase (round 1 uses [topology])")


class TopologyConfig(GraphConfig):
    schedule: list[TopologyPhase] = Field(default_factory=list, description="graphs that take over later")
    final_average: bool = Field(False, description="average all models globally in the last round")


class ModelConfig(_Section):
    name: str = "mlp"
    options: dict[str, Any] = Field(default_factory=dict, description="keyword arguments of the model class")
    same_init: bool = Field(True, description="all nodes start from the same initial model")


class TrainingConfig(_Section):
    local_steps: int | None = Field(10, ge=1)
    local_epochs: float | None = Field(None, gt=0)
    batch_size: int = Field(16, ge=1)
    optimizer: Literal["sgd", "adam"] = "sgd"
    lr: float = Field(0.05, gt=0)
    momentum: float = Field(0.0, ge=0, lt=1)
    nesterov: bool = False
    weight_decay: float = Field(0.0, ge=0)
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = Field(1e-8, gt=0)

    @field_validator("betas")
    @classmethod
    def _betas_in_range(cls, betas: tuple[float, float]) -> tuple[float, float]:
        if not all(0.0 <= b < 1.0 for b in betas):
            raise ValueError(f"training.betas = {list(betas)}: each must be in [0, 1)")
        return betas

    @model_validator(mode="after")
    def _one_budget(self) -> "TrainingConfig":
        if self.local_epochs is not None:
            if "local_steps" in self.model_fields_set and self.local_steps is not None:
                raise ValueError("set only one of training.local_steps and training.local_epochs")
            object.__setattr__(self, "local_steps", None)
        if self.optimizer == "adam" and self.momentum:
            raise ValueError("training.momentum applies to optimizer = 'sgd'; Adam uses training.betas")
        if self.local_steps is None and self.local_epochs is None:
            raise ValueError("set training.local_steps or training.local_epochs")
        if self.nesterov and self.momentum == 0:
            raise ValueError("training.nesterov = true needs training.momentum > 0")
        return self


SERVER_ALGORITHMS = ("fedavg", "parameter_server")
ASYNC_ALGORITHMS = ("gossip", "adpsgd")


class AlgorithmConfig(_Section):
    """What nodes do each round: D-PSGD, a federated server on a star, or asynchronous gossip."""

    name: Literal["dpsgd", "fedavg", "parameter_server", "gossip", "adpsgd"] = "dpsgd"
    client_fraction: float | None = Field(None, gt=0, le=1, description="fedavg/parameter_server: share of "
                                          "the clients sampled each round (default 1)")
    server_lr: float | None = Field(None, gt=0, description="parameter_server: step size of the averaged update")
    server_momentum: float | None = Field(None, ge=0, lt=1, description="parameter_server: momentum of the "
                                          "server's update")

    OPTIONS: ClassVar[dict[str, dict[str, Any]]] = {
        "dpsgd": {}, "gossip": {}, "adpsgd": {},
        "fedavg": {"client_fraction": 1.0},
        "parameter_server": {"client_fraction": 1.0, "server_lr": 1.0, "server_momentum": 0.0},
    }

    @model_validator(mode="after")
    def _options(self) -> "AlgorithmConfig":
        _scheme_options(self, "algorithm", self.OPTIONS, self.name)
        return self

    def options(self) -> dict[str, Any]:
        return {key: getattr(self, key) for key in self.OPTIONS[self.name]}


class ComputeConfig(_Section):
    """How long a node's local training takes on the asynchronous simulator's virtual clock.

    Each node gets a fixed speed drawn once from (seed, node); one local training of node i
    then takes ``mean_s`` × its factor: ``constant`` (all 1), ``uniform`` (1 ± spread),
    ``lognormal`` (σ = spread, mean 1) or ``exponential`` (mean 1, heavy stragglers).
    """

    distribution: Literal["constant", "uniform", "lognormal", "exponential"] = "constant"
    mean_s: float = Field(1.0, gt=0, description="mean virtual seconds of one local training")
    spread: float = Field(0.5, ge=0, description="uniform: ± share of the mean; lognormal: σ")

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


def _scheme_options(section: BaseModel, where: str, defaults: dict[str, dict[str, Any]], name: str) -> None:
    """Refuse options of another scheme and fill in this scheme's defaults, so that the resolved
    config lists exactly the options in effect (and reloads to the same config)."""
    applies = defaults[name]
    for key in type(section).model_fields:
        if key in ("name", "compression"):
            continue
        value = getattr(section, key)
        if key not in applies:
            if value is not None:
                owners = " or ".join(repr(n) for n, opts in defaults.items() if key in opts)
                raise ValueError(f"{where}.{key} is an option of {where}.name = {owners}, not {name!r}; "
                                 f"remove it or change {where}.name")
        elif value is None:
            default = applies[key]
            object.__setattr__(section, key, default() if callable(default) else default)


_RULES: dict[str, tuple[Any, str]] = {
    "fraction": (lambda v: 0 < v <= 1, "must be in (0, 1]: the share of the parameters sent each round"),
    "levels": (lambda v: 1 <= v <= 127,
               "must be an integer in 1..127 (QSGD levels per sign: 2·levels+1 codes, e.g. 7 → 4 bits)"),
    "bits": (lambda v: 1 <= v <= 8, "must be an integer in 1..8 (uniform quantization to 2**bits values)"),
    "bucket_size": (lambda v: v >= 0, "must be ≥ 0 (coordinates that share one scale; 0 = the whole model)"),
    "gamma": (lambda v: 0 < v <= 1,
              "must be in (0, 1]: CHOCO's consensus step size (1 with compressor 'identity' is D-PSGD)"),
}


def _check_values(section: BaseModel, where: str) -> None:
    for key, (ok, rule) in _RULES.items():
        value = getattr(section, key, None)
        if value is not None and not ok(value):
            raise ValueError(f"{where}.{key} = {value!r} {rule}")


class CompressorConfig(_Section):
    """The compressor Q of CHOCO-SGD, applied to x − x̂ (``[sharing.compressor]``)."""

    name: Literal["identity", "topk", "randomk", "qsgd", "uniform"] = "topk"
    fraction: float | None = Field(None, description="topk/randomk: share of the coordinates sent")
    indices: Literal["seed", "explicit"] | None = Field(None, description="randomk: send a seed or the indices")
    levels: int | None = Field(None, description="qsgd: quantization levels per sign")
    bits: int | None = Field(None, description="uniform: bits per coordinate")
    bucket_size: int | None = Field(None, description="qsgd/uniform: coordinates per scale (0 = all)")

    OPTIONS: ClassVar[dict[str, dict[str, Any]]] = {
        "identity": {},
        "topk": {"fraction": 0.1},
        "randomk": {"fraction": 0.1, "indices": "seed"},
        "qsgd": {"levels": 7, "bucket_size": 512},
        "uniform": {"bits": 8, "bucket_size": 512},
    }

    @model_validator(mode="after")
    def _options(self) -> "CompressorConfig":
        _check_values(self, "sharing.compressor")
        _scheme_options(self, "sharing.compressor", self.OPTIONS, self.name)
        return self

    def options(self) -> dict[str, Any]:
        return {"name": self.name, **{key: getattr(self, key) for key in self.OPTIONS[self.name]}}


class SharingConfig(_Section):
    """What nodes send (``name``) and that scheme's options; see README, "Sharing schemes"."""

    name: Literal["full", "random", "topk", "choco", "quantize"] = "full"
    fraction: float | None = Field(None, description="random/topk: share of the parameters sent each round")
    indices: Literal["seed", "explicit"] | None = Field(
        None, description="random: send a seed (receivers regenerate the indices) or the indices")
    error_feedback: bool | None = Field(None, description="topk: accumulate unsent changes (residual)")
    gamma: float | None = Field(None, description="choco: consensus step size in (0, 1]")
    compressor: CompressorConfig | None = Field(None, description="choco: the compressor of x − x̂")
    method: Literal["qsgd", "uniform"] | None = Field(None, description="quantize: QSGD or uniform")
    levels: int | None = Field(None, description="quantize (qsgd): levels per sign")
    bits: int | None = Field(None, description="quantize (uniform): bits per coordinate")
    bucket_size: int | None = Field(None, description="quantize: coordinates per scale (0 = all)")
    compression: Literal["none", "zstd", "lz4"] = Field("none", description="lossless stage on every message")

    OPTIONS: ClassVar[dict[str, dict[str, Any]]] = {
        "full": {},
        "random": {"fraction": 0.1, "indices": "seed"},
        "topk": {"fraction": 0.1, "error_feedback": False},
        "choco": {"gamma": 0.2, "compressor": CompressorConfig},
        "quantize": {"method": "qsgd", "levels": 7, "bits": 8, "bucket_size": 512},
    }

    @model_validator(mode="after")
    def _options(self) -> "SharingConfig":
        _check_values(self, "sharing")
        options = self.OPTIONS
        if self.name == "quantize":  # levels belong to qsgd, bits to uniform
            method = self.method or "qsgd"
            mine, other = ("levels", "bits") if method == "qsgd" else ("bits", "levels")
            if getattr(self, other) is not None:
                raise ValueError(f"sharing.{other} is an option of sharing.method = "
                                 f"{'uniform' if method == 'qsgd' else 'qsgd'!r}, not {method!r}; "
                                 f"use sharing.{mine} or change sharing.method")
            options = {**options, "quantize": {k: v for k, v in options["quantize"].items() if k != other}}
        _scheme_options(self, "sharing", options, self.name)
        if self.compression != "none":
            from meshlearn import wire

            try:
                wire.check_codec(self.compression)
            except ImportError as exc:
                raise ValueError(f"sharing.compression = {self.compression!r}: {exc}") from None
        return self

    def options(self) -> dict[str, Any]:
        """Keyword arguments of the scheme's class (``sharing.build``)."""
        out = {key: getattr(self, key) for key in self.OPTIONS[self.name] if getattr(self, key) is not None}
        if self.compressor is not None:
            out["compressor"] = self.compressor.options()
        return out


class EvaluationConfig(_Section):
    every: int = Field(5, ge=1, description="evaluate every k rounds (and after the last)")
    nodes: int = Field(0, ge=0, description="evaluate this many sampled nodes; 0 = all")
    test_samples: int = Field(0, ge=0, description="use this many sampled test samples; 0 = all")
    batch_size: int = Field(1024, ge=1)
    average_model: bool = Field(True, description="also test the average of all node models")


class EngineConfig(_Section):
    name: Literal["sim", "processes", "ray"] = "sim"
    batching: Literal["auto", "vmap", "loop"] = "auto"
    chunk_size: int = Field(0, ge=0, description="nodes trained per batched call; 0 = chosen per model")
    threads: int | None = Field(None, ge=1, description="torch intra-op threads per process "
                                "(default: all cores for sim, cores / workers for processes)")
    workers: int = Field(2, ge=1, description="processes/ray: worker processes, each hosting nodes / workers nodes")
    host: str = Field("127.0.0.1", description="processes: address the workers bind to")
    timeout_s: float = Field(60.0, gt=0, description="processes/ray: how long a node waits for a round's "
                             "messages before going on without the missing neighbours")
    max_message_bytes: int = Field(1 << 30, ge=1024, description="larger incoming messages are rejected")


class LinkConfig(_Section):
    """Properties of a network link; unset values fall back to the enclosing section."""

    latency_ms: float | None = Field(None, ge=0, description="one-way delay of every message")
    bandwidth_mbps: float | None = Field(None, gt=0, description="link rate in Mbit/s (unset: unlimited)")
    loss: float | None = Field(None, ge=0, lt=1, description="probability that a message is lost")


class NodeClassConfig(LinkConfig):
    nodes: list[int] = Field(description="node ids in this class")


class NetworkConfig(_Section):
    """Network emulation, applied by the transport (processes, ray) and by a virtual clock (sim).

    A link i→j takes the defaults below, then the slowest values of the classes of i and j
    (highest latency and loss, lowest bandwidth), then its row in ``file`` if any.
    """

    latency_ms: float = Field(0.0, ge=0, description="one-way delay of every message")
    bandwidth_mbps: float | None = Field(None, gt=0, description="link rate in Mbit/s (unset: unlimited)")
    loss: float = Field(0.0, ge=0, lt=1, description="probability that a message is lost")
    classes: dict[str, NodeClassConfig] = Field(default_factory=dict, description="per-node link classes")
    file: str | None = Field(None, description="CSV of directed links: src,dst,latency_ms,bandwidth_mbps,loss")

    @property
    def enabled(self) -> bool:
        return bool(self.latency_ms or self.bandwidth_mbps or self.loss or self.classes or self.file)


class ExperimentConfig(_Section):
    name: str = "experiment"
    seed: int = 0
    nodes: int = Field(16, ge=1)
    rounds: int = Field(20, ge=1)
    data: DataConfig = Field(default_factory=DataConfig)
    topology: TopologyConfig = Field(default_factory=TopologyConfig)
    model: ModelConfig = Field(default_factory=ModelConfig)
    training: TrainingConfig = Field(default_factory=TrainingConfig)
    algorithm: AlgorithmConfig = Field(default_factory=AlgorithmConfig)
    sharing: SharingConfig = Field(default_factory=SharingConfig)
    evaluation: EvaluationConfig = Field(default_factory=EvaluationConfig)
    engine: EngineConfig = Field(default_factory=EngineConfig)
    network: NetworkConfig = Field(default_factory=NetworkConfig)
    compute: ComputeConfig = Field(default_factory=ComputeConfig)
    privacy: PrivacyConfig = Field(default_factory=PrivacyConfig)

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
        algo = self.algorithm.name
        if algo in SERVER_ALGORITHMS:
            if topo.kind != "star" or topo.schedule or topo.dynamic or topo.final_average:
                raise ValueError(f"algorithm.name = {algo!r} runs a server (node 0) and its clients on a star: "
                                 "set topology.kind = 'star' with no schedule")
            if self.nodes < 2:
                raise ValueError(f"algorithm.name = {algo!r} needs nodes >= 2 (a server and a client)")
            allowed = ("full", "quantize") if algo == "fedavg" else ("full",)
            if self.sharing.name not in allowed:
                raise ValueError(f"algorithm.name = {algo!r} sends whole models (or updates) to and from the "
                                 f"server: use sharing.name = {' or '.join(map(repr, allowed))}")
        if algo in ASYNC_ALGORITHMS:
            if self.engine.name != "sim":
                raise ValueError(f"algorithm.name = {algo!r} is asynchronous and runs on engine.name = 'sim' "
                                 "(its event-driven clock); use a synchronous algorithm on other engines")
            if topo.schedule or topo.final_average or topo.dynamic or topo.kind == "epidemic":
                raise ValueError(f"algorithm.name = {algo!r} gossips over a fixed graph: remove the topology "
                                 "schedule, dynamic and final_average settings")
        for name, cls in self.network.classes.items():
            bad = [node for node in cls.nodes if not 0 <= node < self.nodes]
            if bad:
                raise ValueError(f"network.classes.{name}.nodes has ids {bad[:5]} outside 0..{self.nodes - 1}")
        lossy = self.network.loss > 0 or any((c.loss or 0) > 0 for c in self.network.classes.values())
        if self.sharing.name == "choco" and lossy:
            raise ValueError("sharing.name = 'choco' needs every message to arrive (sender and receivers keep "
                             "copies of each other's public models); set network.loss = 0 and no lossy "
                             "classes, or use another sharing scheme")
        if self.sharing.name == "choco" and (topo.schedule or topo.dynamic or topo.final_average
                                             or topo.kind == "epidemic"):
            raise ValueError("sharing.name = 'choco' keeps a running sum of its fixed neighbours' public "
                             "copies, so it needs a static topology: remove topology.dynamic, schedule, "
                             "final_average and kind = 'epidemic', or use another sharing scheme")
        if self.privacy.secagg is not None and (self.sharing.name != "full" or algo != "dpsgd"):
            raise ValueError("privacy.secagg masks whole models exchanged by D-PSGD: set sharing.name = 'full' "
                             "and algorithm.name = 'dpsgd', or remove [privacy.secagg]")
        if self.network.file and not Path(self.network.file).is_file():
            raise ValueError(f"network.file = {self.network.file!r} does not exist; write a CSV with a "
                             "header src,dst,latency_ms,bandwidth_mbps,loss")
        if self.evaluation.nodes > self.nodes:
            raise ValueError(f"evaluation.nodes = {self.evaluation.nodes} exceeds nodes = {self.nodes}; "
                             "use 0 for all nodes")
        return self

    def check_data_available(self) -> None:
        """Fail early, naming data.dataset/data.root, when the dataset files are missing."""
        from meshlearn import data

        data.check_available(self.data.dataset, self.data.root)

    def to_toml_dict(self) -> dict[str, Any]:
        """Plain dict without None values (TOML has no null)."""
        return _drop_none(self.model_dump(mode="json"))


def parse_config(raw: dict[str, Any], *, check_files: bool = True) -> ExperimentConfig:
    """Validate a config dict; raise ConfigError with one line per problem."""
    try:
        cfg = ExperimentConfig.model_validate(raw)
        if check_files:
            cfg.check_data_available()
    except ValidationError as exc:
        raise ConfigError(_format_validation_error(exc)) from None
    except (FileNotFoundError, ValueError) as exc:  # dataset unknown or its files missing
        raise ConfigError(str(exc)) from None
    return cfg


def load_config(path: str | Path, overrides: list[str] | None = None, *, check_files: bool = True) -> ExperimentConfig:
    """Read a TOML experiment file, apply ``key=value`` overrides, and validate it."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {str(path)!r} not found")
    try:
        raw = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML ({exc})") from None
    raw = apply_overrides(raw, overrides or [])
    return parse_config(raw, check_files=check_files)


def apply_overrides(raw: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply ``--set section.key=value`` overrides; values are parsed as TOML (else kept as text)."""
    raw = copy.deepcopy(raw)
    for item in overrides:
        key, sep, text = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--set {item!r}: expected key=value, e.g. --set training.lr=0.1")
        try:
            value = tomllib.loads(f"v = {text}")["v"]
        except tomllib.TOMLDecodeError:
            value = text
        node = raw
        *parents, leaf = key.strip().split(".")
        for part in parents:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise ConfigError(f"--set {item!r}: {part!r} is not a section")
            node = child
        node[leaf] = value
    return raw


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
