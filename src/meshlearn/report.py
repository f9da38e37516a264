"""One self-contained HTML page about runs and sweeps: ``meshlearn report``.

The page shows the learning curves, the final figures with their confidence intervals, the
configs side by side with their differences marked, each topology drawn with its spectral
gap, and the system costs. It is one file that opens without a network: figures are inline
SVG, the style sheet is inline, and nothing is loaded from elsewhere (not even a script).
Runs that differ only in their seed are one group, as in ``meshlearn plot``.
"""

from __future__ import annotations

import datetime
import html
import io
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from meshlearn import plotting
from meshlearn.plotting import Group, Run, group_runs, load_runs, seed_band
from meshlearn.tasks import by_metric

__all__ = ["find_runs", "build_report", "write_report"]

_STYLE = """
body { font: 15px/1.45 system-ui, sans-serif; margin: 2em auto; max-width: 1500px; padding: 0 1em; color: #222; }
h1 { font-size: 1.6em; } h2 { border-bottom: 1px solid #ccc; padding-bottom: .2em; margin-top: 2em; }
h3 { margin-top: 1.5em; }
figure { margin: 1em 0; } figure svg { max-width: 100%; height: auto; }
figcaption { color: #555; font-size: .9em; }
table { border-collapse: collapse; font-size: .9em; margin: .5em 0; }
th, td { border: 1px solid #ddd; padding: .25em .6em; text-align: left; vertical-align: top; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
tr.differs td, tr.differs th { background: #fff3c4; }
.graphs { display: flex; flex-wrap: wrap; gap: 1em; } .graphs figure { width: 330px; }
.warn { color: #a40; }
"""


def find_runs(paths: Iterable[str | Path]) -> list[Path]:
    """Run directories: each path is one (it holds ``rounds.jsonl``) or a folder whose run
    directories are found below it (a sweep's, say)."""
    found: list[Path] = []
    for path in map(Path, paths):
        if (path / "rounds.jsonl").is_file():
            found.append(path)
        elif path.is_dir():
            below = sorted(record.parent for record in path.rglob("rounds.jsonl"))
            if not below:
                raise FileNotFoundError(f"{path}: no run directory below it (none holds rounds.jsonl); "
                                        "give run or sweep folders written by meshlearn run / meshlearn sweep")
            found.extend(below)
        else:
            raise FileNotFoundError(f"{path} does not exist or is not a directory")
    return list(dict.fromkeys(found))


def write_report(paths: Iterable[str | Path] | Mapping[str, Iterable[str | Path]], out: str | Path,
                 title: str | None = None) -> Path:
    """Write the report of the runs found in ``paths`` (see ``find_runs``) to ``out``; with a
    mapping, one part per entry, headed by its key (e.g. one figure of a paper each)."""
    parts = paths if isinstance(paths, Mapping) else {"": paths}
    runs = {heading: load_runs(find_runs(where)) for heading, where in parts.items()}
    count = sum(len(r) for r in runs.values())
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(build_report(runs if isinstance(paths, Mapping) else runs[""],
                                title or f"meshlearn report: {count} runs"), encoding="utf-8")
    return out


def build_report(runs: Sequence[Run] | Mapping[str, Sequence[Run]], title: str) -> str:
    """The report's HTML: of ``runs``, or of each part of a mapping heading → runs."""
    parts = runs if isinstance(runs, Mapping) else {"": runs}
    if not parts or not all(parts.values()):
        raise ValueError("no runs to report on")
    when = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    body = []
    for heading, members in parts.items():
        groups, h = group_runs(members), "h3" if heading else "h2"
        if heading:
            body.append(f"<h2>{_e(heading)}</h2>")
        body.append(f"<p>{len(members)} runs in {len(groups)} groups (runs that differ only in their seed form "
                    "a group).</p>")
        body += [_curves(members, groups, h), _finals(groups, h), _configs(groups, h), _topologies(groups, h),
                 _system(groups, h)]
    return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
            f'<meta name="viewport" content="width=device-width, initial-scale=1">'
            f"<title>{_e(title)}</title><style>{_STYLE}</style></head><body>\n"
            f"<h1>{_e(title)}</h1>\n<p>Written {when} by meshlearn.</p>\n" + "\n".join(body) + "\n</body></html>\n")


