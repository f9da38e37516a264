"""Hooks into a running experiment, and the loggers built on them.

A ``Callback`` is told when the run starts, after every evaluation and every round, and
when it ends. The loggers send the round records (the lines of ``rounds.jsonl``) to
TensorBoard, a CSV file or Weights & Biases; each figure keeps its ``rounds.jsonl`` name
(``test_acc_mean``, ``consensus_distance``, ``bytes_sent_per_node``...) and the round is the step.
"""

from __future__ import annotations

import math
import numbers
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from meshlearn.config import ExperimentConfig

__all__ = ["Callback", "TensorBoardLogger", "CSVLogger", "WandbLogger", "LoggerError", "scalars"]


class LoggerError(RuntimeError):
    """A logger cannot record (e.g. no Weights & Biases account); the message says what to do."""


class Callback:
    """Base class of run hooks; override the ones you need (the others do nothing).

    Order: ``on_start`` once; then for each round ``on_evaluate`` (evaluation rounds only,
    round 0 — the initial models — included) and ``on_round`` (rounds 1..rounds); then
    ``on_end`` once, also when the run fails or is interrupted. An exception raised by a hook
    stops the run (``KeyboardInterrupt`` marks it interrupted).
    """

    def on_start(self, config: ExperimentConfig) -> None:
        """The run is about to start (the experiment is built, no round has run)."""

    def on_evaluate(self, record: dict[str, Any]) -> None:
        """An evaluation finished; ``record`` is its ``rounds.jsonl`` line (``record["round"]``)."""

    def on_round(self, rnd: int, record: dict[str, Any] | None) -> None:
        """Round ``rnd`` finished; ``record`` is its evaluation record, None if it was not evaluated."""

    def on_end(self, summary: dict[str, Any]) -> None:
        """The run ended; ``summary`` is ``summary.json`` (``summary["status"]`` says how)."""


def scalars(record: dict[str, Any]) -> dict[str, float]:
    """The finite numbers of a record, without the round (which loggers use as the step)."""
    return {key: float(value) for key, value in record.items()
            if key != "round" and isinstance(value, numbers.Real) and not isinstance(value, bool)
            and math.isfinite(value)}


class TensorBoardLogger(Callback):
    """Every number of each round record as a TensorBoard scalar (step: the round).

    View with ``tensorboard --logdir LOGDIR``.
    """

    def __init__(self, logdir: str | os.PathLike):
        self.logdir = Path(logdir)
        self.writer = None

    def on_start(self, config: ExperimentConfig) -> None:
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(str(self.logdir))

    def on_evaluate(self, record: dict[str, Any]) -> None:
        for tag, value in scalars(record).items():
            self.writer.add_scalar(tag, value, record["round"])
        self.writer.flush()

    def on_end(self, summary: dict[str, Any]) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None


class CSVLogger(Callback):
    """The round records as a CSV file, one row per evaluation, rewritten after each one so
    that the file is always complete (columns that appear later are added)."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self.rows: list[dict[str, Any]] = []

    def on_start(self, config: ExperimentConfig) -> None:
        self.rows = []
        self.path.parent.mkdir(parents=True, exist_ok=True)

    def on_evaluate(self, record: dict[str, Any]) -> None:
        import pandas as pd

        self.rows.append(record)
        tmp = self.path.with_name(f".{self.path.name}.tmp")
        pd.DataFrame.from_records(self.rows).to_csv(tmp, index=False)
        os.replace(tmp, self.path)


class WandbLogger(Callback):
    """The round records and the final summary in a Weights & Biases run.

    ``init_options`` go to ``wandb.init`` (``project``, ``entity``, ``dir``, ``mode``,
    ``tags``...); the run's name and config default to the experiment's. Without network,
    ``WANDB_MODE=offline`` (or ``mode="offline"``) records locally for ``wandb sync``.
    """

    def __init__(self, **init_options: Any):
        try:
            import wandb
        except ImportError:
            raise ImportError("WandbLogger needs the wandb package: pip install 'meshlearn[wandb]'") from None
        self.wandb = wandb
        self.init_options = init_options
        self.run = None

    def on_start(self, config: ExperimentConfig) -> None:
        options = {"name": config.name, "config": config.to_toml_dict(), **self.init_options}
        try:
            self.run = self.wandb.init(**options)
        except self.wandb.errors.Error as exc:
            raise LoggerError(f"wandb could not start a run ({exc}); log in with 'wandb login', or set "
                              "WANDB_MODE=offline to record locally and 'wandb sync' later") from None

    def on_evaluate(self, record: dict[str, Any]) -> None:
        self.run.log(scalars(record), step=record["round"])

    def on_end(self, summary: dict[str, Any]) -> None:
        if self.run is None:
            return
        final = summary.get("final", {})
        self.run.summary.update({**scalars(final), **scalars(summary), "status": summary["status"]})
        self.run.finish(exit_code=0 if summary["status"] == "completed" else 1)
        self.run = None
