"""``meshlearn merge``: combine the per-machine run directories of one run."""

from __future__ import annotations

import argparse


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "merge", help="merge the per-machine run directories of a multi-machine run",
        description="Combine the run directories written by 'meshlearn node' on each machine into one run "
                    "directory, rebuilding rounds.jsonl from every node's rows.",
        epilog="example: meshlearn merge runs/m0 runs/m1 -o runs/merged")
    parser.add_argument("parts", nargs="+", help="run directories, one per machine")
    parser.add_argument("-o", "--out", required=True, help="merged run directory")
    parser.set_defaults(func=merge_command)


def merge_command(args: argparse.Namespace) -> int:
    from rich.console import Console

    from meshlearn.results import merge_runs, metric_of

    try:
        summary = merge_runs(args.parts, args.out)
    except ValueError as exc:
        Console(stderr=True).print(f"[red]error:[/red] {exc}", highlight=False)
        return 2
    final = summary.get("final", {})
    metric = metric_of(final)
    print(f"merged {len(args.parts)} parts → {args.out}: {summary['rounds_completed']} rounds, "
          f"final test_{metric}_mean {final.get(f'test_{metric}_mean')}, status {summary['status']}")
    return 0
