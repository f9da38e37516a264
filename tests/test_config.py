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


def test_old_flat_configs_still_load():
    """Configs written before the options tables (module options as section keys): keys the
    module takes move into its table; others are dropped when they hold the old default (old
    resolved configs listed every key) and refused otherwise."""
    old = {"data": {"dataset": "digits", "partition": "iid", "alpha": 0.5, "shards_per_node": 2},
           "topology": {"kind": "ring", "degree": 4},
           "training": {"optimizer": "adam", "momentum": 0.0, "nesterov": False, "weight_decay": 0.0,
                        "betas": [0.9, 0.99], "eps": 1e-8},
           "sharing": {"name": "topk", "fraction": 0.2}}
    cfg = parse_config(old, check_files=False)
    assert cfg.topology.options == {} and cfg.data.partition_options == {}
    assert cfg.training.optimizer_options == {"betas": [0.9, 0.99], "eps": 1e-8, "weight_decay": 0.0}
    assert cfg.sharing.options == {"fraction": 0.2, "error_feedback": False, "support": "smaller"}
    with pytest.raises(ConfigError, match="topology.options.degree is not an option of topology.kind = 'ring'"):
        parse_config({"topology": {"kind": "ring", "degree": 8}}, check_files=False)
    with pytest.raises(ConfigError, match="keep only options.fraction"):
        parse_config({"sharing": {"name": "topk", "fraction": 0.2, "options": {"fraction": 0.3}}}, check_files=False)


@pytest.mark.parametrize("override", ["topology.kind=ring", "data.partition=iid", "training.optimizer=adam",
                                      "sharing.name=full"])
def test_naming_another_module_drops_the_options_of_the_previous_one(override):
    base = load_config(EXAMPLES / "sharing" / "choco.toml", ["training.optimizer_options.momentum=0.9"])
    raw = apply_overrides(base.to_toml_dict(), [override])
    cfg = parse_config(raw, check_files=False)
    section, _, value = override.partition("=")
    assert str(cfg.model_dump()[section.split(".")[0]][section.split(".")[1]]) == value
    kept = parse_config(apply_overrides(base.to_toml_dict(), ["sharing.name=choco"]), check_files=False)
    assert kept.sharing.options == base.sharing.options   # the same module keeps its options


def test_abstract_or_foreign_plugins_are_config_errors(tmp_path):
    (tmp_path / "half.py").write_text("from meshlearn.sharing import Sharing\n\n\n"
                                      "class Half(Sharing):\n    def encode(self, nodes, rnd):\n        return {}\n")
    (tmp_path / "exp.toml").write_text('[sharing]\nname = "half.py:Half"\n')
    with pytest.raises(ConfigError, match="sharing.name = '.*half.py:Half' is abstract: implement aggregate"):
        load_config(tmp_path / "exp.toml")
    with pytest.raises(ConfigError, match="is abstract: implement on_trained"):
        parse_config({"algorithm": {"name": "meshlearn.algorithms:AsyncAlgorithm"}}, check_files=False)


def test_import_paths_are_relative_to_the_config_file(tmp_path, monkeypatch):
    (tmp_path / "lib").mkdir()
    (tmp_path / "lib" / "paths_rules.py").write_text(
        "from meshlearn.sharing import FullSharing\n\n\nclass Mine(FullSharing):\n    pass\n")
    (tmp_path / "conf").mkdir()
    (tmp_path / "conf" / "exp.toml").write_text('import_paths = ["../lib"]\n[sharing]\nname = "paths_rules:Mine"\n')
    monkeypatch.chdir("/")
    cfg = load_config(tmp_path / "conf" / "exp.toml")
    assert cfg.import_paths == [str((tmp_path / "lib").resolve())]
    assert cfg.sharing.implementation().__name__ == "Mine"


def test_entries_registered_by_hand_travel_as_import_paths(tmp_path, monkeypatch):
    """A scheme put into the registry in the launching process is recorded by import path, so
    that workers load the same class (or fail saying they cannot), never the stock one."""
    from meshlearn import sharing

    (tmp_path / "registered_rules.py").write_text(
        "from meshlearn.sharing import FullSharing\n\n\nclass Loud(FullSharing):\n    pass\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    from registered_rules import Loud

    monkeypatch.setitem(sharing.SHARINGS, "full", Loud)
    cfg = parse_config({"sharing": {"name": "full"}}, check_files=False)
    assert cfg.sharing.name == "registered_rules:Loud"
    monkeypatch.setitem(sharing.SHARINGS, "full", sharing.FullSharing)
    assert parse_config(cfg.to_toml_dict(), check_files=False).sharing.implementation() is Loud


@pytest.mark.parametrize("network", [{"latency_ms": float("inf")}, {"bandwidth_mbps": float("nan")},
                                     {"classes": {"slow": {"nodes": [1], "latency_ms": float("inf")}}}])
def test_a_network_that_never_delivers_is_refused(network):
    with pytest.raises(ConfigError, match=r"network\.(classes\.slow\.)?(latency_ms|bandwidth_mbps): .*finite"):
        parse_config({"network": network}, check_files=False)


def test_messages_larger_than_the_receivers_accept_are_refused_before_work():
    """Every receiver would reject them and the run would only time out."""
    cfg = parse_config({"engine": {"name": "processes", "max_message_bytes": 4096}})
    with pytest.raises(ConfigError, match=r"engine.max_message_bytes = 4096 is smaller than one message of this "
                                          r"run \(about 19335 bytes"):
        Experiment.build(cfg)
    sparse = parse_config({"engine": {"name": "processes", "max_message_bytes": 4096}, "sharing": {"name": "topk"}})
    Experiment.build(sparse)   # top-10 % messages fit
    Experiment.build(parse_config({"engine": {"max_message_bytes": 4096}}))   # the simulator sends nothing


def test_a_binary_file_is_not_a_config(tmp_path):
    path = tmp_path / "noise.toml"
    path.write_bytes(bytes(range(256)) * 4)
    with pytest.raises(ConfigError, match=r"noise\.toml: not a text file"):
        load_config(path)


@pytest.mark.parametrize("seed", [-1, 1 << 63])
def test_seeds_outside_the_streams_range_are_refused(seed):
    with pytest.raises(ConfigError, match="seed"):
        parse_config({"seed": seed, "data": {"dataset": "digits"}})


def test_workers_must_bind_to_an_address_of_this_machine():
    with pytest.raises(ConfigError, match=r"engine\.host = '192\.0\.2\.1' is not an address of this machine"):
        parse_config({"data": {"dataset": "digits"}, "engine": {"name": "processes", "host": "192.0.2.1"}})
    parse_config({"data": {"dataset": "digits"}, "engine": {"name": "processes", "host": "127.0.0.1"}})


def test_a_batch_larger_than_the_data_is_refused_before_allocating():
    cfg = parse_config({"data": {"dataset": "digits"}, "training": {"batch_size": 10**9}})
    with pytest.raises(ConfigError, match=r"training\.batch_size = 1000000000 exceeds the 1437 training samples"):
        Experiment.build(cfg)


def test_a_model_larger_than_the_machine_is_refused_before_allocating():
    """A trillion parameters per node: counted on the meta device, never allocated."""
    cfg = parse_config({"nodes": 8, "data": {"dataset": "digits"},
                        "model": {"name": "mlp", "options": {"hidden": [1_000_000, 1_000_000]}}})
    with pytest.raises(ConfigError, match=r"1,000,076,000,010 parameters: 8 nodes need about .* GiB .* fewer nodes"):
        Experiment.build(cfg)
