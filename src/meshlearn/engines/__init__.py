"""Engines execute an experiment's nodes; algorithms and sharing are engine-independent.

Every engine offers the same small interface to the runner: ``start()``, then
``step(rnd) -> RoundReport`` for rnd = 0 (initial evaluation), 1, ..., rounds, then
``close() -> dict`` (extra summary fields), plus ``message_bytes``. Engines other than
``sim`` are imported on demand, so the base install needs neither pyzmq workers nor Ray.
"""

from __future__ import annotations

from meshlearn.engines.asynchronous import AsyncSimEngine
from meshlearn.engines.sim import SimEngine

ENGINES = ("sim", "processes", "ray")


def build_engine(name: str, experiment, run_id: str, **options):
    """The engine ``name`` for ``experiment`` (options: e.g. ``workers``, ``hosts``)."""
    if name == "sim":
        if options:
            raise ValueError(f"engine 'sim' takes no options, got {sorted(options)}")
        if experiment.config.algorithm.implementation().asynchronous:  # an event-driven clock, no rounds
            return AsyncSimEngine(experiment, run_id)
        return SimEngine(experiment, run_id)
    if name in ("processes", "ray"):
        from meshlearn.engines.processes import ProcessesEngine

        return ProcessesEngine(experiment, run_id, placement=name, **options)
    raise ValueError(f"engine.name = {name!r} is unknown; use one of {list(ENGINES)}")


__all__ = ["SimEngine", "AsyncSimEngine", "ENGINES", "build_engine"]
