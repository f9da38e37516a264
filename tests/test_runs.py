"""End to end: the CLI runs an experiment, writes a readable run directory, and plots it."""

import json

import pytest

from conftest import small_config
from meshlearn.cli import main
from meshlearn.results import read_jsonl
from meshlearn.runner import run_experiment

QUICK = ["--set", "nodes=8", "--set", "rounds=4", "--set", "evaluation.every=2",
         "--set", "topology.options.degree=3", "--set", "evaluation.test_samples=100", "--no-progress"]


def test_cli_run_writes_results_and_plot(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["run", "examples/quickstart.toml", "--out", str(out), *QUICK]) == 0
    rounds = read_jsonl(out / "rounds.jsonl")
    assert [r["round"] for r in rounds] == [0, 2, 4]
    assert rounds[-1]["bytes_sent_per_node"] > rounds[1]["bytes_sent_per_node"] > 0
    assert 0.0 <= rounds[-1]["test_acc_min"] <= rounds[-1]["test_acc_mean"] <= rounds[-1]["test_acc_max"] <= 1.0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["rounds_completed"] == 4
    assert summary["final"] == rounds[-1]
    nodes = read_jsonl(out / "nodes.jsonl")
    assert len(nodes) == 3 * 8 and {n["node"] for n in nodes} == set(range(8))
    final_nodes = json.loads((out / "nodes_final.json").read_text())
    assert sum(n["train_samples"] for n in final_nodes) > 1000
    assert "nodes = 8" in (out / "config.toml").read_text()
    assert "test accuracy" in capsys.readouterr().out
    png = tmp_path / "acc.png"
    assert main(["plot", str(out), "-o", str(png)]) == 0
    assert png.read_bytes()[:4] == b"\x89PNG"


def test_cli_reports_config_errors_without_traceback(tmp_path, capsys):
    assert main(["run", "examples/quickstart.toml", "--set", "topology.options.degree=64", "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "topology.options.degree" in err and "Traceback" not in err


def test_same_seed_same_results(tmp_path):
    def metrics(path):
        keep = ("test_acc_mean", "test_loss_mean", "consensus_distance", "avg_model_acc", "bytes_sent_per_node")
        return [{k: r[k] for k in keep} for r in read_jsonl(path / "rounds.jsonl")]

    for name in ("a", "b"):
        run_experiment(small_config(), tmp_path / name)
    run_experiment(small_config(seed=11), tmp_path / "c")
    assert metrics(tmp_path / "a") == metrics(tmp_path / "b")
    assert metrics(tmp_path / "a") != metrics(tmp_path / "c")


def test_interrupted_run_keeps_what_was_written(tmp_path):
    def stop_at_round_2(rnd, record):
        if rnd == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run_experiment(small_config(rounds=10), tmp_path, on_round=stop_at_round_2)
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["status"] == "interrupted" and summary["rounds_completed"] == 2
    assert [r["round"] for r in read_jsonl(tmp_path / "rounds.jsonl")] == [0, 1, 2]


def test_evaluation_subsets_are_reported(tmp_path):
    run_experiment(small_config(evaluation={"every": 1, "nodes": 3, "test_samples": 50}), tmp_path)
    last = read_jsonl(tmp_path / "rounds.jsonl")[-1]
    assert (last["eval_nodes"], last["eval_samples"]) == (3, 50)
    assert len({n["node"] for n in read_jsonl(tmp_path / "nodes.jsonl")}) == 3


@pytest.mark.realdata
def test_real_fashion_mnist_run_learns(tmp_path):
    """A short D-PSGD run on the real Fashion-MNIST (Debian's dataset-fashion-mnist)."""
    import os

    from meshlearn.config import ConfigError

    try:
        cfg = small_config(data={"dataset": "fashion-mnist", "partition": "shards", "shards_per_node": 2,
                                 "options": {"limit_train": 4000, "limit_test": 1000}},
                           model={"name": "logreg"}, rounds=10, evaluation={"every": 5})
    except ConfigError:
        if os.environ.get("CI"):
            raise  # CI installs the package, so missing files are a failure there
        pytest.skip("real Fashion-MNIST not installed (apt-get install dataset-fashion-mnist)")
    run_experiment(cfg, tmp_path)
    first, *_, last = read_jsonl(tmp_path / "rounds.jsonl")
    assert last["eval_samples"] == 1000
    assert last["test_acc_mean"] > max(0.4, first["test_acc_mean"] + 0.2)  # chance is 0.1
