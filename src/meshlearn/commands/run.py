"""``meshlearn run``: run an experiment from a TOML config."""

from __future__ import annotations

import argparse
import sys
from datetime import datetime
from pathlib import Path

from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "run", help="run an experiment from a TOML config",
        description="Run a decentralized-learning experiment described by a TOML file and write its "
                    "run directory (config.toml, rounds.jsonl, nodes.jsonl, nodes_final.json, summary.json, "
                    "models.safetensors).",
        epilog="example: meshlearn run examples/quickstart.toml --set rounds=10 --set training.lr=0.1")
    parser.add_argument("config", help="experiment TOML file")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config key (dotted path, TOML value), repeatable")
    parser.add_argument("--out", help="run directory (default: runs/<name>-<timestamp>)")
    parser.add_argument("--engine", choices=["sim", "processes", "ray"],
                        help="override engine.name: sim (vectorized, one process), processes (worker "
                             "processes over ZeroMQ/TCP), ray (workers as actors on a Ray cluster)")
    parser.add_argument("--workers", type=int, metavar="P",
                        help="processes/ray: number of workers (override engine.workers; P = nodes gives "
                             "one process per node)")
    parser.add_argument("--ray-address", metavar="ADDR",
                        help="ray: cluster to join (default: $RAY_ADDRESS, else a local Ray instance)")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace the run already in the --out folder (default: refuse a folder that holds one)")
    add_output_options(parser)
    parser.set_defaults(func=run_command)


def add_output_options(parser) -> None:
    """--log and --no-progress, shared with ``meshlearn resume``."""
    parser.add_argument("--log", action="append", default=[], choices=["tensorboard", "csv", "wandb"],
                        help="also log every evaluation to tensorboard (<out>/tensorboard), csv (<out>/rounds.csv) "
                             "or wandb (Weights & Biases, files in <out>/wandb; pip install 'meshlearn[wandb]', "
                             "WANDB_MODE=offline without network), repeatable")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def _loggers(names: list[str], out: Path) -> list:
    """The ``--log`` loggers, writing under the run directory ``out``."""
    import os

    from meshlearn.callbacks import CSVLogger, TensorBoardLogger, WandbLogger

    make = {"tensorboard": lambda: TensorBoardLogger(out / "tensorboard"),
            "csv": lambda: CSVLogger(out / "rounds.csv"),
            "wandb": lambda: WandbLogger(project=os.environ.get("WANDB_PROJECT", "meshlearn"), dir=str(out))}
    return [make[name]() for name in dict.fromkeys(names)]


def run_command(args: argparse.Namespace) -> int:
    from meshlearn.config import ConfigError, load_config

    overrides = list(args.overrides) + ([f"engine.name={args.engine}"] if args.engine else []) \
        + ([f"engine.workers={args.workers}"] if args.workers else [])
    try:
        cfg = load_config(args.config, overrides)
    except ConfigError as exc:
        Console(stderr=True).print(f"[red]error:[/red] {exc}", highlight=False, markup=True)
        return 2
    out = Path(args.out or f"runs/{cfg.name}-{datetime.now():%Y%m%d-%H%M%S}")
    options = {"ray_address": args.ray_address} if args.ray_address else {}
    return execute(cfg, out, no_progress=args.no_progress, log=args.log, overwrite=args.overwrite, **options)


