"""``meshlearn sweep``: a grid of config values × seeds, run and indexed."""

from __future__ import annotations

import argparse

from rich.console import Console
from rich.markup import escape


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "sweep", help="run a grid of config values × seeds",
        description="Run CONFIG for every combination of the values given with --set, each with --seeds seeds "
                    "(the config's seed and the next ones), one run directory each under --out, and write "
                    "--out/index.json. Running the same sweep again skips the runs that ended, resumes the "
                    "interrupted ones from their checkpoint and starts the others.",
        epilog="example: meshlearn sweep examples/quickstart.toml --set training.lr=0.05,0.1 "
               "--set topology.options.degree=4,8 --seeds 3 --jobs 2 --out runs/sweep")
    parser.add_argument("config", help="experiment TOML file")
    parser.add_argument("--set", dest="grid", action="append", default=[], metavar="KEY=V1,V2,...",
                        help="a config key and the values to sweep (TOML values, comma-separated), repeatable")
    parser.add_argument("--seeds", type=int, default=1, help="runs per combination, with consecutive seeds")
    parser.add_argument("--jobs", type=int, default=1, help="runs at once (the cores are shared out between them)")
    parser.add_argument("--out", required=True, help="the sweep's folder")
    parser.set_defaults(func=sweep_command)


def sweep_command(args: argparse.Namespace) -> int:
    from meshlearn.config import ConfigError
    from meshlearn.sweep import ENDED, parse_values, run_sweep

    err, console = Console(stderr=True), Console()
    try:
        if args.jobs < 1:
            raise ConfigError(f"--jobs {args.jobs}: give at least 1")
        grid = dict(parse_values(item) for item in args.grid)
        index = run_sweep(args.config, grid, args.seeds, args.out, jobs=args.jobs,
                          log=lambda line: console.print(line, highlight=False, markup=False))
    except ConfigError as exc:
        err.print(f"[red]error:[/red] {escape(str(exc))}", highlight=False)
        return 2
    except KeyboardInterrupt:
        err.print(f"sweep interrupted: the runs in flight were stopped at a checkpoint; run the same command to "
                  f"continue ({args.out}/index.json lists where each run stands)", highlight=False, markup=False)
        return 130
    failed = [entry["dir"] for entry in index if entry["status"] not in ENDED]
    console.print(f"{len(index) - len(failed)} of {len(index)} runs ended; index: {args.out}/index.json",
                  highlight=False, markup=False)
    return 1 if failed else 0
