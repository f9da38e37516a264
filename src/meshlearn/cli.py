"""The ``meshlearn`` command line: run, resume, sweep, node, keys, merge, plot, report, topology and describe sub-commands."""

from __future__ import annotations

import argparse
import sys

from meshlearn import __version__
from meshlearn.commands import describe, keys, merge, node, plot, report, resume, run, sweep, topology


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="meshlearn", description="Decentralized learning experiments: run, plot, build topologies, and list the "
        "modules a config can name.")
    parser.add_argument("--version", action="version", version=f"meshlearn {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for command in (run, resume, sweep, node, keys, merge, plot, report, topology, describe):
        command.add_parser(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not hasattr(args, "func"):
        parser.print_help()
        return 2
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
