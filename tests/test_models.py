"""Model zoo: shapes, parameter counts of the reference architectures, import-path hook."""

import pytest
import torch

from meshlearn import models


@pytest.mark.parametrize("name, shape, classes", [
    ("logreg", (1, 8, 8), 10), ("mlp", (1, 28, 28), 10), ("lenet", (1, 28, 28), 10),
    ("lenet", (3, 32, 32), 10), ("femnist_cnn", (1, 28, 28), 62), ("resnet", (3, 32, 32), 10),
    ("resnet", (1, 28, 28), 62),
])
def test_forward_shapes(name, shape, classes):
    model = models.build(name, shape, classes)
    assert model(torch.rand(5, *shape)).shape == (5, classes)


def test_reference_parameter_counts():
    assert models.num_parameters(models.build("femnist_cnn", (1, 28, 28), 62)) == 1_690_046  # ≈1.7 M
    assert models.num_parameters(models.build("lenet", (1, 28, 28), 10)) == 61_706            # LeNet-5
    resnet20 = models.build("resnet", (3, 32, 32), 10)
    assert models.num_parameters(resnet20) == 269_722 and not list(resnet20.buffers())   # He et al.: 0.27 M
    # ResNet-8 by hand: stem 3·16·9 + 32, one block per stage (16→16: 2·(2304 + 32); 16→32: 4608 + 9216
    # + 2·64; 32→64: 18432 + 36864 + 2·128), head 64·10 + 10
    assert models.num_parameters(models.build("resnet", (3, 32, 32), 10, depth=8)) == 464 + 4672 + 13952 + 55552 + 650
    lstm = models.build("char_lstm", (80,), 80)
    assert lstm(torch.randint(0, 80, (3, 80))).shape == (3, 80)


def test_import_path_and_errors():
    model = models.build("tests_models:TinyConv", (1, 8, 8), 10)
    assert model(torch.rand(2, 1, 8, 8)).shape == (2, 10)
    with pytest.raises(ValueError, match="model.name"):
        models.build("resnet1000", (1, 8, 8), 10)
    with pytest.raises(ValueError, match="could not be imported"):
        models.build("nowhere.module:Net", (1, 8, 8), 10)
    with pytest.raises(ValueError, match="28×28 or 32×32"):
        models.build("femnist_cnn", (1, 8, 8), 10)
    with pytest.raises(ValueError, match="depth = 10: a CIFAR ResNet has depth 6n"):
        models.build("resnet", (3, 32, 32), 10, depth=10)
