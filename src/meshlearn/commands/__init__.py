"""Subcommands of the ``meshlearn`` CLI; each module exposes ``add_parser(subparsers)``."""
