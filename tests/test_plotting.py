"""Plotting from run directories, including partial (killed) runs, and the CLI."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest
from matplotlib.collections import PolyCollection

from meshlearn.commands.plot import add_parser
from meshlearn.plotting import (
    group_runs,
    seed_band,
    available_metrics,
    band_keys,
    build_figure,
    load_run,
    load_runs,
    plot_runs,
    resolve_x_axis,
)

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _round(r: int, sim: bool) -> dict:
    acc = 0.5 + 0.04 * r
    return {
        "round": r,
        "wall_time_s": 0.3 * r,
        "sim_time_s": 1.5 * r if sim else None,
        "bytes_sent_per_node": 250_000.0 * r,
        "test_acc_mean": acc,
        "test_acc_min": acc - 0.1,
        "test_acc_max": acc + 0.05,
        "test_acc_std": 0.03,
        "test_loss_mean": 1.0 / r,
        "consensus_distance": 0.1 / r,
        "flag": True,
    }


def make_run(
    root: Path,
    dirname: str,
    name: str | None,
    *,
    rounds: int = 8,
    sim: bool = True,
    truncated: bool = False,
) -> Path:
    """Write a fake run dir; ``name=None`` means no summary.json (killed run)."""
    d = root / dirname
    d.mkdir(parents=True)
    lines = [json.dumps(_round(r, sim)) for r in range(1, rounds + 1)]
    text = "\n".join(lines) + "\n"
    if truncated:
        text += json.dumps(_round(rounds + 1, sim))[:37]  # killed mid-write
    (d / "rounds.jsonl").write_text(text)
    (d / "nodes.jsonl").write_text(
        json.dumps({"round": 1, "node": 0, "test_acc": 0.5, "test_loss": 1.0}) + "\n"
    )
    (d / "config.toml").write_text(f'name = "{dirname}"\n')   # a config of its own: not a seed of another run
    if name is not None:
        summary = {"name": name, "status": "completed", "rounds_completed": rounds}
        (d / "summary.json").write_text(json.dumps(summary))
    return d


def cli(*argv: str) -> int:
    parser = argparse.ArgumentParser(prog="meshlearn")
    add_parser(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(list(argv))
    return args.func(args)


@pytest.fixture
def two_runs(tmp_path: Path) -> tuple[Path, Path]:
    a = make_run(tmp_path, "run_a", "gossip-ring")
    b = make_run(tmp_path, "run_b_killed", None, rounds=5, sim=False, truncated=True)
    return a, b


def test_load_run_skips_truncated_tail_and_labels_from_dir(two_runs) -> None:
    a, b = two_runs
    ra, rb = load_run(a), load_run(b)
    assert ra.label == "gossip-ring" and ra.summary is not None
    assert rb.label == "run_b_killed" and rb.summary is None
    assert len(ra.rounds) == 8 and len(rb.rounds) == 5
    assert "flag" not in available_metrics([ra, rb])  # bools are not metrics
    assert "round" not in available_metrics([ra, rb])


def test_corrupt_line_before_valid_records_is_an_error(tmp_path: Path) -> None:
    d = make_run(tmp_path, "r", "x", rounds=2)
    lines = (d / "rounds.jsonl").read_text().splitlines()
    (d / "rounds.jsonl").write_text("\n".join([lines[0], "{oops", lines[1]]) + "\n")
    with pytest.raises(ValueError, match="line 2"):
        load_run(d)


def test_missing_rounds_file_message(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match=r"not a meshlearn run directory \(no rounds.jsonl\)"):
        load_run(tmp_path / "empty")


def test_cli_writes_valid_png(two_runs, tmp_path: Path, capsys) -> None:
    out = tmp_path / "plots" / "acc.png"
    rc = cli("plot", str(two_runs[0]), str(two_runs[1]), "-o", str(out))
    assert rc == 0
    data = out.read_bytes()
    assert data[:8] == PNG_MAGIC
    assert len(data) > 10_000
    assert str(out) in capsys.readouterr().out


def test_cli_other_format_and_axes(two_runs, tmp_path: Path) -> None:
    out = tmp_path / "loss.svg"
    rc = cli("plot", *map(str, two_runs), "-o", str(out),
             "--metric", "test_loss_mean", "--x", "bytes, time")
    assert rc == 0
    assert out.read_text().lstrip().startswith("<?xml")


def test_band_drawn_only_for_mean_with_min_max(two_runs) -> None:
    runs = load_runs(two_runs)
    assert band_keys("test_acc_mean", runs) == ("test_acc_min", "test_acc_max")
    assert band_keys("test_loss_mean", runs) is None  # no test_loss_min/max
    assert band_keys("consensus_distance", runs) is None

    fig = build_figure(runs, "test_acc_mean", ("round", "bytes"))
    for ax in fig.axes:
        bands = [c for c in ax.collections if isinstance(c, PolyCollection)]
        assert len(bands) == 2  # one per run
        assert len(ax.get_lines()) == 2
    fig = build_figure(runs, "consensus_distance", ("round",))
    assert not [c for c in fig.axes[0].collections if isinstance(c, PolyCollection)]


def test_axis_labels_and_time_resolution(two_runs, tmp_path: Path) -> None:
    runs = load_runs(two_runs)
    # run_b has sim_time_s = null -> fall back to wall clock for everyone
    assert resolve_x_axis("time", runs) == "wall_time_s"
    fig = build_figure(runs, x_axes=("round", "bytes", "time"))
    labels = [ax.get_xlabel() for ax in fig.axes]
    assert labels == ["round", "cumulative bytes sent per node [MB]", "wall-clock time [s]"]
    fmt = fig.axes[1].xaxis.get_major_formatter()
    assert fmt(2_000_000, 0) == "2"

    sim_only = load_runs([two_runs[0]])
    assert resolve_x_axis("time", sim_only) == "sim_time_s"
    fig = build_figure(sim_only, x_axes=("time",))
    assert fig.axes[0].get_xlabel() == "simulated time [s]"


def test_label_disambiguation(tmp_path: Path) -> None:
    a = make_run(tmp_path, "seed1", "dsgd")
    b = make_run(tmp_path, "seed2", "dsgd")
    c = make_run(tmp_path, "other", "fedavg")
    labels = [r.label for r in load_runs([a, b, c])]
    assert labels == ["dsgd (seed1)", "dsgd (seed2)", "fedavg"]

    # same dir name under different parents: more path is used
    d = make_run(tmp_path / "x", "run", "same")
    e = make_run(tmp_path / "y", "run", "same")
    labels = [r.label for r in load_runs([d, e])]
    assert labels == ["same (x/run)", "same (y/run)"]

    # build_figure disambiguates runs loaded one by one, too
    fig = build_figure([load_run(a), load_run(b)], x_axes=("round",))
    legend_texts = {t.get_text() for t in fig.legends[0].get_texts()}
    assert {"dsgd (seed1)", "dsgd (seed2)"} <= legend_texts


def test_cli_missing_dir(tmp_path: Path, capsys) -> None:
    rc = cli("plot", str(tmp_path / "nope"), "-o", str(tmp_path / "x.png"))
    assert rc == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "nope" in err and "\n" not in err
    assert not (tmp_path / "x.png").exists()


def test_cli_dir_without_rounds(tmp_path: Path, capsys) -> None:
    (tmp_path / "notarun").mkdir()
    rc = cli("plot", str(tmp_path / "notarun"), "-o", str(tmp_path / "x.png"))
    assert rc == 2
    assert "not a meshlearn run directory (no rounds.jsonl)" in capsys.readouterr().err


def test_cli_unknown_metric_lists_available(two_runs, tmp_path: Path, capsys) -> None:
    rc = cli("plot", str(two_runs[0]), "-o", str(tmp_path / "x.png"), "--metric", "acc")
    assert rc == 2
    err = capsys.readouterr().err
    assert err.startswith("error: unknown metric 'acc'")
    for key in ("test_acc_mean", "test_loss_mean", "bytes_sent_per_node", "consensus_distance"):
        assert key in err
    assert not (tmp_path / "x.png").exists()


def test_cli_bad_x_axis_and_format(two_runs, tmp_path: Path, capsys) -> None:
    assert cli("plot", str(two_runs[0]), "-o", str(tmp_path / "x.png"), "--x", "epochs") == 2
    assert "unknown x-axis 'epochs'" in capsys.readouterr().err
    assert cli("plot", str(two_runs[0]), "-o", str(tmp_path / "x.nope")) == 2
    assert "unsupported output format" in capsys.readouterr().err


def test_plot_runs_returns_path_and_defaults_to_png(two_runs, tmp_path: Path) -> None:
    out = plot_runs(load_runs(two_runs), tmp_path / "curves")
    assert out == tmp_path / "curves.png"
    assert out.read_bytes()[:8] == PNG_MAGIC


def test_help_explains_options(capsys) -> None:
    with pytest.raises(SystemExit) as exc:
        cli("plot", "--help")
    assert exc.value.code == 0
    text = capsys.readouterr().out
    for word in ("RUN_DIR", "--metric", "--x", "bytes", "wall-clock", "-o"):
        assert word in text


def seeds_of(root: Path, lr: float, accs: dict[int, list[float]]) -> list[Path]:
    """Run dirs of one config (training.lr = lr) at several seeds; ``accs[seed]`` is its curve."""
    dirs = []
    for seed, curve in accs.items():
        d = root / f"lr{lr}-seed{seed}"
        d.mkdir(parents=True)
        (d / "rounds.jsonl").write_text("".join(json.dumps({"round": r, "test_acc_mean": a, "bytes_sent_per_node":
                                                            1000.0 * r * (1 + seed)}) + "\n"
                                                for r, a in enumerate(curve)))
        (d / "config.toml").write_text(f'name = "exp"\nseed = {seed}\n[training]\nlr = {lr}\n')
        dirs.append(d)
    return dirs


def test_seed_band_is_the_t_interval_of_the_mean() -> None:
    """Hand-computed: values 1, 2, 3 have mean 2 and s = 1; t(0.975, 2) = 4.302653, so the
    half-width is 4.302653 / sqrt(3) = 2.484138."""
    mean, lo, hi = seed_band([1.0, 2.0, 3.0])
    assert mean == 2.0 and hi - mean == pytest.approx(2.484138, abs=1e-6) and mean - lo == pytest.approx(hi - mean)
    assert seed_band([0.5]) == (0.5, 0.5, 0.5)


def test_runs_that_differ_only_in_seed_become_one_line_with_its_interval(tmp_path: Path) -> None:
    a = seeds_of(tmp_path, 0.05, {1: [0.1, 0.5, 0.7], 2: [0.2, 0.6, 0.8], 3: [0.3, 0.7, 0.9]})
    b = seeds_of(tmp_path, 0.1, {1: [0.4, 0.6, 0.6], 2: [0.4, 0.6, 0.6]})
    groups = group_runs(load_runs([*a, *b]))
    assert [(g.label, len(g.runs)) for g in groups] == [("training.lr=0.05 (3 seeds)", 3), ("training.lr=0.1 (2 seeds)", 2)]
    fig = build_figure(load_runs([*a, *b]), x_axes=("round", "bytes"), log_x=("bytes",))
    ax = fig.axes[0]
    lines = ax.get_lines()
    assert len(lines) == 2 and list(lines[0].get_ydata()) == pytest.approx([0.2, 0.6, 0.8])
    band = [c for c in ax.collections if isinstance(c, PolyCollection)][0]
    top = max(v[1] for v in band.get_paths()[0].vertices if v[0] == 2.0)
    assert top == pytest.approx(0.8 + 4.302653 * 0.1 / 3 ** 0.5, abs=1e-6)
    assert list(lines[1].get_ydata()) == pytest.approx([0.4, 0.6, 0.6])   # equal seeds: a band of width 0
    assert fig.axes[1].get_xscale() == "log" and "95 % t-CI of the mean over seeds" in fig._suptitle.get_text()
    assert {t.get_text() for t in fig.legends[0].get_texts()} == {"training.lr=0.05 (3 seeds)",
                                                                  "training.lr=0.1 (2 seeds)"}
    assert len(build_figure(load_runs(a), x_axes=("round",), group=False).axes[0].get_lines()) == 3


def test_groups_named_apart_are_labelled_by_name_and_the_node_band_averages_min_and_max(tmp_path: Path) -> None:
    """Runs whose groups each have their own name are labelled by it; with node_band a group's
    band is the seeds' mean of the min..max across nodes, not the interval over seeds."""
    dirs = []
    for name, lr in (("slow", 0.01), ("fast", 0.1)):
        for seed, lo, hi in ((1, 0.2, 0.6), (2, 0.4, 1.0)):
            d = tmp_path / f"{name}-{seed}"
            d.mkdir()
            (d / "rounds.jsonl").write_text(json.dumps({"round": 1, "test_acc_mean": 0.5, "test_acc_min": lo,
                                                        "test_acc_max": hi}) + "\n")
            (d / "config.toml").write_text(f'name = "{name}"\nseed = {seed}\n[training]\nlr = {lr}\n')
            dirs.append(d)
    runs = load_runs(dirs)
    assert [g.label for g in group_runs(runs)] == ["slow (2 seeds)", "fast (2 seeds)"]
    fig = build_figure(runs, x_axes=("round",), node_band=True)
    band = [c for c in fig.axes[0].collections if isinstance(c, PolyCollection)][0]
    ys = sorted({round(float(v[1]), 9) for v in band.get_paths()[0].vertices})
    assert ys == [0.3, 0.8] and "(mean over seeds)" in fig._suptitle.get_text()


def test_a_config_written_without_a_key_at_its_default_groups_with_one_that_has_it(tmp_path: Path) -> None:
    """Configs are compared with their defaults filled in: a run written before a key existed
    (here evaluation.validation, whose default is 0) is a seed of the same experiment."""
    old, new = seeds_of(tmp_path, 0.1, {1: [0.2, 0.4], 2: [0.3, 0.5]})
    (new / "config.toml").write_text((new / "config.toml").read_text() + "[evaluation]\nvalidation = 0.0\n")
    assert [(g.label, len(g.runs)) for g in group_runs(load_runs([old, new]))] == [("exp (2 seeds)", 2)]
    (new / "config.toml").write_text((new / "config.toml").read_text().replace("0.0", "0.2"))
    assert len(group_runs(load_runs([old, new]))) == 2
