"""``meshlearn node``: run one machine's share of a multi-machine experiment."""

from __future__ import annotations

import argparse
from pathlib import Path


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "node", help="run this machine's workers of a multi-machine experiment",
        description="Start the workers that the hosts file assigns to this machine. Run the same command, "
                    "with the same config and hosts file, on every machine (any order); nodes talk over "
                    "ZeroMQ/TCP at the hosts file's addresses. Each machine writes the results of its own "
                    "nodes; combine them with 'meshlearn merge'.",
        epilog="example: meshlearn node examples/quickstart.toml --hosts hosts.toml --machine-id 1 --out runs/m1")
    parser.add_argument("config", help="experiment TOML file (identical on every machine)")
    parser.add_argument("--hosts", required=True, help="hosts TOML file: base_port and [[machines]] id/address/workers")
    parser.add_argument("--machine-id", type=int, required=True, help="this machine's id in the hosts file")
    parser.add_argument("--keys", help="folder with public.json and this machine's machine-<id>.secret, from "
                                       "'meshlearn keys' (needed unless engine.secure = false)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config key (dotted path, TOML value), repeatable")
    parser.add_argument("--out", help="run directory for this machine's nodes (default: runs/<name>-machine<K>)")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace the run already in the --out folder (default: refuse a folder that holds one)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.set_defaults(func=node_command)


def node_command(args: argparse.Namespace) -> int:
    import hashlib
    import json

    from rich.console import Console

    from meshlearn.commands.run import execute
    from meshlearn.config import ConfigError, load_config
    from meshlearn.engines.hosts import load_hosts

    try:
        cfg = load_config(args.config, [*args.overrides, "engine.name=processes"])
        hosts = load_hosts(args.hosts)
        hosts.machine(args.machine_id)
    except ConfigError as exc:
        Console(stderr=True).print(f"[red]error:[/red] {exc}", highlight=False)
        return 2
    # every machine derives the same run id, so their messages are accepted by each other
    digest = hashlib.sha256(json.dumps(cfg.to_toml_dict(), sort_keys=True).encode() + hosts.digest().encode())
    out = Path(args.out or f"runs/{cfg.name}-machine{args.machine_id}")
    return execute(cfg, out, no_progress=args.no_progress, overwrite=args.overwrite, hosts=hosts,
                   machine_id=args.machine_id, run_id=digest.hexdigest()[:12], keys=args.keys)
