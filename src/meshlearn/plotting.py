"""Plot learning curves from run directories written by the runner.

A run directory holds ``rounds.jsonl`` (one JSON object per evaluation round),
``nodes.jsonl``, ``config.toml`` and, once the run ends, ``summary.json``.
Runs that were killed may lack ``summary.json`` and end with a truncated
line; both are tolerated so that partial results can still be inspected.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import sys
from collections import Counter
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import matplotlib

from meshlearn.config import tomllib
from meshlearn.results import metric_of, read_jsonl

# Rendering goes through ``Figure`` objects, never pyplot, so plots work on
# headless machines.  Switching the backend after pyplot is imported would
# close the caller's open figures (e.g. in a notebook), so only pick Agg when
# nobody has chosen yet.
if "matplotlib.pyplot" not in sys.modules:
    matplotlib.use("Agg")

from matplotlib.figure import Figure  # noqa: E402
from matplotlib.ticker import FuncFormatter  # noqa: E402

__all__ = [
    "Run",
    "Group",
    "group_runs",
    "seed_band",
    "settings",
    "task_metric",
    "X_AXIS_ALIASES",
    "available_metrics",
    "band_keys",
    "build_figure",
    "disambiguate_labels",
    "load_run",
    "load_runs",
    "plot_runs",
    "resolve_x_axis",
    "DEFAULT_X_AXES",
    "default_x_axes",
]

#: Short names accepted for x-axes (``time`` is resolved per set of runs).
X_AXIS_ALIASES: dict[str, str] = {
    "round": "round",
    "rounds": "round",
    "bytes": "bytes_sent_per_node",
    "bytes_sent_per_node": "bytes_sent_per_node",
    "time": "time",
    "wall": "wall_time_s",
    "wall_time_s": "wall_time_s",
    "sim": "sim_time_s",
    "sim_time_s": "sim_time_s",
    "epsilon": "epsilon_per_node",
    "epsilon_per_node": "epsilon_per_node",
}

#: Panels drawn when no x-axes are given (plus ``epsilon`` for runs with DP).
DEFAULT_X_AXES: tuple[str, ...] = ("round", "bytes_sent_per_node", "time")

_AXIS_LABELS: dict[str, str] = {
    "round": "round",
    "bytes_sent_per_node": "cumulative bytes sent per node [MB]",
    "wall_time_s": "wall-clock time [s]",
    "sim_time_s": "simulated time [s]",
    "epsilon_per_node": "privacy spent ε (mean over nodes)",
}


@dataclasses.dataclass
class Run:
    """One run directory, loaded for plotting."""

    path: Path
    label: str
    rounds: list[dict[str, Any]]
    summary: dict[str, Any] | None = None
    config: dict[str, Any] | None = None   # config.toml, to group runs that differ only in their seed


def _is_number(value: Any) -> bool:
    # bool is an int subclass but a flag is not a plottable quantity.
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def load_run(run_dir: str | Path) -> Run:
    """Load ``rounds.jsonl`` and, if present, ``summary.json`` from ``run_dir``."""
    path = Path(run_dir)
    if not path.is_dir():
        raise FileNotFoundError(f"{path} does not exist or is not a directory")
    rounds_path = path / "rounds.jsonl"
    if not rounds_path.is_file():
        raise FileNotFoundError(
            f"{path} is not a meshlearn run directory (no rounds.jsonl)"
        )
    rounds = read_jsonl(rounds_path)

    summary: dict[str, Any] | None = None
    summary_path = path / "summary.json"
    if summary_path.is_file():
        try:
            loaded = json.loads(summary_path.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError):
            loaded = None  # half-written by a killed run: treat as absent
        if isinstance(loaded, dict):
            summary = loaded

    config: dict[str, Any] | None = None
    try:
        config = tomllib.loads((path / "config.toml").read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError):
        pass   # plotted on its own
    name = summary.get("name") if summary else None
    label = name if isinstance(name, str) and name.strip() else path.resolve().name
    return Run(path=path, label=label, rounds=rounds, summary=summary, config=config)


@dataclasses.dataclass
class Group:
    """Runs whose configs differ only in their seed (one run: a group of one)."""

    label: str
    runs: list[Run]


def group_runs(runs: Sequence[Run]) -> list[Group]:
    """Runs grouped by config without the seed, in order of first appearance. When every group
    has its own run name, a group of seeds is labelled by that name and a single run by its
    label; otherwise by the config keys whose values differ between groups
    (``training.lr=0.1``), else by its first run's label. Runs without a config stay alone."""
    keyed: dict[str, list[Run]] = {}
    for run in runs:
        key = json.dumps(settings(run), sort_keys=True) if run.config else f"#{id(run)}"
        keyed.setdefault(key, []).append(run)
    groups = list(keyed.values())
    flats = [settings(g[0]) if g[0].config else {} for g in groups]
    differ = sorted({k for f in flats for k in f if len({json.dumps(g.get(k)) for g in flats}) > 1})
    out = []
    names = {f.get("name") for f in flats}
    named = None not in names and len(names) == len(flats)   # every group has a name of its own
    for members, flat in zip(groups, flats):
        shown = [f"{k}={flat[k]}" for k in differ if k in flat and k != "name"]
        if named:   # a seed group by its name, a single run by its own label
            label = str(flat["name"]) if len(members) > 1 else members[0].label
        else:
            label = ", ".join(shown) if shown and members[0].config else members[0].label
        if len(members) > 1:
            label += f" ({len(members)} seeds)"
        out.append(Group(label, members))
    return out


