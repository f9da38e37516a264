"""Private parameters: some of a model's parameters never leave their node.

Personalized decentralized learning keeps part of each model local (a classifier head, say)
and gossips the rest. ``[sharing] private`` names that part by parameter-name patterns;
``PrivateParameters`` wraps the configured scheme and shows it only the shared columns of
every node's flat parameters. Done once, around the scheme, it holds for every scheme (a
user's own too) and every engine: what the inner scheme does not see, it cannot send, count
in bytes, or mix.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from fnmatch import fnmatchcase
from typing import Any

import numpy as np
import torch

from meshlearn.nodes import NodeBatch, ParamLayout
from meshlearn.sharing.base import Inbox, Payload, Sharing

__all__ = ["PrivateParameters", "shared_columns"]


def shared_columns(layout: ParamLayout, private: Sequence[str]) -> torch.Tensor:
    """The (increasing, int64) columns of the flat parameters that no pattern of ``private``
    matches: the coordinates a node shares. Patterns are ``fnmatch``-style over the layout's
    parameter names (``net.2.*``); one that matches nothing is a ValueError, as is a run
    where every parameter would be private."""
    names = list(layout.names)
    unmatched = [pattern for pattern in private if not any(fnmatchcase(name, pattern) for name in names)]
    if unmatched:
        raise ValueError(f"sharing.private = {list(private)}: {unmatched} match no parameter of the model; "
                         f"its parameters are {names}")
    keep = np.ones(layout.size, dtype=bool)
    for name, shape, offset in zip(layout.names, layout.shapes, layout.offsets):
        if any(fnmatchcase(name, pattern) for pattern in private):
            keep[offset:offset + shape.numel()] = False
    if not keep.any():
        raise ValueError(f"sharing.private = {list(private)} makes every parameter private, so nothing would be "
                         "shared: remove some patterns")
    return torch.from_numpy(np.flatnonzero(keep).astype(np.int64))


class PrivateParameters(Sharing):
    """The ``inner`` scheme run on the shared columns only; private columns are never sent,
    never mixed, and keep each node's own values.

    Every call hands the inner scheme a ``NodeBatch`` with the same ids and ``state`` (so its
    state is sized to the shared part) and ``params[:, shared]``, then writes those columns
    back into a new parameter matrix, as a scheme's own aggregation does.
    """

    def __init__(self, inner: Sharing, shared: torch.Tensor):
        super().__init__(inner.seed)
        self.inner = inner
        self.shared = torch.as_tensor(shared, dtype=torch.int64)
        self.name = inner.name

    def _part(self, nodes: NodeBatch) -> NodeBatch:
        """The nodes as the inner scheme sees them: their shared columns, their state."""
        return NodeBatch(nodes.ids, nodes.params.index_select(1, self.shared.to(nodes.params.device)), nodes.state)

    @contextmanager
    def _restricted(self, nodes: NodeBatch) -> Iterator[NodeBatch]:
        """``_part``, whose shared columns are written back into ``nodes`` afterwards."""
        part = self._part(nodes)
        yield part
        nodes.params = nodes.params.index_copy(1, self.shared.to(nodes.params.device), part.params.to(nodes.params.dtype))

    def setup(self, nodes: NodeBatch) -> None:
        with self._restricted(nodes) as part:
            self.inner.setup(part)

    def encode(self, nodes: NodeBatch, rnd: int) -> Payload:   # encoding changes no parameter
        return self.inner.encode(self._part(nodes), rnd)

    def aggregate(self, nodes: NodeBatch, inbox: Inbox) -> None:
        with self._restricted(nodes) as part:
            self.inner.aggregate(part, inbox)

    def share(self, nodes: NodeBatch, rnd: int, ctx) -> None:
        with self._restricted(nodes) as part:
            self.inner.share(part, rnd, ctx)

    def node_metrics(self, ids: list[int]) -> dict[str, np.ndarray]:
        return self.inner.node_metrics(ids)

    def public_keys(self) -> dict[int, bytes]:
        return self.inner.public_keys()

    def add_public_keys(self, directory: dict[int, bytes]) -> None:
        self.inner.add_public_keys(directory)

    def __getattr__(self, name: str) -> Any:
        """Anything else the framework reads (``decode``, ``aggregator``...) is the inner scheme's, on
        shared columns."""
        if name == "inner" or name.startswith("__"):
            raise AttributeError(name)
        return getattr(self.inner, name)
