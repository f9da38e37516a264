"""The Python API: meshlearn.run / load_run, Run's tables and final models, callbacks and loggers."""

from __future__ import annotations

import json
import random
import sys
import tempfile

import numpy as np
import pandas as pd
import pytest
import tomli_w
import torch
from conftest import small_config
from safetensors.torch import load_file

import meshlearn
from meshlearn.callbacks import Callback, CSVLogger, TensorBoardLogger, WandbLogger
from meshlearn.cli import main
from meshlearn.config import ConfigError
from meshlearn.engines import SimEngine
from meshlearn.evaluation import Evaluator
from meshlearn.experiment import Experiment
from meshlearn.results import read_jsonl

TINY = {"nodes": 4, "rounds": 2}


def raw_config(**overrides) -> dict:
    """A tiny experiment as a raw config dict (what a TOML file holds)."""
    return small_config(**{**TINY, **overrides}).to_toml_dict()


def flat(models: list[dict[str, torch.Tensor]], layout) -> torch.Tensor:
    """(N, P) parameter matrix of per-node state dicts, in the engine's layout."""
    return torch.stack([torch.cat([m[name].reshape(-1) for name in layout.names]) for m in models])


def test_run_from_dict_returns_tables_and_the_engines_final_models(tmp_path, monkeypatch):
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))   # where the run's temporary directory goes
    run = meshlearn.run(raw_config(), rounds=3, training__lr=0.1, **{"evaluation.every": 2})
    cfg = run.config
    assert (cfg.rounds, cfg.training.lr, cfg.evaluation.every) == (3, 0.1, 2)
    assert run.dir is None and list(tmp_path.iterdir()) == []   # nothing left on disk
    assert run.summary["status"] == "completed" and run.summary["rounds_completed"] == 3
    assert run.rounds["round"].tolist() == [0, 2, 3]
    assert {"test_acc_mean", "test_acc_min", "test_acc_max", "consensus_distance", "bytes_sent_per_node",
            "avg_model_acc"} <= set(run.rounds.columns)
    assert run.rounds["test_acc_mean"].iloc[-1] == run.summary["final"]["test_acc_mean"]
    assert len(run.nodes) == cfg.nodes * len(run.rounds)
    assert sorted(run.nodes.loc[run.nodes["round"] == 3, "node"]) == list(range(cfg.nodes))

    sim = SimEngine(Experiment.build(cfg))
    for rnd in range(cfg.rounds + 1):
        sim.step(rnd)
    models = run.models()
    shapes = {name: p.shape for name, p in sim.experiment.model.named_parameters()}
    assert len(models) == cfg.nodes
    assert all({name: t.shape for name, t in m.items()} == shapes for m in models)
    assert torch.equal(flat(models, sim.experiment.layout), sim.nodes.params)
    start = sim.experiment.initial_params(list(range(cfg.nodes)))
    assert not torch.equal(sim.nodes.params, start)   # the models trained: the comparison is not vacuous


def test_run_from_toml_writes_a_directory_that_reopens(tmp_path):
    path = tmp_path / "exp.toml"
    path.write_text(tomli_w.dumps(raw_config()))
    out = tmp_path / "run"
    run = meshlearn.run(path, out=out, model__options={"hidden": [8]})
    assert run.dir == out and run.config.model.options == {"hidden": [8]}
    records = read_jsonl(out / "rounds.jsonl")
    assert list(run.rounds.columns) == list(records[0])
    assert run.rounds["test_acc_mean"].tolist() == [r["test_acc_mean"] for r in records]
    stored = load_file(out / "models.safetensors")
    models = run.models()
    assert set(stored) == set(models[0])
    for name, tensor in stored.items():
        assert torch.equal(tensor, torch.stack([m[name] for m in models]))
    # the stored models are the ones evaluated: their average scores the recorded accuracy
    experiment = Experiment.build(run.config)
    acc, _ = Evaluator(experiment).models(flat(models, experiment.layout).mean(0, keepdim=True))
    assert float(acc[0]) == run.summary["final"]["avg_model_acc"]

    again = meshlearn.load_run(out)
    pd.testing.assert_frame_equal(again.rounds, run.rounds)
    pd.testing.assert_frame_equal(again.nodes, run.nodes)
    assert again.summary == run.summary == json.loads((out / "summary.json").read_text())
    assert again.config == run.config
    assert all(torch.equal(a[name], b[name]) for a, b in zip(again.models(), models) for name in a)


def test_run_leaves_the_callers_threads_and_random_generators_alone():
    torch.manual_seed(123)
    np.random.seed(5)
    random.seed(7)
    threads, torch_rng, numpy_rng, python_rng = (torch.get_num_threads(), torch.get_rng_state(),
                                                 np.random.get_state(), random.getstate())
    run = meshlearn.run(small_config(**TINY, engine__threads=threads + 1))
    assert run.summary["torch_threads"] == threads + 1   # the run did use its own setting
    assert torch.get_num_threads() == threads
    assert torch.equal(torch.get_rng_state(), torch_rng)
    after = np.random.get_state()
    assert after[0] == numpy_rng[0] and np.array_equal(after[1], numpy_rng[1]) and after[2:] == numpy_rng[2:]
    assert random.getstate() == python_rng


