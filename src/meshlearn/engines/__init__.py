"""Engines execute an experiment's nodes; algorithms and sharing are engine-independent."""

from meshlearn.engines.sim import SimEngine

ENGINES = {"sim": SimEngine}

__all__ = ["SimEngine", "ENGINES"]
