"""``meshlearn report``: one self-contained HTML page about runs and sweeps."""

from __future__ import annotations

import argparse
import sys
from typing import Any


def add_parser(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "report", help="write one self-contained HTML report of runs and sweeps",
        description="Write one HTML file about the runs in RUN_OR_SWEEP_DIR... (a run folder, or any folder with "
                    "run folders below it, such as a sweep's): learning curves against rounds, bytes and time "
                    "with their bands, the final figures with 95 %% confidence intervals over seeds, the configs "
                    "side by side with their differences marked, each topology drawn with its spectral gap, and "
                    "time, memory and bytes. Runs that differ only in their seed form one group. The file needs "
                    "no network to open: figures and styles are inline.",
        epilog="example: meshlearn report runs/sweep runs/baseline -o report.html")
    parser.add_argument("paths", nargs="+", metavar="RUN_OR_SWEEP_DIR")
    parser.add_argument("-o", "--output", required=True, metavar="FILE", help="the HTML file to write")
    parser.add_argument("--title", default=None, help="the page's title (default: meshlearn report: N runs)")
    parser.set_defaults(func=report_command)


def report_command(args: argparse.Namespace) -> int:
    from meshlearn.report import write_report

    try:
        out = write_report(args.paths, args.output, title=args.title)
    except (OSError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"wrote {out}")
    return 0
