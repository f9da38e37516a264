"""meshlearn: decentralized learning on many nodes, one algorithm for every engine.

Modules: ``topology`` (graphs, mixing weights), ``data`` (loaders, partitions), ``models``,
``training`` (local SGD on stacked nodes), ``sharing`` (what nodes send and how they
aggregate), ``algorithms`` (a node's round), ``engines`` (how nodes are executed),
``metrics`` and ``results``.
"""

__version__ = "0.1.0"