class Recorder(Callback):
    def __init__(self, stop_at: int | None = None):
        self.events, self.stop_at, self.summary = [], stop_at, None

    def on_start(self, config):
        self.events.append(("start", config.rounds))

    def on_evaluate(self, record):
        self.events.append(("evaluate", record["round"]))

    def on_round(self, rnd, record):
        self.events.append(("round", rnd, None if record is None else record["round"]))
        if rnd == self.stop_at:
            raise KeyboardInterrupt

    def on_end(self, summary):
        self.events.append(("end", summary["status"]))
        self.summary = summary


def test_callbacks_are_called_in_order(tmp_path):
    first, second = Recorder(), Recorder()
    run = meshlearn.run(raw_config(), out=tmp_path, rounds=3, evaluation__every=2, callbacks=[first, second])
    assert first.events == second.events == [
        ("start", 3), ("evaluate", 0), ("round", 1, None), ("evaluate", 2), ("round", 2, 2),
        ("evaluate", 3), ("round", 3, 3), ("end", "completed")]
    assert first.summary == run.summary


def test_a_stopped_run_ends_its_callbacks_and_has_no_final_models(tmp_path):
    recorder = Recorder(stop_at=1)
    with pytest.raises(KeyboardInterrupt):
        meshlearn.run(raw_config(), out=tmp_path, callbacks=[recorder])
    assert recorder.events[-1] == ("end", "interrupted")
    run = meshlearn.load_run(tmp_path)
    assert run.summary["status"] == "interrupted" and run.rounds["round"].tolist() == [0, 1]
    with pytest.raises(FileNotFoundError, match="no final models"):
        run.models()


def test_tensorboard_logger_writes_scalars_tensorboard_reads(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run = meshlearn.run(raw_config(), rounds=3, evaluation__every=2, callbacks=[TensorBoardLogger(tmp_path)])
    events = EventAccumulator(str(tmp_path))
    events.Reload()
    tags = {"test_acc_mean", "test_acc_min", "test_acc_max", "test_loss_mean", "consensus_distance",
            "bytes_sent_per_node", "avg_model_acc"}
    assert tags <= set(events.Tags()["scalars"])
    for tag in tags:
        scalars = events.Scalars(tag)
        assert [s.step for s in scalars] == run.rounds["round"].tolist()
        np.testing.assert_allclose([s.value for s in scalars], run.rounds[tag], rtol=1e-6)


def test_csv_logger_file_reads_back_with_pandas(tmp_path):
    path = tmp_path / "logs" / "rounds.csv"
    run = meshlearn.run(raw_config(), evaluation__every=1, callbacks=[CSVLogger(path)])
    table = pd.read_csv(path)
    assert list(table.columns) == list(run.rounds.columns)
    assert table["round"].tolist() == run.rounds["round"].tolist() == [0, 1, 2]
    for column in ("test_acc_mean", "test_loss_max", "consensus_distance", "bytes_sent_per_node"):
        np.testing.assert_allclose(table[column], run.rounds[column], rtol=1e-12)


def test_cli_log_writes_under_the_run_directory(tmp_path, capsys):
    path = tmp_path / "exp.toml"
    path.write_text(tomli_w.dumps(raw_config()))
    out = tmp_path / "run"
    assert main(["run", str(path), "--out", str(out), "--log", "tensorboard", "--log", "csv", "--no-progress"]) == 0
    assert "results:" in capsys.readouterr().out
    assert list((out / "tensorboard").glob("events.out.tfevents.*"))
    assert pd.read_csv(out / "rounds.csv")["round"].tolist() == [r["round"] for r in read_jsonl(out / "rounds.jsonl")]
    assert len(load_file(out / "models.safetensors")["net.0.weight"]) == 4


def test_missing_wandb_is_a_clear_error(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "wandb", None)   # import wandb fails as if not installed
    with pytest.raises(ImportError, match=r"pip install 'meshlearn\[wandb\]'"):
        WandbLogger()
    path = tmp_path / "exp.toml"
    path.write_text(tomli_w.dumps(raw_config()))
    assert main(["run", str(path), "--out", str(tmp_path / "run"), "--log", "wandb"]) == 2
    err = capsys.readouterr().err
    assert "meshlearn[wandb]" in err and "Traceback" not in err


def test_wandb_logger_records_offline(tmp_path, monkeypatch):
    pytest.importorskip("wandb")
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    meshlearn.run(raw_config(), callbacks=[WandbLogger(project="meshlearn-test", dir=str(tmp_path))])
    files = list(tmp_path.glob("wandb/offline-run-*/run-*.wandb"))
    assert len(files) == 1
    assert b"test_acc_mean" in files[0].read_bytes()


def test_bad_overrides_name_the_key():
    with pytest.raises(ConfigError, match="training.lr"):
        meshlearn.run(raw_config(), training__lr=-1.0)
    with pytest.raises(ConfigError, match="'rounds' is not a section"):
        meshlearn.run(raw_config(), rounds__every=2)
    with pytest.raises(ConfigError, match="not found"):
        meshlearn.run("no/such/config.toml")


@pytest.mark.slow   # starts worker processes
def test_processes_engine_final_models_match_the_simulator():
    sim = meshlearn.run(raw_config())
    procs = meshlearn.run(raw_config(), engine__name="processes", engine__workers=2)
    assert procs.summary["status"] == "completed" and len(procs.summary["workers"]) == 2
    for a, b in zip(procs.models(), sim.models(), strict=True):
        for name in b:
            torch.testing.assert_close(a[name], b[name], rtol=0, atol=1e-5)