def _e(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _svg(fig) -> str:
    """A matplotlib figure as inline SVG (its XML prologue dropped)."""
    buffer = io.StringIO()
    fig.savefig(buffer, format="svg")
    text = buffer.getvalue()
    return text[text.index("<svg"):]


def _figure(svg: str, caption: str) -> str:
    return f"<figure>{svg}<figcaption>{_e(caption)}</figcaption></figure>"


def _curves(runs: Sequence[Run], groups: list[Group], h: str) -> str:
    metrics = plotting.available_metrics(runs)
    chosen = [m for m in (f"test_{plotting.task_metric(runs)}_mean", "test_loss_mean") if m in metrics] or metrics[:1]
    seeded = any(len(g.runs) > 1 for g in groups)
    parts = [f"<{h}>Learning curves</{h}>"]
    for metric in chosen:
        fig = plotting.build_figure(runs, metric=metric, log_x=["bytes"])
        parts.append(_figure(_svg(fig), f"{metric} against rounds, bytes sent per node (log scale) and time; "
                                        + ("the band: 95 % t-interval of the mean over seeds, or for a single run "
                                           "the min..max across nodes" if seeded else
                                           "the band: the min..max across nodes")))
        if seeded and plotting.band_keys(metric, runs):
            fig = plotting.build_figure(runs, metric=metric, log_x=["bytes"], node_band=True)
            parts.append(_figure(_svg(fig), f"{metric}, the band: the min..max across nodes (mean over seeds)"))
    if not chosen:
        parts.append("<p>No round recorded a numeric metric.</p>")
    return "\n".join(parts)


def _final(run: Run) -> dict[str, Any]:
    final = run.summary.get("final") if run.summary else None
    return final if isinstance(final, dict) else (run.rounds[-1] if run.rounds else {})


def _summary(run: Run) -> dict[str, Any]:
    return run.summary or {}


def _values(group: Group, key: str, source=_final) -> list[float]:
    return [float(v) for v in (source(run).get(key) for run in group.runs) if plotting._is_number(v)]


def _with_ci(values: list[float], scale: float = 1.0, digits: int = 2) -> str:
    """``mean ± half-width`` of the 95 % t-interval (just the value for one seed)."""
    if not values:
        return "—"
    mean, low, high = seed_band([v * scale for v in values])
    return f"{mean:.{digits}f}" + (f" ± {(high - low) / 2:.{digits}f}" if len(values) > 1 else "")


def _span(values: list[float]) -> str:
    """``a`` or ``a–b``: the range of values that should agree (e.g. the last round)."""
    if not values:
        return "—"
    low, high = int(min(values)), int(max(values))
    return str(low) if low == high else f"{low}–{high}"


def _status(group: Group) -> str:
    counts: dict[str, int] = {}
    for run in group.runs:
        status = (run.summary or {}).get("status") or "no summary"
        counts[status] = counts.get(status, 0) + 1
    return ", ".join(f"{n} {s}" for s, n in counts.items())


def _table(header: Sequence[str], rows: list[list[str]], numeric_from: int = 1) -> str:
    head = "".join(f"<th>{_e(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f'<td class="num">{c}</td>' if i >= numeric_from else f"<td>{c}</td>"
                                    for i, c in enumerate(row)) + "</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _finals(groups: list[Group], h: str) -> str:
    m = plotting.task_metric([run for g in groups for run in g.runs])
    worst = "min" if by_metric(m).higher_is_better else "max"   # an error's worst node has the largest
    scale, unit = (100, "accuracies in %") if m == "acc" else (1, f"{m.upper()} as measured")
    rows = []
    for g in groups:
        mb = _values(g, "bytes_sent_per_node")
        rows.append([_e(g.label), str(len(g.runs)), _e(_status(g)),
                     _span(_values(g, "round")), _with_ci(_values(g, f"test_{m}_mean"), scale),
                     _with_ci(_values(g, f"test_{m}_{worst}"), scale), _with_ci(_values(g, f"avg_model_{m}"), scale),
                     _with_ci(_values(g, "test_loss_mean"), digits=3),
                     f"{sum(mb) / len(mb) / 1e6:.1f}" if mb else "—"])
    return (f"<{h}>Final figures</{h}>\n<p>At each run's last evaluation: the mean over seeds ± the half-width of "
            f"its 95 % confidence interval (Student's t, seeds − 1 degrees of freedom); {unit}.</p>\n"
            + _table(["group", "seeds", "status", "round", f"test {m} (mean over nodes)", f"worst node's {m}",
                      f"averaged model's {m}", "test loss", "MB sent per node"], rows, numeric_from=3))


def _configs(groups: list[Group], h: str) -> str:
    flats = [plotting.settings(g.runs[0]) if g.runs[0].config else {} for g in groups]
    keys = sorted({k for f in flats for k in f})
    differing = [k for k in keys if len({repr(f.get(k)) for f in flats}) > 1]
    same = [k for k in keys if k not in differing]
    head = "<tr><th>key</th>" + "".join(f"<th>{_e(g.label)}</th>" for g in groups) + "</tr>"
    seeds = "<tr><th>seed</th>" + "".join(
        f"<td>{_e(', '.join(str((r.config or {}).get('seed', '?')) for r in g.runs))}</td>" for g in groups) + "</tr>"

    def rows(names: list[str], css: str = "") -> str:
        return "".join(f'<tr{css}><th>{_e(k)}</th>' + "".join(f"<td>{_e(f.get(k, '—'))}</td>" for f in flats)
                       + "</tr>" for k in names)

    return (f"<{h}>Configurations</{h}>\n<p>One column per group; the keys whose values differ between groups are "
            f"marked and come first ({len(differing)} of {len(keys)}).</p>\n"
            f'<table id="configs"><thead>{head}</thead><tbody>{rows(differing, " class=differs")}{seeds}'
            f"</tbody></table>\n<details><summary>the {len(same)} keys every group shares</summary>"
            f"<table><thead>{head}</thead><tbody>{rows(same)}</tbody></table></details>")


def _topologies(groups: list[Group], h: str) -> str:
    drawn: dict[str, str] = {}
    for g in groups:
        run = g.runs[0]
        if not run.config:
            continue
        key = repr((run.config.get("nodes"), run.config.get("seed"), run.config.get("topology")))
        if key not in drawn:
            drawn[key] = _draw_topology(run, g.label)
    if not drawn:
        return ""
    return (f"<{h}>Topologies</{h}>\n<p>The first round's graph of each distinct topology (of the group's first "
            "seed), with the spectral gap 1 − |λ₂| of its mixing matrix: the larger, the faster models "
            "reach consensus.</p>\n<div class=\"graphs\">" + "".join(drawn.values()) + "</div>")


def _draw_topology(run: Run, label: str) -> str:
    """Round 1's graph from the run's ``[topology]`` alone: nothing the folder names (a plug-in,
    a graph file) is imported or read, since a results folder may come from anyone."""
    from types import SimpleNamespace

    import networkx as nx
    import numpy as np
    import scipy.sparse as sp
    from matplotlib.collections import LineCollection
    from matplotlib.figure import Figure
    from pydantic import ValidationError

    from meshlearn.config import ExperimentConfig, TopologyConfig
    from meshlearn.topology import mixing
    from meshlearn.topology.schedule import TopologySchedule

    raw, fields = run.config.get("topology") or {}, ExperimentConfig.model_fields
    kind = str(raw.get("kind", "")) if isinstance(raw, dict) else ""
    why = ("a plug-in is not imported from a results folder" if ":" in kind else
           "a graph file is not read from a results folder" if kind == "file" else
           "it is built from the data" if kind == "knn" else None)
    try:
        if why is None:
            cfg = SimpleNamespace(topology=TopologyConfig.model_validate(raw),
                                  **{k: int(run.config.get(k, fields[k].default)) for k in ("nodes", "seed", "rounds")})
            graph = TopologySchedule(cfg).graph(1)
    except (ValidationError, ValueError, TypeError) as exc:
        why = str(exc).splitlines()[0]
    if why is not None:
        return f'<figure><p class="warn">{_e(label)}: {_e(kind or "topology")} not drawn ({_e(why)})</p></figure>'
    W = graph.weights + sp.diags(graph.self_weight)
    gap = mixing.spectral_gap(W)
    links = graph.weights
    directed = (links != links.T).nnz > 0
    G = nx.from_scipy_sparse_array(links.T, create_using=nx.DiGraph if directed else nx.Graph)
    n, edges = G.number_of_nodes(), G.number_of_edges()
    pos = nx.spring_layout(G, seed=0) if n <= 300 else nx.circular_layout(G)
    fig = Figure(figsize=(3.3, 3.3), layout="constrained")
    ax = fig.subplots()
    ax.set_axis_off()
    segments = np.array([(pos[u], pos[v]) for u, v in G.edges()]) if edges else np.empty((0, 2, 2))
    ax.add_collection(LineCollection(segments, linewidths=0.6 if edges < 2000 else 0.15, colors="#4a6fa5",
                                     alpha=0.5, rasterized=edges > 2000))
    xy = np.array([pos[i] for i in range(n)])
    ax.scatter(xy[:, 0], xy[:, 1], s=max(2, 2000 // max(n, 1)), color="#d1495b", zorder=2,
               rasterized=n > 2000)
    ax.autoscale()
    kind = cfg.topology.kind + (" (re-drawn every round)" if cfg.topology.dynamic else "")
    degrees = [d for _, d in (G.in_degree() if directed else G.degree())]
    caption = (f"{label}: {kind}, {n} nodes, {edges} {'links' if directed else 'edges'}, degree "
               f"{min(degrees)}–{max(degrees)}, spectral gap {gap:.4f}" if degrees else f"{label}: {kind}")
    return _figure(_svg(fig), caption)


def _system(groups: list[Group], h: str) -> str:
    columns = [("time per round [s]", "time_per_round_s", 1.0, 3), ("setup [s]", "setup_time_s", 1.0, 1),
               ("evaluation [s]", "eval_time_s", 1.0, 1), ("wall time [s]", "wall_time_s", 1.0, 1),
               ("simulated time [s]", "sim_time_s", 1.0, 1), ("peak memory [MiB]", "peak_rss_bytes", 2 ** -20, 0),
               ("MB sent per node", "bytes_sent_per_node", 1e-6, 1), ("bytes per message", "message_bytes", 1.0, 0)]
    shown = [c for c in columns if any(_values(g, c[1], _summary) for g in groups)]
    if not shown:
        return ""
    rows = [[_e(g.label), _e(_engine(g))] + [_with_ci(_values(g, key, _summary), scale, digits)
                                            for _, key, scale, digits in shown] for g in groups]
    return (f"<{h}>System</{h}>\n<p>From each run's summary: the mean over seeds ± the 95 % interval. Time and memory "
            "depend on the machine and what else ran on it.</p>\n"
            + _table(["group", "engine"] + [c[0] for c in shown], rows, numeric_from=2))


def _engine(group: Group) -> str:
    engines = {str((run.summary or {}).get("engine", "?")) for run in group.runs}
    return ", ".join(sorted(engines))
