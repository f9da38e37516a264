"""Every example config under examples/ is valid; the ones on bundled data build and run."""

from pathlib import Path

import pytest

from meshlearn.config import load_config
from meshlearn.experiment import Experiment
from meshlearn.results import read_jsonl
from meshlearn.runner import run_experiment

EXAMPLES = Path(__file__).parent.parent / "examples"
CONFIGS = sorted(EXAMPLES.rglob("*.toml"))
QUICK = ["rounds=2", "evaluation.every=1", "evaluation.test_samples=100"]


def test_there_are_examples():
    names = {str(p.relative_to(EXAMPLES)) for p in CONFIGS}
    assert {"quickstart.toml", "topologies/dynamic_regular.toml", "topologies/epidemic.toml",
            "topologies/schedule.toml", "topologies/fedavg.toml"} <= names


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: str(p.relative_to(EXAMPLES)))
def test_example_config_is_valid(path):
    cfg = load_config(path, check_files=False)   # real datasets may not be installed here
    assert cfg.name and cfg.rounds >= 1
    if cfg.data.dataset == "digits":   # bundled: also load the data, partition it, draw the graphs
        Experiment.build(cfg)


@pytest.mark.parametrize("path", sorted((EXAMPLES / "topologies").glob("*.toml")), ids=lambda p: p.stem)
def test_topology_examples_run(path, tmp_path):
    cfg = load_config(path, QUICK)
    summary = run_experiment(cfg, tmp_path)
    assert summary["status"] == "completed"
    last = read_jsonl(tmp_path / "rounds.jsonl")[-1]
    assert last["round"] == 2 and last["bytes_sent_per_node"] > 0 and "spectral_gap" in last
