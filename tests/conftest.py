import psutil
import pytest
import torch

from meshlearn.config import (AlgorithmConfig, DataConfig, ModelConfig, SharingConfig, TopologyConfig, TrainingConfig,
                              parse_config)


@pytest.fixture(autouse=True, scope="session")
def _dataset_cache(tmp_path_factory):
    """Parsed data sets go to a folder of this session (worker processes inherit it), not the user's."""
    import os

    os.environ["MESHLEARN_CACHE"] = str(tmp_path_factory.mktemp("cache"))
    yield


@pytest.fixture(autouse=True)
def _single_thread():
    """Tests compare floats across code paths; pin threads so reductions are repeatable."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def alive(pids) -> list[int]:
    """Those of ``pids`` whose process still runs (zombies count as gone)."""
    out = []
    for pid in pids:
        try:
            if psutil.Process(pid).status() != psutil.STATUS_ZOMBIE:
                out.append(pid)
        except psutil.NoSuchProcess:
            pass
    return out


@pytest.fixture(scope="module")
def ray_cluster():
    """A local Ray instance for the tests of one module (Ray starts offline in a few seconds); it
    declares 2 GPUs, which only actors that ask for one are given."""
    ray = pytest.importorskip("ray")
    ray.init(num_cpus=2, num_gpus=2, include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()


# where a section keeps the options of the module it names
_OPTIONS = {"data": "partition_options", "topology": "options", "training": "optimizer_options",
            "algorithm": "options", "sharing": "options", "model": "options"}
_SECTIONS = {"data": DataConfig, "topology": TopologyConfig, "training": TrainingConfig,
             "algorithm": AlgorithmConfig, "sharing": SharingConfig, "model": ModelConfig}


def small_config(**overrides):
    """A seconds-long experiment on bundled digits; keyword overrides use section__key names
    (a key that is not a field of its section is one of the named module's options; None unsets)."""
    raw = {
        "name": "small", "seed": 3, "nodes": 8, "rounds": 3,
        "data": {"dataset": "digits", "partition": "dirichlet", "partition_options": {"alpha": 1.0}},
        "topology": {"kind": "regular", "options": {"degree": 3}},
        "model": {"name": "mlp", "options": {"hidden": [16]}},
        "training": {"local_steps": 3, "batch_size": 8, "lr": 0.05},
        "evaluation": {"every": 1, "test_samples": 100},
    }
    for key, value in overrides.items():
        section, _, leaf = key.partition("__")
        if not leaf:
            raw[section] = value
            continue
        table = raw.setdefault(section, {})
        if section in _OPTIONS and leaf not in _SECTIONS[section].model_fields:
            table = table.setdefault(_OPTIONS[section], {})
        if value is None:
            table.pop(leaf, None)
        else:
            table[leaf] = value
        if section in ("topology", "data") and leaf in ("kind", "partition"):
            raw[section].pop(_OPTIONS[section], None)   # another module: its own options
    return parse_config(raw)
