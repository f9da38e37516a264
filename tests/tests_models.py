"""A tiny CNN for 8×8 digits, loaded through the model import-path hook in tests."""

from torch import nn


class TinyConv(nn.Module):
    def __init__(self, input_shape, num_classes):
        super().__init__()
        self.conv = nn.Conv2d(input_shape[0], 4, 3, padding=1)
        self.pool = nn.MaxPool2d(2)
        self.fc = nn.Linear(4 * (input_shape[1] // 2) * (input_shape[2] // 2), num_classes)

    def forward(self, x):
        return self.fc(self.pool(self.conv(x).relu()).flatten(1))


class DropoutConv(TinyConv):
    """TinyConv with dropout before its head: a model that draws random numbers in training."""

    batching = "loop"

    def __init__(self, input_shape, num_classes):
        super().__init__(input_shape, num_classes)
        self.drop = nn.Dropout(0.5)

    def forward(self, x):
        return self.fc(self.drop(self.pool(self.conv(x).relu()).flatten(1)))
