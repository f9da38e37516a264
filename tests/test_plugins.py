"""Plug-ins (examples/plugins/ and small ones written here) on every engine, loaded by file
path and by module path, and the errors a user meets: a misspelt option at parse time, a
worker that cannot import a plug-in at start-up.

Engine runs are tiny (4-8 nodes, 2 rounds); their cost is the workers' start-up.
"""

from __future__ import annotations

import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import small_config
from meshlearn.config import ConfigError, load_config
from meshlearn.engines.processes import ProcessesEngine
from meshlearn.experiment import Experiment
from meshlearn.runner import run_experiment
from test_processes import RUN_ID, drive, records, run_processes, run_sim

PLUGINS = Path(__file__).resolve().parents[1] / "examples" / "plugins"
QUICK = ["rounds=1", "nodes=8", "evaluation.every=1", "evaluation.test_samples=100"]


def median_bundle(nodes: int, clique_size: int):
    """Every example plug-in but float16: median gossip over a ring of cliques, on the CSV
    digits cut into label blocks (file paths, and the partitioner by module path)."""
    return small_config(
        nodes=nodes, rounds=2, import_paths=[str(PLUGINS)], engine__timeout_s=60,
        sharing={"name": f"{PLUGINS}/median.py:MedianGossip"},
        data={"dataset": f"{PLUGINS}/csv_dataset.py:load_csv", "partition": "partitioner:label_blocks",
              "options": {"path": str(PLUGINS / "digits_200.csv"), "scale": 0.0625}},
        topology={"kind": f"{PLUGINS}/topology.py:ring_of_cliques", "options": {"clique_size": clique_size}})


def float16_config():
    return small_config(nodes=8, rounds=2, import_paths=[str(PLUGINS)], engine__timeout_s=60,
                        sharing={"name": "float16:Float16Sharing"})


def assert_engines_agree(sim, sim_reports, engine, reports, exact: bool) -> None:
    """Same final models (bit for bit when ``exact``), curve and bytes as the simulator."""
    assert engine.params is not None
    if exact:
        assert torch.equal(engine.params, sim.nodes.params)
    else:
        torch.testing.assert_close(engine.params, sim.nodes.params, rtol=0, atol=1e-6)
    start = sim.experiment.initial_params(list(range(sim.experiment.num_nodes)))
    assert (sim.nodes.params - start).abs().max() > 1e-3   # the models moved
    for a, b in zip(reports, sim_reports):
        np.testing.assert_array_equal(a.bytes_sent, b.bytes_sent)
        np.testing.assert_array_equal(a.header_bytes, b.header_bytes)
        np.testing.assert_array_equal(a.node_metrics["messages_missing"], 0)
    assert engine.message_bytes == sim.message_bytes > 0
    for a, b in zip(records(reports), records(sim_reports)):
        assert a["test_acc_mean"] == pytest.approx(b["test_acc_mean"], abs=1e-6)


# the example plug-ins give the simulator's run on worker processes and on Ray

@pytest.mark.parametrize("nodes, workers, clique", [(8, 2, 4), (4, 4, 2)], ids=["P=2", "P=N"])
def test_median_csv_blocks_cliques_on_processes(nodes, workers, clique):
    """Bit-identical models: the median selects received values (no sum whose order could
    differ), and every engine trains the same nodes on the same samples."""
    cfg = median_bundle(nodes, clique)
    sim, sim_reports = run_sim(cfg)
    assert len(sim.experiment.dataset.y_train) == 160   # the CSV's 200 rows less the 20 % test rows
    engine, reports, extra = run_processes(cfg, workers)
    assert extra["failures"] == [] and len(extra["workers"]) == workers
    assert_engines_agree(sim, sim_reports, engine, reports, exact=True)


def test_float16_on_processes():
    """Float16 messages are half the bytes of full sharing. Models agree to float32 rounding:
    both engines add a receiver's neighbours in increasing id, but the simulator in one
    scipy sparse product and a worker in torch, one message at a time, whose kernels may
    round a multiply-add differently."""
    cfg = float16_config()
    sim, sim_reports = run_sim(cfg)
    engine, reports, _ = run_processes(cfg, workers=2)
    assert_engines_agree(sim, sim_reports, engine, reports, exact=False)
    full, _ = run_sim(small_config(nodes=8, rounds=2, engine__timeout_s=60))
    assert full.message_bytes - 2 * sim.message_bytes == pytest.approx(0, abs=200)   # headers aside


def test_median_on_ray(ray_cluster):
    cfg = median_bundle(8, 4)
    sim, sim_reports = run_sim(cfg)
    engine = ProcessesEngine(Experiment.build(cfg), RUN_ID, placement="ray", workers=2, keep_models=True)
    reports, extra = drive(engine, cfg.rounds)
    assert extra["placement"] == "ray" and extra["failures"] == []
    assert_engines_agree(sim, sim_reports, engine, reports, exact=True)


