"""``meshlearn keys``: the CURVE key pairs of a multi-machine run's machines."""

from __future__ import annotations

import argparse
from pathlib import Path


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "keys", help="make the key pairs that authenticate the machines of a hosts file",
        description="Write a CURVE key pair for every machine of the hosts file: public.json (every machine's "
                    "public key: copy it to every machine) and machine-<id>.secret (copy it to machine <id> "
                    "only; it never needs to leave it). Then run 'meshlearn node ... --keys DIR' on each machine. "
                    "Existing keys are never replaced.",
        epilog="example: meshlearn keys hosts.toml --out keys/")
    parser.add_argument("hosts", help="hosts TOML file")
    parser.add_argument("--out", required=True, help="folder for the key files")
    parser.set_defaults(func=keys_command)


def keys_command(args: argparse.Namespace) -> int:
    from rich.console import Console

    from meshlearn.config import ConfigError
    from meshlearn.engines.hosts import load_hosts
    from meshlearn.engines.security import write_machine_keys

    console = Console(stderr=True)
    try:
        hosts = load_hosts(args.hosts)
        written = write_machine_keys([m.id for m in hosts.machines], Path(args.out))
    except (ConfigError, FileExistsError) as exc:
        console.print(f"[red]error:[/red] {exc}", highlight=False)
        return 2
    for path in written:
        print(path)
    return 0
