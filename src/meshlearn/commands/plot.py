"""``meshlearn plot``: overlay learning curves of one or more runs in a PNG."""

from __future__ import annotations

import argparse
import sys
from typing import Any

DESCRIPTION = """\
Plot a metric from one or more run directories (as written by `meshlearn run`)
into a single image: one panel per x-axis, one line per run.

A run directory needs rounds.jsonl; summary.json is optional (a killed run
still plots, labelled by its directory name, and a truncated last line is
skipped). Legend labels come from the run name in summary.json; runs that
share a name get their directory name appended.

Runs whose configs differ only in their seed (e.g. a sweep's) are drawn as one
line: the mean over the seeds, with a band for the 95 % confidence interval of
that mean (Student's t with seeds - 1 degrees of freedom), at the rounds every
seed recorded; legends name the config values that differ between lines.
For a single run and a *_mean metric with matching *_min/*_max keys (e.g.
test_acc_mean), the band is the min..max range across nodes.
"""

EPILOG = """\
examples:
  meshlearn plot runs/quickstart -o acc.png
  meshlearn plot runs/a runs/b -o loss.pdf --metric test_loss_mean --x round,bytes
  meshlearn plot runs/dp -o privacy.png --metric epsilon_per_node --x round
  meshlearn plot runs/sweep/*/seed=* -o sweep.png --log-x bytes
"""

DEFAULT_X = "round,bytes,time"


def add_parser(subparsers: Any) -> None:
    """Register the ``plot`` subcommand on an argparse subparsers object."""
    parser = subparsers.add_parser(
        "plot",
        help="plot learning curves of one or more runs",
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "run_dirs",
        nargs="+",
        metavar="RUN_DIR",
        help="run directory containing rounds.jsonl; give several to overlay them",
    )
    parser.add_argument(
        "-o",
        "--output",
        required=True,
        metavar="FILE",
        help="image to write; the format follows the extension "
        "(.png, .pdf, .svg, ...; none means .png)",
    )
    parser.add_argument(
        "--metric",
        default=None,
        help="numeric key of rounds.jsonl to plot on the y-axis (default: test_acc_mean, or "
        "test_rmse_mean for regression; an unknown key lists the available ones)",
    )
    parser.add_argument(
        "--x",
        default=None,
        metavar="AXES",
        help=f"comma-separated x-axes, one panel each (default: {DEFAULT_X}, plus "
        "epsilon for runs with differential privacy). "
        "round = evaluation round; bytes = cumulative bytes sent per node (MB); "
        "time = simulated time if every run records sim_time_s, else wall-clock "
        "seconds (wall / sim force one); epsilon = privacy spent per node (mean ε); "
        "any other numeric key also works",
    )
    parser.add_argument("--log-x", default="", metavar="AXES",
                        help="comma-separated x-axes drawn on a log scale, e.g. bytes")
    parser.add_argument("--no-group", action="store_true",
                        help="one line per run, even for runs that differ only in their seed")
    parser.set_defaults(func=run_plot)


def _error(message: str) -> int:
    print(f"error: {message}", file=sys.stderr)
    return 2


def run_plot(args: argparse.Namespace) -> int:
    """Execute ``meshlearn plot``; returns the process exit code."""
    # Imported here so `meshlearn --help` does not pay for matplotlib.
    from meshlearn.plotting import load_runs, plot_runs

    x_axes = None if args.x is None else [part.strip() for part in args.x.split(",") if part.strip()]
    if x_axes == []:
        return _error("--x needs at least one axis (e.g. round,bytes,time)")
    try:
        runs = load_runs(args.run_dirs)
        out = plot_runs(runs, args.output, metric=args.metric, x_axes=x_axes, group=not args.no_group,
                        log_x=[part.strip() for part in args.log_x.split(",") if part.strip()])
    except (OSError, ValueError) as exc:
        return _error(str(exc))
    print(f"wrote {out}")
    return 0