def task_metric(runs: Sequence[Run]) -> str:
    """The metric the runs' records name (``"acc"``, or ``"rmse"`` for regression), from the
    first record."""
    return metric_of(next((r for run in runs for r in run.rounds), {}))


def settings(run: Run) -> dict[str, Any]:
    """A run's config as dotted keys → values, without the seed, its missing section keys set to
    their defaults: runs written by versions that knew fewer keys still compare equal. Nothing
    the config names is imported (a results folder may come from anyone)."""
    return {**_defaults(), **_flat(run.config or {}, drop=("seed",))}


@functools.lru_cache(maxsize=1)
def _defaults() -> dict[str, Any]:
    """The default config's section keys (not modules' options, which depend on the module)."""
    from meshlearn.config import parse_config

    flat = _flat(parse_config({}, check_files=False).to_toml_dict(), drop=("seed",))
    return {k: v for k, v in flat.items() if not any("options" in part for part in k.split("."))}


def _flat(table: dict[str, Any], prefix: str = "", drop: tuple[str, ...] = ()) -> dict[str, Any]:
    """A nested config as dotted keys → values."""
    out: dict[str, Any] = {}
    for key, value in table.items():
        if not prefix and key in drop:
            continue
        if isinstance(value, dict):
            out.update(_flat(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def seed_band(values: Sequence[float], level: float = 0.95) -> tuple[float, float, float]:
    """(mean, low, high): the mean over seeds and its t-based confidence interval at
    ``level`` (Student's t with n − 1 degrees of freedom); one value: no interval."""
    import numpy as np
    from scipy import stats

    arr = np.asarray(values, dtype=np.float64)
    mean = float(arr.mean())
    if len(arr) < 2:
        return mean, mean, mean
    half = float(stats.t.ppf(0.5 + level / 2, len(arr) - 1) * arr.std(ddof=1) / np.sqrt(len(arr)))
    return mean, mean - half, mean + half


def _path_suffix(path: Path, depth: int) -> str:
    parts = path.resolve().parts
    return "/".join(parts[-depth:]) if parts else str(path)


def disambiguate_labels(runs: Sequence[Run]) -> list[Run]:
    """Return copies of ``runs`` whose labels are unique.

    Runs sharing a label get the directory name appended (more path
    components if the directory names collide too), so legends stay readable.
    """
    counts = Counter(run.label for run in runs)
    out = list(runs)
    for label, count in counts.items():
        if count < 2:
            continue
        idx = [i for i, run in enumerate(runs) if run.label == label]
        max_depth = max(len(runs[i].path.resolve().parts) for i in idx)
        for depth in range(1, max_depth + 1):
            suffixes = [_path_suffix(runs[i].path, depth) for i in idx]
            if len(set(suffixes)) == len(suffixes):
                break
        else:
            # Same directory passed twice: number them instead.
            suffixes = [f"#{n}" for n in range(1, len(idx) + 1)]
        for i, suffix in zip(idx, suffixes):
            out[i] = dataclasses.replace(runs[i], label=f"{label} ({suffix})")
    return out


def load_runs(run_dirs: Iterable[str | Path]) -> list[Run]:
    """Load several run directories with unique labels."""
    return disambiguate_labels([load_run(d) for d in run_dirs])


def available_metrics(runs: Sequence[Run]) -> list[str]:
    """Numeric round keys present in any run, i.e. what can be plotted."""
    keys: set[str] = set()
    for run in runs:
        for rec in run.rounds:
            keys.update(k for k, v in rec.items() if _is_number(v))
    keys.discard("round")
    return sorted(keys)


def band_keys(metric: str, runs: Sequence[Run]) -> tuple[str, str] | None:
    """``(min_key, max_key)`` for a ``*_mean`` metric whose spread is recorded."""
    if not metric.endswith("_mean"):
        return None
    base = metric[: -len("_mean")]
    lo, hi = f"{base}_min", f"{base}_max"
    for run in runs:
        for rec in run.rounds:
            if _is_number(rec.get(lo)) and _is_number(rec.get(hi)):
                return lo, hi
    return None


def default_x_axes(runs: Sequence[Run]) -> list[str]:
    """``DEFAULT_X_AXES``, plus ``epsilon`` when a run records the privacy it spent
    (differential privacy), so accuracy is also shown against ε."""
    extra = ["epsilon"] if "epsilon_per_node" in available_metrics(runs) else []
    return [*DEFAULT_X_AXES, *extra]


def resolve_x_axis(name: str, runs: Sequence[Run]) -> str:
    """Map an x-axis name or alias to a round key.

    ``time`` means simulated time only when every round of every run has it,
    so that all curves share one clock; otherwise wall-clock time.
    """
    key = X_AXIS_ALIASES.get(name, name)
    if key != "time":
        return key
    records = [rec for run in runs for rec in run.rounds]
    if records and all(_is_number(rec.get("sim_time_s")) for rec in records):
        return "sim_time_s"
    return "wall_time_s"


def _format_mb(value: float, _pos: int) -> str:
    return f"{value / 1e6:g}"


def _series(
    run: Run, x_key: str, y_key: str, band: tuple[str, str] | None
) -> tuple[list[float], list[float], list[tuple[float, float, float]]]:
    """Points sorted by x; band points only where both bounds exist."""
    pts = []
    for rec in run.rounds:
        x, y = rec.get(x_key), rec.get(y_key)
        if _is_number(x) and _is_number(y):
            pts.append((float(x), float(y), rec))
    pts.sort(key=lambda p: p[0])
    xs = [p[0] for p in pts]
    ys = [p[1] for p in pts]
    spread: list[tuple[float, float, float]] = []
    if band is not None:
        lo_key, hi_key = band
        for x, _y, rec in pts:
            lo, hi = rec.get(lo_key), rec.get(hi_key)
            if _is_number(lo) and _is_number(hi):
                spread.append((x, float(lo), float(hi)))
    return xs, ys, spread


def _legend_label(run: Run) -> str:
    status = run.summary.get("status") if run.summary else None
    if isinstance(status, str) and status and status != "completed":
        return f"{run.label} [{status}]"
    return run.label


def _seed_series(group: Group, x_key: str, y_key: str, nodes: tuple[str, str] | None = None
                 ) -> tuple[list[float], list[float], list[tuple[float, float, float]]]:
    """Mean curve of a group over its seeds and the confidence band, at the rounds every seed
    recorded (x: the mean of the seeds' x there). With ``nodes`` (the min and max keys) the
    band is the seeds' mean of the min..max range across nodes instead."""
    needed = (x_key, y_key, *(nodes or ()))
    per_run = [{rec["round"]: rec for rec in run.rounds if all(_is_number(rec.get(k)) for k in needed)}
               for run in group.runs]
    shared = sorted(set.intersection(*(set(r) for r in per_run)))
    xs, ys, spread = [], [], []
    for rnd in shared:
        x = sum(float(r[rnd][x_key]) for r in per_run) / len(per_run)
        mean, lo, hi = seed_band([float(r[rnd][y_key]) for r in per_run])
        if nodes is not None:
            lo, hi = (sum(float(r[rnd][k]) for r in per_run) / len(per_run) for k in nodes)
        xs.append(x)
        ys.append(mean)
        spread.append((x, lo, hi))
    order = sorted(range(len(xs)), key=lambda i: xs[i])
    return [xs[i] for i in order], [ys[i] for i in order], [spread[i] for i in order]


def build_figure(
    runs: Sequence[Run],
    metric: str | None = None,
    x_axes: Sequence[str] | None = None,
    group: bool = True,
    log_x: Sequence[str] = (),
    node_band: bool = False,
) -> Figure:
    """Draw ``metric`` (default: mean test accuracy, or RMSE for regression) against each
    x-axis, one panel per axis, one line per run or, with
    ``group``, per set of runs that differ only in their seed: their mean and its 95 %
    t-interval (``seed_band``) as a band, or with ``node_band`` the seeds' mean of the
    min..max across nodes. A single run's band is the min..max across nodes.
    ``log_x`` names the x-axes drawn on a log scale (e.g. ``bytes``).

    Kept separate from saving so callers (and tests) can inspect or restyle
    the figure.  ``x_axes`` defaults to ``default_x_axes(runs)``.  Raises
    ``ValueError`` for an empty run list, an unknown metric or x-axis.
    """
    runs = disambiguate_labels(list(runs))
    if not runs:
        raise ValueError("no runs to plot")
    if x_axes is None:
        x_axes = default_x_axes(runs)
    if not x_axes:
        raise ValueError("no x-axes to plot against")
    if metric is None:   # the runs' mean test metric: accuracy, or RMSE for regression
        metric = f"test_{task_metric(runs)}_mean"
    metrics = available_metrics(runs)
    if metric not in metrics:
        avail = ", ".join(metrics) if metrics else "(none: no rounds recorded)"
        raise ValueError(f"unknown metric {metric!r}; available: {avail}")
    x_keys = []
    for name in x_axes:
        key = resolve_x_axis(name, runs)
        if key != "round" and key not in metrics:
            known = ", ".join(sorted(X_AXIS_ALIASES))
            raise ValueError(
                f"unknown x-axis {name!r}; use one of {known} or a numeric key"
            )
        x_keys.append(key)
    logs = {resolve_x_axis(name, runs) for name in log_x}
    groups = group_runs(runs) if group else [Group(run.label, [run]) for run in runs]

    band = band_keys(metric, runs)
    node_band = node_band and band is not None
    n = len(x_keys)
    fig = Figure(figsize=(4.8 * n, 4.2), layout="constrained")
    axes = fig.subplots(1, n, squeeze=False)[0]
    colors = matplotlib.rcParams["axes.prop_cycle"].by_key().get("color", ["C0"])

    handles: dict[str, Any] = {}
    shaded = {"nodes": False, "seeds": False}
    for ax, x_key in zip(axes, x_keys):
        plotted = False
        for i, grp in enumerate(groups):
            color = colors[i % len(colors)]
            several = len(grp.runs) > 1
            if several:
                xs, ys, spread = _seed_series(grp, x_key, metric, band if node_band else None)
            else:
                xs, ys, spread = _series(grp.runs[0], x_key, metric, band)
            if not xs:
                continue
            plotted = True
            # Markers keep sparse curves (few evaluations, single point) visible.
            marker = "o" if len(xs) <= 30 else None
            (line,) = ax.plot(
                xs, ys, color=color, marker=marker, markersize=3, linewidth=1.5
            )
            handles.setdefault(grp.label if several else _legend_label(dataclasses.replace(grp.runs[0], label=grp.label)),
                               line)
            if len(spread) >= 1:
                shaded["seeds" if several and not node_band else "nodes"] = True
                ax.fill_between(
                    [s[0] for s in spread],
                    [s[1] for s in spread],
                    [s[2] for s in spread],
                    color=color,
                    alpha=0.15,
                    linewidth=0,
                )
        ax.set_xlabel(_AXIS_LABELS.get(x_key, x_key))
        ax.set_ylabel(metric)
        ax.grid(True, alpha=0.3)
        if x_key in logs:   # zeros (round 0's bytes) have no place on it and are left out
            ax.set_xscale("log")
        if x_key == "bytes_sent_per_node":
            ax.xaxis.set_major_formatter(FuncFormatter(_format_mb))
        if not plotted:
            ax.text(
                0.5, 0.5, f"no {x_key} data", transform=ax.transAxes,
                ha="center", va="center", color="gray",
            )

    notes = []
    if shaded["seeds"]:
        notes.append("95 % t-CI of the mean over seeds")
    if band is not None and shaded["nodes"]:
        notes.append(f"{band[0]} .. {band[1]}" + (" (mean over seeds)" if node_band and group else ""))
    fig.suptitle(metric + (f"  (shaded: {'; '.join(notes)})" if notes else ""))
    if handles:
        labels = list(handles)
        lines = list(handles.values())
        fig.legend(
            lines, labels, loc="outside lower center",
            ncols=min(len(labels), 4), fontsize="small", frameon=False,
        )
    return fig


def plot_runs(
    runs: Sequence[Run],
    out_path: str | Path,
    metric: str | None = None,
    x_axes: Sequence[str] | None = None,
    group: bool = True,
    log_x: Sequence[str] = (),
) -> Path:
    """Render ``build_figure`` to ``out_path`` (format from the extension, dpi 120).

    A path without an extension gets ``.png``.  Returns the written path.
    """
    out = Path(out_path)
    if not out.suffix:
        out = out.with_suffix(".png")
    fmt = out.suffix[1:].lower()
    supported = Figure().canvas.get_supported_filetypes()
    if fmt not in supported:
        raise ValueError(
            f"unsupported output format {out.suffix!r}; use one of "
            + ", ".join(f".{k}" for k in sorted(supported))
        )
    fig = build_figure(runs, metric=metric, x_axes=x_axes, group=group, log_x=log_x)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=120, format=fmt)
    return out