# a user's subclass of a built-in

def test_fedavg_subclass_by_import_path_behaves_like_fedavg(tmp_path):
    (tmp_path / "my_federated.py").write_text(textwrap.dedent('''
        from meshlearn.algorithms import FedAvg


        class CountingFedAvg(FedAvg):
            """FedAvg that counts its rounds."""

            rounds_run = 0

            def round(self, nodes, rnd, ctx):
                self.rounds_run += 1
                return super().round(nodes, rnd, ctx)
    '''))
    common = dict(nodes=5, rounds=2, topology__kind="star", algorithm__client_fraction=0.5)
    ours = small_config(algorithm__name="my_federated:CountingFedAvg", import_paths=[str(tmp_path)], **common)
    sim, reports = run_sim(ours)
    reference, _ = run_sim(small_config(algorithm__name="fedavg", **common))
    assert sim.algorithm.rounds_run == 2 and type(sim.algorithm).__name__ == "CountingFedAvg"
    assert torch.equal(sim.nodes.params, reference.nodes.params)
    assert len(sim.experiment.parts[0]) == 0 and all(len(p) > 0 for p in sim.experiment.parts[1:])
    assert [r.evaluation.nodes.tolist() for r in reports if r.evaluation is not None] == [[0]] * 3


# errors at parse time

def test_misspelt_plugin_option_names_the_key_and_the_options():
    with pytest.raises(ConfigError) as err:
        small_config(topology={"kind": f"{PLUGINS}/topology.py:ring_of_cliques", "options": {"clique_sise": 4}})
    message = str(err.value)
    assert "topology.options.clique_sise is not an option" in message
    assert "clique_size = 4" in message and "interleave = True" in message


def test_config_relative_paths_work_from_another_directory(tmp_path, monkeypatch):
    """``file.py:Name`` plug-ins and ``ConfigPath`` options are relative to the config file,
    and ``package.module:Name`` imports from the config's folder, whatever the working directory."""
    folder = tmp_path / "experiment"
    (folder / "plugin_rules_pkg").mkdir(parents=True)
    (folder / "plugin_rules_pkg" / "__init__.py").write_text("")
    (folder / "plugin_rules_pkg" / "rules.py").write_text(textwrap.dedent('''
        from meshlearn.sharing import FullSharing


        class Silent(FullSharing):
            """Full sharing whose nodes ignore what they receive."""

            def aggregate(self, nodes, inbox):
                pass
    '''))
    (folder / "exp.toml").write_text('[sharing]\nname = "plugin_rules_pkg.rules:Silent"\n')
    monkeypatch.chdir(tmp_path)
    cfg = load_config(folder / "exp.toml", QUICK)
    assert cfg.sharing.implementation().__name__ == "Silent"
    sim, _ = run_sim(cfg)
    alone, _ = run_sim(load_config(folder / "exp.toml", QUICK + ["topology.kind='fully_connected'"]))
    assert torch.equal(sim.nodes.params, alone.nodes.params)   # nothing received counts, whatever the graph
    csv = load_config(PLUGINS / "csv_dataset.toml", QUICK)
    assert csv.data.dataset == f"{PLUGINS}/csv_dataset.py:load_csv"
    assert csv.data.options["path"] == str(PLUGINS / "digits_200.csv")
    assert Experiment.build(csv).dataset.x_train.shape == (150, 64)
    assert load_config(PLUGINS / "topology.toml", QUICK).topology.kind == f"{PLUGINS}/topology.py:ring_of_cliques"


# a worker that cannot import a plug-in

def test_worker_that_cannot_import_a_plugin_fails_the_run_at_start(tmp_path, capfd):
    folder = tmp_path / "plugins"
    folder.mkdir()
    (folder / "vanishing_rules.py").write_text(
        "from meshlearn.sharing import FullSharing\n\n\nclass Scheme(FullSharing):\n    pass\n")
    cfg = small_config(nodes=4, rounds=1, engine__name="processes", import_paths=[str(folder)],
                       sharing={"name": "vanishing_rules:Scheme"})
    folder.rename(tmp_path / "elsewhere")   # this process has imported it; the workers cannot
    with pytest.raises(ConfigError) as err:
        run_experiment(cfg, tmp_path / "run", workers=2)
    message = str(err.value)
    assert "could not load the config" in message and "worker" in message
    assert "sharing.name = 'vanishing_rules:Scheme' could not be imported" in message
    assert "No module named 'vanishing_rules'" in message
    assert "Traceback" not in message and "Traceback" not in capfd.readouterr().err
