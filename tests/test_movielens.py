"""MovieLens as a regression task: the ratings.csv loader, matrix factorization, and RMSE
records on every engine (nothing assumes classification)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from conftest import small_config
from meshlearn import data
from meshlearn.commands.run import summary_table
from meshlearn.config import ConfigError
from meshlearn.data.movielens import load_movielens
from meshlearn.experiment import Experiment
from meshlearn.results import merge_runs, read_jsonl
from meshlearn.runner import run_experiment

from test_processes import assert_same_run, run_processes, run_sim


def write_ratings(folder: Path, users: int = 48, movies: int = 60, per_user: int = 30, seed: int = 0) -> Path:
    """A ratings.csv of users with 3 latent tastes, in MovieLens's format (ids not contiguous)."""
    rng = np.random.default_rng(seed)
    taste, genre = rng.normal(size=(users, 3)), rng.normal(size=(movies, 3))
    lines = ["userId,movieId,rating,timestamp"]
    for u in range(users):
        for m in rng.choice(movies, per_user, replace=False):
            rating = np.clip(np.round(2 * (3 + 0.7 * taste[u] @ genre[m] + 0.3 * rng.normal())) / 2, 0.5, 5.0)
            lines.append(f"{3 * u + 1},{7 * m + 2},{rating},{964982703 + u}")
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "ratings.csv").write_text("\n".join(lines) + "\n")
    return folder


def movielens_config(root: Path, **overrides):
    return small_config(**{"data": {"dataset": "movielens", "root": str(root), "partition": "natural",
                                    "partition_options": {"ranges": True}},
                           "model": {"name": "matrix_factorization", "options": {"dim": 8}},
                           "training__lr": 0.5, "training__batch_size": 16, "training__local_steps": 10,
                           **overrides})


def test_the_loader_reads_ratings_csv(tmp_path):
    (tmp_path / "ratings.csv").write_text("userId,movieId,rating,timestamp\n"
                                          + "".join(f"{u},{m},{r},0\n" for u, m, r in
                                                    [(7, 50, 4.0), (7, 10, 3.5), (2, 50, 1.0), (7, 99, 5.0),
                                                     (2, 10, 0.5), (7, 11, 2.0), (2, 11, 3.0)]))
    ds = load_movielens(str(tmp_path), test_fraction=0.5)
    assert ds.task == "regression" and ds.cardinalities == (2, 4) and ds.num_classes == 1
    assert ds.user_names == ["2", "7"]
    # users 2 and 7 become 0 and 1, movies 10, 11, 50, 99 become 0..3; half of each user's held out
    assert sorted(map(tuple, np.concatenate([ds.x_train, ds.x_test]).tolist())) == \
        [(0, 0), (0, 1), (0, 2), (1, 0), (1, 1), (1, 2), (1, 3)]
    assert np.bincount(ds.x_test[:, 0], minlength=2).tolist() == [1, 2]
    assert ds.y_train.dtype == np.float32 and set(ds.users_train.tolist()) == {0, 1}
    ratings = dict(zip(map(tuple, np.concatenate([ds.x_train, ds.x_test]).tolist()),
                       np.concatenate([ds.y_train, ds.y_test]).tolist()))
    assert ratings[(1, 3)] == 5.0 and ratings[(0, 0)] == 0.5


@pytest.mark.parametrize("text, message", [
    ("user,movie,rating,timestamp\n1,1,4.0,0\n", "expected userId,movieId,rating,timestamp"),
    ("userId,movieId,rating,timestamp\n1,1,7.0,0\n", "ratings must lie between 0.5 and 5"),
    ("userId,movieId,rating,timestamp\n1,x,4.0,0\n", "not a MovieLens ratings file"),
    ("userId,movieId,rating,timestamp\n", "holds no ratings"),
])
def test_bad_ratings_files_are_refused_naming_the_file(tmp_path, text, message):
    (tmp_path / "ratings.csv").write_text(text)
    with pytest.raises(ValueError, match=message) as err:
        load_movielens(str(tmp_path))
    assert "ratings.csv" in str(err.value)
    with pytest.raises(FileNotFoundError, match="ml-latest-small"):
        data.load("movielens", str(tmp_path / "missing"))


def test_natural_ranges_give_every_user_to_one_node(tmp_path):
    exp = Experiment.build(movielens_config(write_ratings(tmp_path)))
    users = [np.unique(exp.dataset.users_train[part]) for part in exp.parts]
    assert np.array_equal(np.concatenate(users), np.arange(48))   # contiguous ranges, all used
    assert [len(u) for u in users] == [6] * 8
    with pytest.raises(ConfigError, match="rates \\(user, item\\) index pairs"):
        Experiment.build(small_config(model={"name": "matrix_factorization"}))


def test_matrix_factorization_learns_the_ratings_and_records_rmse(tmp_path):
    root = write_ratings(tmp_path / "data")
    cfg = movielens_config(root, rounds=60, evaluation__every=30, evaluation__local_test=0.2)
    summary = run_experiment(cfg, tmp_path / "run")
    records = read_jsonl(tmp_path / "run" / "rounds.jsonl")
    ds = load_movielens(str(root))
    baseline = float(np.sqrt(((ds.y_test - ds.y_train.mean()) ** 2).mean()))   # predicting the mean rating
    assert records[0]["test_rmse_mean"] > 2.5 and records[-1]["test_rmse_mean"] < 0.8 * baseline
    assert not any(key.startswith(("test_acc", "avg_model_acc", "local_acc")) for key in records[-1])
    last = records[-1]
    assert last["test_loss_mean"] == pytest.approx(np.mean([r["test_rmse"] ** 2 for r in read_jsonl(
        tmp_path / "run" / "nodes.jsonl") if r["round"] == last["round"]]), rel=1e-5)   # loss is the MSE
    rows = [r for r in read_jsonl(tmp_path / "run" / "nodes.jsonl") if r["round"] == last["round"]]
    worst = max(rows, key=lambda r: r["test_rmse"])   # an error: the worst node has the largest
    assert last["test_rmse_worst_node"] == worst["node"] and last["test_rmse_max"] == worst["test_rmse"]
    assert last["local_rmse_max"] >= last["local_rmse_mean"] and "local_rmse_p10" in last
    table = summary_table(summary)
    assert "test RMSE (mean over nodes)" in [str(c) for c in table.columns[0]._cells]
    merged = merge_runs([tmp_path / "run"], tmp_path / "merged")   # rebuilt from the per-node rows
    assert merged["final"]["test_rmse_mean"] == pytest.approx(last["test_rmse_mean"])


def test_processes_match_sim_on_ratings(tmp_path):
    cfg = movielens_config(write_ratings(tmp_path), rounds=3, engine__timeout_s=120)
    sim, sim_reports = run_sim(cfg)
    engine, reports, _ = run_processes(cfg, workers=2)
    assert_same_run(sim, sim_reports, engine, reports)


def test_overlays_built_from_label_histograms_refuse_ratings(tmp_path):
    with pytest.raises(ConfigError, match="label histograms, which data.dataset = 'movielens' \\(regression\\)"):
        Experiment.build(movielens_config(write_ratings(tmp_path), topology={"kind": "knn", "options": {"degree": 3}}))


def test_attacks_that_poison_class_labels_refuse_ratings(tmp_path):
    root = write_ratings(tmp_path)
    with pytest.raises(ConfigError, match="label_flip' poisons class labels"):
        Experiment.build(movielens_config(root, byzantine={"count": 1, "attack": "label_flip"}))
    Experiment.build(movielens_config(root, byzantine={"count": 1, "attack": "sign_flip"}))   # on messages: fine
