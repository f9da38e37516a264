"""``meshlearn resume``: continue an interrupted or killed run from its latest checkpoint."""

from __future__ import annotations

import argparse
from pathlib import Path

from rich.console import Console
from rich.markup import escape

from meshlearn.commands.run import add_output_options


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "resume", help="continue an interrupted or killed run from its checkpoint",
        description="Continue the run in RUN_DIR from its latest checkpoint (RUN_DIR/checkpoint, written as "
                    "[checkpoint] asks and when a run is stopped by Ctrl-C or SIGTERM), with the config "
                    "and engine it was started with. Records of rounds after the checkpoint are played again.",
        epilog="example: meshlearn resume runs/quickstart-20261204-101500")
    parser.add_argument("run_dir", help="the run directory of the run to continue")
    add_output_options(parser)
    parser.set_defaults(func=resume_command)


def resume_command(args: argparse.Namespace) -> int:
    from meshlearn.commands.run import execute
    from meshlearn.config import ConfigError
    from meshlearn.results import RunDirError
    from meshlearn.runner import checkpointed_config

    out = Path(args.run_dir)
    try:
        cfg = checkpointed_config(out)
    except (RunDirError, ConfigError) as exc:   # a damaged or missing checkpoint, a run that has ended
        Console(stderr=True).print(f"[red]error:[/red] {escape(str(exc))}", highlight=False, soft_wrap=True)
        return 2
    return execute(cfg, out, no_progress=args.no_progress, log=args.log, resume=True)
