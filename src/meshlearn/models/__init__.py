"""Model zoo: small, standard architectures of the decentralized-learning literature.

Every model is a plain ``torch.nn.Module`` so that one definition serves both the
batched simulator (``torch.func.functional_call`` over stacked parameters) and the
per-node engines. ``build`` also accepts any module by import path
(``"package.module:ClassName"``).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

__all__ = [
    "LogisticRegression",
    "MLP",
    "LeNet",
    "FEMNISTCNN",
    "CharLSTM",
    "ResNet",
    "MatrixFactorization",
    "MODELS",
    "build",
    "num_parameters",
]


class LogisticRegression(nn.Module):
    """Multinomial logistic regression on flattened inputs."""

    chunk_size = 64   # nodes per batched (vmap) training call: fastest measured at 64 and 256 nodes

    def __init__(self, input_shape: tuple[int, ...], num_classes: int):
        super().__init__()
        self.linear = nn.Linear(_flat_size(input_shape), num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(x.reshape(x.shape[0], -1))


class MLP(nn.Module):
    """Fully connected network with ReLU hidden layers."""

    chunk_size = 64

    def __init__(self, input_shape: tuple[int, ...], num_classes: int, hidden: tuple[int, ...] = (64,)):
        super().__init__()
        sizes = [_flat_size(input_shape), *hidden]
        layers: list[nn.Module] = []
        for fan_in, fan_out in zip(sizes[:-1], sizes[1:]):
            layers += [nn.Linear(fan_in, fan_out), nn.ReLU()]
        layers.append(nn.Linear(sizes[-1], num_classes))
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x.reshape(x.shape[0], -1))


class LeNet(nn.Module):
    """LeNet-5-style CNN for 28×28 (MNIST-like) or 32×32 (CIFAR-like) images."""

    batching = "loop"   # batched (vmap) convolutions are slower than their plain kernels node by node

    def __init__(self, input_shape: tuple[int, ...], num_classes: int):
        super().__init__()
        channels, height, width = _image_shape(input_shape, "lenet")
        pad = 2 if height == 28 else 0  # 28×28 inputs are padded to the classic 32×32
        self.features = nn.Sequential(
            nn.Conv2d(channels, 6, 5, padding=pad), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(6, 16, 5), nn.ReLU(), nn.MaxPool2d(2),
        )
        side = ((height + 2 * pad - 4) // 2 - 4) // 2
        self.classifier = nn.Sequential(
            nn.Linear(16 * side * side, 120), nn.ReLU(),
            nn.Linear(120, 84), nn.ReLU(),
            nn.Linear(84, num_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x).flatten(1))


class FEMNISTCNN(nn.Module):
    """The FEMNIST CNN: two 5×5 conv + max-pool blocks (32, 64 channels), then FC.

    With the default 512 hidden units this is the ≈1.7 M-parameter model (62 classes,
    28×28 inputs) DecentralizePy uses for FEMNIST; ``hidden=2048`` gives LEAF's original.
    """

    batching = "loop"   # batched (vmap) convolutions are slower than their plain kernels node by node

    def __init__(self, input_shape: tuple[int, ...], num_classes: int, hidden: int = 512):
        super().__init__()
        channels, height, width = _image_shape(input_shape, "femnist_cnn")
        self.features = nn.Sequential(
            nn.Conv2d(channels, 32, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(32, 64, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2),
        )
        self.classifier = nn.Sequential(
            nn.Linear(64 * (height // 4) * (width // 4), hidden), nn.ReLU(),
            nn.Linear(hidden, num_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x).flatten(1))


class CharLSTM(nn.Module):
    """LEAF Shakespeare next-character model: embedding, 2-layer LSTM, linear head."""

    batching = "loop"   # batched (vmap) LSTMs are slower than their plain kernels node by node
    gpu_batching = "loop"   # vmap has no batching rule for aten::lstm

    def __init__(self, input_shape: tuple[int, ...], num_classes: int, embedding_dim: int = 8,
                 hidden_size: int = 256, num_layers: int = 2, vocab_size: int | None = None):
        super().__init__()
        vocab = vocab_size or num_classes
        self.embedding = nn.Embedding(vocab, embedding_dim)
        self.lstm = nn.LSTM(embedding_dim, hidden_size, num_layers=num_layers, batch_first=True)
        self.head = nn.Linear(hidden_size, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out, _ = self.lstm(self.embedding(x.long()))
        return self.head(out[:, -1])


class _Block(nn.Module):
    """Two 3×3 convolutions with GroupNorm and an identity shortcut (zero-padded channels and a
    strided subsample where the stage narrows: He et al.'s option A, no parameters)."""

    def __init__(self, cin: int, cout: int, stride: int, groups: int):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False)
        self.norm1 = nn.GroupNorm(groups, cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1, bias=False)
        self.norm2 = nn.GroupNorm(groups, cout)
        self.stride, self.pad = stride, cout - cin

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.relu(self.norm1(self.conv1(x)))
        out = self.norm2(self.conv2(out))
        shortcut = x[:, :, ::self.stride, ::self.stride] if self.stride > 1 else x
        if self.pad:
            shortcut = nn.functional.pad(shortcut, (0, 0, 0, 0, self.pad // 2, self.pad - self.pad // 2))
        return torch.relu(out + shortcut)


class ResNet(nn.Module):
    """The CIFAR ResNet of He et al. (2016): depth 6n + 2 (8, 14, 20, 32...), three stages of
    n blocks with ``width``, 2·width and 4·width channels, global average pooling, linear head.

    Normalization is GroupNorm (``groups`` groups per layer, as Hsieh et al. 2020 recommend for
    non-IID decentralized training) instead of BatchNorm, whose running statistics are buffers a
    node would have to keep out of averaging; GroupNorm has none, so every engine and stacked
    training handle it like any other model. ResNet-20 has 269,722 parameters on CIFAR-10.
    """

    batching = "loop"   # batched (vmap) convolutions are slower than their plain kernels node by node

    def __init__(self, input_shape: tuple[int, ...], num_classes: int, depth: int = 20, width: int = 16,
                 groups: int = 2):
        super().__init__()
        channels, _, _ = _image_shape(input_shape, "resnet")
        if depth < 8 or (depth - 2) % 6:
            raise ValueError(f"model.options.depth = {depth}: a CIFAR ResNet has depth 6n + 2 (8, 14, 20, 32, 44...)")
        if width < 1 or groups < 1 or width % groups:
            raise ValueError(f"model.options: width = {width} must be a positive multiple of groups = {groups}")
        blocks = (depth - 2) // 6
        self.stem = nn.Sequential(nn.Conv2d(channels, width, 3, padding=1, bias=False), nn.GroupNorm(groups, width),
                                  nn.ReLU())
        layers, cin = [], width
        for stage in range(3):
            cout = width * 2 ** stage
            for k in range(blocks):
                layers.append(_Block(cin, cout, 2 if stage and not k else 1, groups))
                cin = cout
        self.stages = nn.Sequential(*layers)
        self.head = nn.Linear(cin, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.stages(self.stem(x)).mean(dim=(2, 3)))


class MatrixFactorization(nn.Module):
    """Ratings as user · item factors plus user, item and global biases, from (user, item) index
    pairs: the MovieLens model. Its tables are sized by the data set's ``cardinalities``."""

    def __init__(self, input_shape: tuple[int, ...], num_classes: int,
                 cardinalities: tuple[int, ...] | None = None, dim: int = 20):
        super().__init__()
        if cardinalities is None or len(cardinalities) != 2 or tuple(input_shape) != (2,) or num_classes != 1:
            raise ValueError("matrix_factorization rates (user, item) index pairs and needs their counts: use it "
                             "with a rating data set such as data.dataset = 'movielens'")
        if dim < 1:
            raise ValueError(f"model.options.dim = {dim} must be at least 1")
        users, items = cardinalities
        self.user, self.item = nn.Embedding(users, dim), nn.Embedding(items, dim)
        self.user_bias, self.item_bias = nn.Embedding(users, 1), nn.Embedding(items, 1)
        self.bias = nn.Parameter(torch.zeros(1))
        for table in (self.user, self.item):
            nn.init.normal_(table.weight, std=0.1)
        for table in (self.user_bias, self.item_bias):
            nn.init.zeros_(table.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        user, item = x[..., 0], x[..., 1]
        return ((self.user(user) * self.item(item)).sum(-1, keepdim=True) + self.user_bias(user)
                + self.item_bias(item) + self.bias)


MODELS: dict[str, Callable[..., nn.Module]] = {
    "logreg": LogisticRegression,
    "mlp": MLP,
    "lenet": LeNet,
    "femnist_cnn": FEMNISTCNN,
    "char_lstm": CharLSTM,
    "resnet": ResNet,
    "matrix_factorization": MatrixFactorization,
}


def build(name: str, input_shape: tuple[int, ...], num_classes: int,
          cardinalities: tuple[int, ...] | None = None, **kwargs) -> nn.Module:
    """Instantiate a registered model or ``"pkg.module:Class"`` / ``"file.py:Class"``: a
    ``torch.nn.Module`` whose ``__init__`` takes ``input_shape`` and ``num_classes`` (by these
    names; ``cardinalities`` too if it asks: the number of values of each index column of a
    data set such as MovieLens's users and items) and its options as keyword arguments. Class attributes ``batching`` ("vmap" or
    "loop") and ``chunk_size`` choose how the simulator trains it (``training.default_batching``)."""
    from meshlearn import plugins

    return plugins.build("model", name, kwargs, input_shape=tuple(input_shape), num_classes=num_classes,
                         cardinalities=cardinalities)


def num_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def _flat_size(shape: tuple[int, ...]) -> int:
    size = 1
    for dim in shape:
        size *= int(dim)
    return size


def _image_shape(shape: tuple[int, ...], model: str) -> tuple[int, int, int]:
    if len(shape) != 3 or shape[1] not in (28, 32) or shape[1] != shape[2]:
        raise ValueError(f"model {model!r} needs (channels, 28|32, 28|32) images, got input shape "
                         f"{tuple(shape)}; pick a dataset of 28×28 or 32×32 images or model.name = 'mlp'")
    return int(shape[0]), int(shape[1]), int(shape[2])
