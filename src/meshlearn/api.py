"""Run experiments from Python (notebooks, scripts) and read their results as DataFrames.

    import meshlearn

    run = meshlearn.run("examples/quickstart.toml", rounds=5, training__lr=0.1)
    run.rounds[["round", "test_acc_mean"]]        # one row per evaluation (rounds.jsonl)
    run.models()[0]["net.0.weight"]               # node 0's final model, by parameter name

Without ``out`` the run directory is a temporary folder: its tables, summary and models are
read into the ``Run`` and the folder is deleted, so nothing is left on disk.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from meshlearn.config import ConfigError, ExperimentConfig, load_config, parse_config, set_values, tomllib

if TYPE_CHECKING:
    import pandas as pd
    import torch

    from meshlearn.callbacks import Callback

__all__ = ["run", "load_run", "Run"]


def run(config: ExperimentConfig | Mapping[str, Any] | str | os.PathLike, *, out: str | os.PathLike | None = None,
        overwrite: bool = False, callbacks: Sequence[Callback] = (), engine_options: Mapping[str, Any] | None = None,
        **overrides: Any) -> Run:
    """Run an experiment and return its results.

    ``config``: an ``ExperimentConfig``, a raw config dict, or a TOML file. ``overrides`` set
    config keys by dotted path, written with double underscores (``training__lr=0.1``) or
    passed as ``**{"training.lr": 0.1}``; values are used as given. ``out``: the run
    directory to write (default: none kept); one that holds a run already is refused unless
    ``overwrite``. ``callbacks``: ``meshlearn.callbacks.Callback``
    objects (loggers...). ``engine_options``: for the engine, e.g. ``{"ray_address": ...}``.
    """
    from meshlearn.results import MODELS_FILE
    from meshlearn.runner import run_experiment

    cfg = _config(config, overrides)
    options = dict(engine_options or {})
    if out is not None:
        run_experiment(cfg, out, callbacks=callbacks, overwrite=overwrite, **options)
        return Run._read(Path(out), cfg)
    with tempfile.TemporaryDirectory(prefix="meshlearn-") as tmp:
        run_experiment(cfg, tmp, callbacks=callbacks, **options)
        result = Run._read(Path(tmp), cfg)
        if (result.dir / MODELS_FILE).is_file():
            result._load_models()
        result.dir = None
        return result


def load_run(directory: str | os.PathLike) -> Run:
    """Re-open a run directory (written by ``meshlearn run`` or ``meshlearn.run(..., out=...)``)."""
    return Run.open(directory)


class Run:
    """The results of one run: ``config``, ``summary`` (dict), ``rounds`` (a DataFrame of the
    ``rounds.jsonl`` records), ``nodes`` (a DataFrame of the per-node rows of
    ``nodes.jsonl``), ``dir`` (the run directory, or None) and ``models()``."""

    def __init__(self, config: ExperimentConfig, summary: dict[str, Any], rounds: pd.DataFrame,
                 nodes: pd.DataFrame, directory: Path | None):
        self.config, self.summary, self.rounds, self.nodes, self.dir = config, summary, rounds, nodes, directory
        self._models: dict[str, torch.Tensor] | None = None

    @classmethod
    def open(cls, directory: str | os.PathLike) -> Run:
        """Read a run directory back (models are read when first asked for)."""
        directory = Path(directory)
        for name in ("config.toml", "summary.json", "rounds.jsonl", "nodes.jsonl"):
            if not (directory / name).is_file():
                raise FileNotFoundError(f"{directory} is not a run directory: {name} is missing")
        try:
            raw = tomllib.loads((directory / "config.toml").read_text())
            cfg = parse_config(raw, check_files=False)
        except (tomllib.TOMLDecodeError, ConfigError) as exc:
            raise ConfigError(f"{directory / 'config.toml'}: {exc}") from None
        return cls._read(directory, cfg)

    @classmethod
    def _read(cls, directory: Path, cfg: ExperimentConfig) -> Run:
        import pandas as pd

        from meshlearn.results import read_jsonl

        summary = json.loads((directory / "summary.json").read_text())
        rounds, nodes = (pd.DataFrame.from_records(read_jsonl(directory / f"{name}.jsonl"))
                         for name in ("rounds", "nodes"))
        return cls(cfg, summary, rounds, nodes, directory)

    def models(self) -> list[dict[str, torch.Tensor]]:
        """The final model of every node, as state dicts (parameter name → tensor) that
        ``model.load_state_dict`` takes; node i's is item i (all NaN for the nodes of a
        worker that failed). The tensors are views into the stored ones: clone before
        changing them in place."""
        stacked = self._load_models()
        nodes = len(next(iter(stacked.values())))
        return [{name: tensor[i] for name, tensor in stacked.items()} for i in range(nodes)]

    def _load_models(self) -> dict[str, torch.Tensor]:
        from meshlearn.results import MODELS_FILE, read_models

        if self._models is None:
            path = None if self.dir is None else self.dir / MODELS_FILE
            if path is None or not path.is_file():
                raise FileNotFoundError(f"run {self.config.name!r} has no final models (status "
                                        f"{self.summary.get('status')!r}): {MODELS_FILE} is written when a "
                                        "run completes, by an engine that holds every node")
            self._models = read_models(path)
        return self._models

    def __repr__(self) -> str:
        from meshlearn.results import metric_of

        final = self.summary.get("final", {})
        key = f"test_{metric_of(final)}_mean"
        value = final.get(key)
        return (f"Run({self.config.name!r}, {self.summary.get('status')}, {self.summary.get('rounds_completed')}/"
                f"{self.config.rounds} rounds, {key}={value if value is None else round(value, 4)}, "
                f"dir={None if self.dir is None else str(self.dir)!r})")


def _config(config: ExperimentConfig | Mapping[str, Any] | str | os.PathLike,
            overrides: Mapping[str, Any]) -> ExperimentConfig:
    """A validated config from any of the accepted forms, with ``overrides`` applied."""
    if isinstance(config, ExperimentConfig):
        return parse_config(set_values(config.to_toml_dict(), overrides)) if overrides else config
    if isinstance(config, Mapping):
        return parse_config(set_values(dict(config), overrides))
    if not isinstance(config, (str, os.PathLike)):
        raise TypeError(f"config is an ExperimentConfig, a dict or a TOML file path, not {type(config).__name__}")
    return load_config(config, values=overrides)
