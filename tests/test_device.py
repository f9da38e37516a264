"""``engine.device``: the simulator's models, state, data, mixing and evaluation on an
accelerator give the CPU's results within float tolerance. The device is a parameter: the
CUDA cases run where torch has CUDA and skip elsewhere."""

import json

import pytest
import torch

from conftest import small_config
from meshlearn.config import ConfigError
from meshlearn.engines.reference import ReferenceDPSGD
from meshlearn.engines.sim import SimEngine
from meshlearn.experiment import Experiment
from meshlearn.results import read_jsonl
from meshlearn.runner import run_experiment

HAS_CUDA = torch.cuda.is_available()
DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(not HAS_CUDA, reason="no CUDA device"))]
TOLERANCE = 1e-4
"""Largest difference to the CPU's models after three rounds: float32 reductions run in another order
on a GPU (TF32 is turned off for the comparison)."""


@pytest.fixture(autouse=True)
def _exact_float32(monkeypatch):
    if HAS_CUDA:
        monkeypatch.setattr(torch.backends.cuda.matmul, "allow_tf32", False)
        monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("overrides", [
    {},
    {"training__optimizer": "adam", "training__lr": 1e-3, "training__local_epochs": 0.5, "training__local_steps": None},
    {"engine__batching": "loop", "model__name": "tests_models:TinyConv", "model__options": {}},
], ids=["sgd", "adam-epochs", "conv-loop"])
def test_sim_on_device_matches_reference_loop(device, overrides):
    cfg = small_config(**overrides, engine__device=device, engine__chunk_size=3)
    exp = Experiment.build(cfg)
    assert exp.device.type == device
    sim, ref = SimEngine(exp), ReferenceDPSGD(Experiment.build(small_config(**overrides, engine__chunk_size=3)))
    assert sim.nodes.params.device.type == device and sim.trainer.x_train.device.type == device
    for rnd in range(1, 4):
        sim.run_round(rnd)
        ref.run_round(rnd)
    assert sim.nodes.params.device.type == device
    assert (sim.nodes.params.cpu() - ref.params()).abs().max().item() <= TOLERANCE
    start = exp.initial_params(list(range(cfg.nodes))).cpu()
    assert (sim.nodes.params.cpu() - start).abs().max().item() > 1e-3   # the models moved


@pytest.mark.skipif(not HAS_CUDA, reason="no CUDA device")
@pytest.mark.parametrize("overrides", [
    {},
    {"aggregation": {"name": "trimmed_mean", "options": {"trim": 1}}},
    {"availability": {"model": "sessions", "mean_online": 3, "mean_offline": 1}},
    {"algorithm__name": "ditto", "algorithm__lam": 0.1, "evaluation__local_test": 0.2},
    {"sharing": {"name": "topk", "options": {"fraction": 0.1, "support": "bitmask"}}},
    {"sharing": {"name": "choco", "options": {"compressor": {"name": "qsgd", "options": {"levels": 3}}}}},
], ids=["dpsgd", "trimmed-mean", "churn", "ditto", "topk-bitmask", "choco-qsgd"])
def test_whole_run_on_cuda_matches_cpu(tmp_path, overrides):
    records = {}
    for device in ("cpu", "cuda"):
        run_experiment(small_config(**overrides, engine__device=device), tmp_path / device)
        records[device] = read_jsonl(tmp_path / device / "rounds.jsonl")
        assert json.loads((tmp_path / device / "summary.json").read_text())["device"].startswith(device)
    assert len(records["cpu"]) == len(records["cuda"]) > 1
    for cpu, cuda in zip(records["cpu"], records["cuda"]):
        assert cpu["bytes_sent_per_node"] == cuda["bytes_sent_per_node"]
        for key in ("test_acc_mean", "test_loss_mean", "train_loss_mean"):
            if cpu.get(key) is not None:
                assert cuda[key] == pytest.approx(cpu[key], abs=1e-3), key


@pytest.mark.skipif(not HAS_CUDA, reason="no CUDA device")
def test_processes_workers_on_cuda_match_the_simulator_on_cpu():
    from test_processes import records, run_processes, run_sim

    sim, sim_reports = run_sim(small_config())
    engine, reports, _ = run_processes(small_config(engine__device="cuda"), workers=2)
    assert (engine.params - sim.nodes.params).abs().max().item() <= TOLERANCE
    for ours, theirs in zip(reports, sim_reports):
        assert ours.nodes.tolist() == theirs.nodes.tolist() and ours.bytes_sent.tolist() == theirs.bytes_sent.tolist()
    for ours, theirs in zip(records(reports), records(sim_reports)):
        assert ours["test_acc_mean"] == pytest.approx(theirs["test_acc_mean"], abs=1e-3)


def test_auto_takes_cuda_only_where_there_is_one():
    exp = Experiment.build(small_config(engine__device="auto"))
    assert exp.device.type == ("cuda" if HAS_CUDA else "cpu")
    async_run = small_config(engine__device="auto", algorithm__name="gossip")
    assert Experiment.build(async_run).device.type == "cpu"   # the event-driven simulator trains on the CPU
    ray_run = small_config(engine__device="auto", engine__name="ray")
    assert Experiment.build(ray_run).device.type == "cpu"     # Ray actors get GPUs when asked: device = 'cuda'


@pytest.mark.parametrize("overrides, says", [
    ({"engine__device": "cuda:0", "engine__name": "ray"}, "Ray chooses the GPU"),
    ({"engine__device": "cuda", "algorithm__name": "gossip"}, "synchronous algorithms"),
    pytest.param({"engine__device": "cuda"}, "has no CUDA device",
                 marks=pytest.mark.skipif(HAS_CUDA, reason="this machine has CUDA")),
    ({"engine__device": "cuda:99"}, "CUDA device" if HAS_CUDA else "has no CUDA device"),
])
def test_unusable_device_is_refused_naming_the_key(overrides, says):
    with pytest.raises(ConfigError, match="engine.device") as error:
        Experiment.build(small_config(**overrides))
    assert says in str(error.value)


def test_misspelled_device_is_refused():
    with pytest.raises(ConfigError, match="engine.device"):
        small_config(engine__device="gpu")
