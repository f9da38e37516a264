"""meshlearn: decentralized learning on many nodes, one algorithm for every engine.

Modules: ``topology`` (graphs, mixing weights), ``data`` (loaders, partitions), ``models``,
``training`` (local SGD on stacked nodes), ``sharing`` (what nodes send and how they
aggregate), ``algorithms`` (a node's round), ``engines`` (how nodes are executed),
``metrics`` and ``results``; ``api`` (``meshlearn.run``, ``meshlearn.load_run``) and
``callbacks`` (loggers) for notebooks and scripts.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

__version__ = "0.1.0"

if TYPE_CHECKING:
    from meshlearn.api import Run, load_run, run
    from meshlearn.callbacks import Callback, CSVLogger, TensorBoardLogger, WandbLogger

# imported on first use, so that ``import meshlearn`` (and the command line) stays fast
_LAZY = {"run": "meshlearn.api", "load_run": "meshlearn.api", "Run": "meshlearn.api",
         "Callback": "meshlearn.callbacks", "TensorBoardLogger": "meshlearn.callbacks",
         "CSVLogger": "meshlearn.callbacks", "WandbLogger": "meshlearn.callbacks"}

__all__ = ["__version__", *_LAZY]


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        value = globals()[name] = getattr(importlib.import_module(_LAZY[name]), name)
        return value
    raise AttributeError(f"module 'meshlearn' has no attribute {name!r}")
