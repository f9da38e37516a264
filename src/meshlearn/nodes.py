"""Node state kept as flat, stacked tensors.

A batch of B nodes owns one ``(B, P)`` float32 parameter matrix: row i is node i's whole
model. One layout serves everything: gossip mixing is a single sparse product, a message is
a slice, optimizer updates are a few vector ops, and ``ParamLayout.views`` turns rows back
into named tensors for ``torch.func.functional_call``. The same class holds all N nodes in
the simulator and a worker's share of nodes in the networked engines.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

__all__ = ["ParamLayout", "NodeBatch"]


@dataclass(frozen=True)
class ParamLayout:
    """Where each named parameter of a model lives inside a flat parameter vector."""

    names: tuple[str, ...]
    shapes: tuple[torch.Size, ...]
    offsets: tuple[int, ...]
    size: int

    @classmethod
    def of(cls, model: nn.Module) -> "ParamLayout":
        names, shapes, offsets, offset = [], [], [], 0
        for name, param in model.named_parameters():
            names.append(name)
            shapes.append(param.shape)
            offsets.append(offset)
            offset += param.numel()
        if any(True for _ in model.buffers()):
            raise ValueError("models with buffers (e.g. BatchNorm running statistics) are not supported: "
                             "use GroupNorm/LayerNorm, which keep no per-node running state")
        return cls(tuple(names), tuple(shapes), tuple(offsets), offset)

    def flatten(self, model: nn.Module) -> torch.Tensor:
        """The model's parameters as one (P,) vector, in layout order."""
        return torch.cat([p.detach().reshape(-1) for p in model.parameters()]).to(torch.float32)

    def views(self, flat: torch.Tensor) -> dict[str, torch.Tensor]:
        """Named views (no copy) into ``flat`` of shape (..., P)."""
        return {
            name: flat[..., off:off + shape.numel()].unflatten(-1, shape) if shape
            else flat[..., off]
            for name, shape, off in zip(self.names, self.shapes, self.offsets)
        }

    def load_into(self, model: nn.Module, flat: torch.Tensor) -> None:
        """Copy a (P,) vector into a module's parameters."""
        with torch.no_grad():
            for param, view in zip(model.parameters(), self.views(flat).values()):
                param.copy_(view)


@dataclass
class NodeBatch:
    """The state of a batch of nodes: ids, flat parameters, and per-node algorithm state."""

    ids: torch.Tensor                # (B,) global node ids, int64
    params: torch.Tensor             # (B, P) float32
    state: dict[str, torch.Tensor] = field(default_factory=dict)  # optimizer/sharing state, leading dim B

    def __len__(self) -> int:
        return int(self.ids.numel())