def execute(cfg, out: Path, *, no_progress: bool = False, log: list[str] | tuple[str, ...] = (),
            overwrite: bool = False, resume: bool = False, **engine_options) -> int:
    """Run ``cfg`` into ``out`` (or with ``resume`` continue the run there) with a progress
    bar and a closing summary table; ``log`` names the loggers (``--log``) that also receive
    every evaluation. Exit codes: 0 done,
    2 bad input, 3 diverged, 128 + the signal's number when stopped by one (130 Ctrl-C,
    143 SIGTERM, 129 SIGHUP)."""
    import signal

    from meshlearn.callbacks import LoggerError
    from meshlearn.config import ConfigError
    from meshlearn.results import RunDirError, metric_of
    from meshlearn.runner import run_experiment

    err = Console(stderr=True)
    console = Console()
    try:
        callbacks = _loggers(log, out)
    except ImportError as exc:
        err.print(f"[red]error:[/red] --log: {escape(str(exc))}", highlight=False)
        return 2
    console.print(f"[bold]{cfg.name}[/bold]: {cfg.nodes} nodes, {cfg.rounds} rounds, {cfg.model.name} on "
                  f"{cfg.data.dataset} ({cfg.data.partition}), {cfg.topology.kind} topology, "
                  f"{cfg.algorithm.name}/{cfg.sharing.name}, engine {cfg.engine.name} → {out}")
    progress = Progress(TextColumn("round"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[status]}"),
                        TimeElapsedColumn(), TimeRemainingColumn(), console=console,
                        disable=no_progress or not console.is_terminal and not sys.stdout.isatty())
    try:
        with progress:
            task = progress.add_task("rounds", total=cfg.rounds, status="")

            def on_round(rnd, record):
                metric = metric_of(record) if record else ""
                status = f"{metric} {_fmt(record[f'test_{metric}_mean'], '.3f')}" if record else None
                progress.update(task, advance=1, **({"status": status} if status else {}))
                if record and progress.disable:
                    console.print(f"round {rnd}: test {metric} {_fmt(record[f'test_{metric}_mean'], '.4f')}")

            summary = run_experiment(cfg, out, on_round=on_round, callbacks=callbacks, overwrite=overwrite,
                                     resume=resume, **engine_options)
    except RunDirError as exc:
        err.print(f"[red]error:[/red] {escape(str(exc))}", highlight=False, soft_wrap=True)
        return 2
    except ConfigError as exc:
        err.print(f"[red]error:[/red] {exc}", highlight=False)
        return 2
    except LoggerError as exc:
        err.print(f"[red]error:[/red] --log: {escape(str(exc))}", highlight=False)
        return 2
    except KeyboardInterrupt as exc:
        name = getattr(exc, "signal", "SIGINT")
        where = f": results so far are in {out}" if (out / "summary.json").exists() else ""
        err.print(f"interrupted by {name}{where}", highlight=False, markup=False, soft_wrap=True)
        return 128 + getattr(signal, name)
    console.print(summary_table(summary))
    for failure in summary.get("failures", []):
        err.print(f"[yellow]worker {failure['worker']} failed[/yellow] ({failure['reason']}); its nodes "
                  f"{failure['nodes'][0]}..{failure['nodes'][-1]} stopped after round "
                  f"{failure['last_round_reported']}", highlight=False)
    diverged = summary.get("diverged")
    if diverged:
        stopped = "stopped" if summary["status"] == "diverged" else "kept going (evaluation.stop_on_divergence = false)"
        err.print(f"[yellow]warning:[/yellow] diverged at round {diverged['round']}: {diverged['nodes']} nodes' models "
                  f"are NaN or infinite; {stopped}. Results: {out} (try a smaller training.lr)",
                  highlight=False, soft_wrap=True)
    console.print(f"results: {out}")
    return 3 if summary["status"] == "diverged" else 0


def summary_table(summary: dict) -> Table:
    from meshlearn.results import metric_of

    final = summary.get("final", {})
    m = metric_of(final)
    name = "accuracy" if m == "acc" else m.upper()
    table = Table(title=f"{summary['name']} ({summary['status']})", show_header=False)
    rows = [
        ("rounds", f"{summary['rounds_completed']}/{summary['rounds']}"),
        ("nodes / parameters", f"{summary['nodes']} / {summary['parameters']:,}"),
        (f"test {name} (mean over nodes)", _fmt(final.get(f"test_{m}_mean"), ".4f")),
        (f"test {name} min / max", f"{_fmt(final.get(f'test_{m}_min'), '.4f')} / "
                                   f"{_fmt(final.get(f'test_{m}_max'), '.4f')}"),
        (f"averaged-model {name}", _fmt(final.get(f"avg_model_{m}"), ".4f")),
        # None where one launcher sees only its share of the nodes (multi-machine runs)
        ("consensus distance", _fmt(final.get("consensus_distance"), ".3g")),
        ("bytes sent per node", f"{summary['bytes_sent_per_node'] / 1e6:.2f} MB"),
        ("time per round", f"{summary['time_per_round_s'] * 1e3:.0f} ms" if summary.get("time_per_round_s") else "—"),
        ("peak memory (RSS)", f"{summary['peak_rss_bytes'] / 2**20:.0f} MiB"),
    ]
    if "epsilon_per_node" in final:   # differential privacy: the budget spent (null: ε = ∞)
        rows.append(("privacy spent ε mean / max", f"{_fmt(final['epsilon_per_node'], '.3g')} / "
                                                   f"{_fmt(final.get('epsilon_max'), '.3g')}"))
    for key, value in rows:
        table.add_row(key, value)
    return table


def _fmt(value, spec: str) -> str:
    """``value`` formatted, or a dash where a figure is missing (None in the record)."""
    return "—" if value is None else format(value, spec)
