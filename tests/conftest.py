import pytest
import torch

from meshlearn.config import parse_config


@pytest.fixture(autouse=True)
def _single_thread():
    """Tests compare floats across code paths; pin threads so reductions are repeatable."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def small_config(**overrides):
    """A seconds-long experiment on bundled digits; keyword overrides use section__key names."""
    raw = {
        "name": "small", "seed": 3, "nodes": 8, "rounds": 3,
        "data": {"dataset": "digits", "partition": "dirichlet", "alpha": 1.0},
        "topology": {"kind": "regular", "degree": 3},
        "model": {"name": "mlp", "options": {"hidden": [16]}},
        "training": {"local_steps": 3, "batch_size": 8, "lr": 0.05},
        "evaluation": {"every": 1, "test_samples": 100},
    }
    for key, value in overrides.items():
        section, _, leaf = key.partition("__")
        if leaf:
            raw.setdefault(section, {})[leaf] = value
        else:
            raw[section] = value
    return parse_config(raw)
