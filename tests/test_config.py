"""Config validation: bad input fails before any work, naming the key and the fix."""

from pathlib import Path

import pytest

from meshlearn.config import ConfigError, apply_overrides, load_config, parse_config
from meshlearn.experiment import Experiment

EXAMPLES = Path(__file__).parent.parent / "examples"


def test_quickstart_is_valid_and_round_trips(tmp_path):
    import tomli_w

    cfg = load_config(EXAMPLES / "quickstart.toml")
    assert (cfg.nodes, cfg.topology.kind, cfg.topology.options, cfg.data.partition) == \
        (64, "regular", {"degree": 4}, "dirichlet")
    path = tmp_path / "resolved.toml"
    path.write_text(tomli_w.dumps(cfg.to_toml_dict()))
    assert load_config(path) == cfg


@pytest.mark.parametrize("raw, key, hint", [
    ({"nodes": 8, "topology": {"kind": "regular", "degree": 8}}, "topology.options.degree", "lower the degree"),
    ({"nodes": 7, "topology": {"kind": "regular", "options": {"degree": 3}}}, "topology.options.degree", "even"),
    ({"topology": {"kind": "ring", "options": {"degree": 3}}}, "topology.options.degree", "not an option"),
    ({"topology": {"kind": "hypercube"}}, "hypercube", "ring"),
    ({"trainig": {"lr": 0.1}}, "trainig", "unknown key"),
    ({"training": {"lr": "fast"}}, "training.lr", "number"),
    ({"training": {"lr": -1}}, "training.lr", "greater than 0"),
    ({"nodes": 0}, "nodes", "greater than or equal to 1"),
    ({"data": {"partition": "random"}}, "data.partition", "dirichlet"),
    ({"data": {"dataset": "imagenet"}}, "data.dataset", "digits"),
    ({"data": {"dataset": "cifar10", "root": "/nonexistent"}}, "data.root", "cifar-10"),
    ({"training": {"nesterov": True}}, "training.optimizer_options", "momentum > 0"),
    ({"training": {"optimizer": "adam", "momentum": 0.9}}, "training.optimizer_options.momentum", "betas"),
    ({"model": {"name": "mlp", "options": {"hiden": [8]}}}, "model.options.hiden", "hidden = [64]"),
    ({"algorithm": {"name": "nowhere.rules:Median"}}, "algorithm.name", "could not be imported"),
    ({"algorithm": {"name": "meshlearn.sharing:FullSharing"}}, "algorithm.name", "not a subclass"),
    ({"evaluation": {"nodes": 100}}, "evaluation.nodes", "0 for all"),
    ({"topology": {"kind": "file"}}, "topology.path", "topology.path"),
    ({"training": {"local_steps": 5, "local_epochs": 1}}, "training.local_epochs", "only one"),
    ({"training": {"optimizer": "adam", "betas": [1.0, 0.9]}}, "training.optimizer_options", "[0, 1)"),
    ({"sharing": {"name": "choco"}, "network": {"loss": 0.1}}, "sharing.name", "network.loss = 0"),
    ({"network": {"classes": {"slow": {"nodes": [99], "latency_ms": 5}}}}, "network.classes.slow", "outside"),
    ({"network": {"file": "/nonexistent.csv"}}, "network.file", "src,dst"),
    ({"network": {"loss": 1.0}}, "network.loss", "less than 1"),
    ({"engine": {"name": "mpi"}}, "engine.name", "processes"),
])
def test_invalid_configs_name_the_key(raw, key, hint):
    with pytest.raises(ConfigError) as err:
        parse_config(raw)
    message = str(err.value)
    assert key in message and hint.lower() in message.lower(), message


def test_partition_leaving_a_node_without_data_fails_before_training():
    cfg = parse_config({"nodes": 400, "data": {"partition": "shards", "shards_per_node": 5},
                        "topology": {"kind": "ring"}})
    with pytest.raises(ConfigError, match="shards_per_node"):
        Experiment.build(cfg)


@pytest.mark.parametrize("model, hint", [
    ({"name": "char_lstm"}, "does not run on data.dataset"),
    ({"name": "mlp", "options": {"hidden": [16], "dropout": 0.5}}, "dropout"),
    ({"name": "femnist_cnn"}, "28×28"),
])
def test_model_that_does_not_fit_the_data_fails_before_training(model, hint):
    with pytest.raises(ConfigError, match="model.name") as err:
        Experiment.build(parse_config({"model": model}))
    assert hint in str(err.value)


def test_overrides_parse_toml_values_and_reject_junk():
    raw = apply_overrides({"training": {"lr": 0.1}}, ["training.lr=0.5", "nodes=12", "name=run-a",
                                                       "model.options.hidden=[32, 16]"])
    assert raw == {"training": {"lr": 0.5}, "nodes": 12, "name": "run-a",
                   "model": {"options": {"hidden": [32, 16]}}}
    with pytest.raises(ConfigError, match="key=value"):
        apply_overrides({}, ["training.lr"])


def test_missing_or_malformed_file(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "nope.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text("nodes = = 3")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(bad)
