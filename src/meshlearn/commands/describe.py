"""``meshlearn list`` and ``meshlearn describe``: the modules a config can name, and their options.

Everything printed is read from the implementations themselves (registries, signatures,
docstrings) through :mod:`meshlearn.plugins`, the same path the config check takes, so the
listing is what a config accepts. The documentation's option tables come from these functions too.
"""

from __future__ import annotations

import argparse
import inspect
import json
import re
import types
import typing
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table
from rich.text import Text


def add_parser(subparsers) -> None:
    lister = subparsers.add_parser(
        "list", help="list the module families, or one family's built-in implementations",
        description="Without FAMILY: the module families a config chooses from (algorithm, sharing, ...). "
                    "With FAMILY: its built-in implementations, each with the first paragraph of its docstring.",
        epilog="examples: meshlearn list; meshlearn list sharing")
    lister.add_argument("family", nargs="?", metavar="FAMILY", help="a module family, e.g. sharing")
    lister.set_defaults(func=list_command)

    describer = subparsers.add_parser(
        "describe", help="print one implementation's options and documentation",
        description="Print the options of one implementation (name, type, default, description: read from its "
                    "signature, as the config check does) and its docstring.",
        epilog="examples: meshlearn describe sharing topk; meshlearn describe algorithm mypkg.rules:Median; "
               "meshlearn describe topology graphs.py:ring_of_cliques")
    describer.add_argument("family", metavar="FAMILY", help="a module family (see 'meshlearn list')")
    describer.add_argument("name", metavar="NAME",
                           help="a built-in name, or an import path: 'package.module:Name' or 'file.py:Name' "
                                "(relative to the working directory, which is importable)")
    describer.set_defaults(func=describe_command)


def list_command(args: argparse.Namespace) -> int:
    from meshlearn import plugins

    console = Console()
    if args.family is None:
        table = Table(title="module families")
        table.add_column("family", no_wrap=True)
        table.add_column("chosen by", no_wrap=True)
        table.add_column("built-ins")
        table.add_column("what it is")
        for fam in plugins.FAMILIES.values():
            table.add_row(fam.name, fam.key, ", ".join(fam.builtins()), fam.doc)
        console.print(table)
        console.print("meshlearn list FAMILY: its implementations; meshlearn describe FAMILY NAME: their options",
                      highlight=False)
        return 0
    try:
        fam = plugins.family(args.family)
    except ValueError as exc:
        return _error(exc)
    table = Table(title=f"{fam.name}: {fam.doc}")
    table.add_column("name", no_wrap=True)
    table.add_column("summary")
    for name, obj in fam.builtins().items():
        table.add_row(name, Text(plain(plugins.summary(obj))))
    console.print(table)
    console.print(f"{fam.key} takes one of these names, or your own {own_kind(fam.name)} as "
                  "'package.module:Name' or 'file.py:Name'", highlight=False)
    return 0


def describe_command(args: argparse.Namespace) -> int:
    from meshlearn import plugins

    try:
        plugins.family(args.family)
        plugins.add_import_paths([Path.cwd()])   # as a config parsed here would
        spec = plugins.absolute_spec(args.name, Path.cwd())
        obj = plugins.resolve(args.family, spec)
    except ValueError as exc:
        return _error(exc)
    console = Console()
    origin = spec if plugins.is_import_path(spec) else plugins.import_path_of(obj)   # a file plug-in: its absolute path
    console.print(Text(f"{args.family} {args.name}", style="bold")
                  + Text(f" ({origin})" if origin != args.name else ""))
    doc = docstring(obj)
    if doc:
        console.print(reflow(doc), highlight=False, markup=False)
    rows = option_rows(args.family, obj)
    if rows:
        table = Table(title=f"options, in {plugins.family(args.family).options_key}")
        for column in ("option", "type", "default", "description"):
            table.add_column(column)
        for row in rows:
            table.add_row(*(Text(cell) for cell in row))   # cells are text, never rich markup
        console.print(table)
    else:
        console.print("no options", highlight=False)
    return 0


def _error(exc: Exception) -> int:
    Console(stderr=True).print(Text("error: ", style="red") + Text(str(exc)))
    return 2


# what the command line and the documentation print

def own_kind(family_name: str) -> str:
    """What a user writes for this family: a subclass of its base class, or a callable."""
    from meshlearn import plugins

    base = plugins.family(family_name).base_class()
    return f"subclass of {base.__module__}.{base.__qualname__}" if base is not None else "function"


def docstring(obj: Any) -> str:
    """The whole docstring (a dataset entry: its one-line summary, then its load function's)."""
    parts = []
    if not isinstance(obj, type) and getattr(obj, "load", None) is not None:
        parts.append(getattr(obj, "summary", ""))
        obj = obj.load
    parts.append(inspect.getdoc(obj) or "")
    return plain("\n\n".join(p for p in parts if p))


def plain(text: str) -> str:
    """Docstring markup as it reads in a terminal and in Markdown: ``:func:`x``` becomes ```x```."""
    return re.sub(r":[a-z]+:`~?([^`]+)`", r"``\1``", text)


def reflow(text: str) -> str:
    """Join the hard-wrapped lines of each prose paragraph, so the terminal wraps them once;
    indented blocks and lists keep their lines."""
    paragraphs = []
    for para in text.split("\n\n"):
        lines = para.splitlines()
        prose = all(line and not line[0].isspace() and not line.startswith(("- ", "* ")) for line in lines)
        paragraphs.append(" ".join(lines) if prose else para)
    return "\n\n".join(paragraphs)


def option_rows(family_name: str, obj: Any) -> list[tuple[str, str, str, str]]:
    """(option, type, default, description) of every option, from the implementation's signature."""
    from meshlearn import plugins

    return [(o.name, type_text(o.annotation), default_text(o.default), o.description)
            for o in plugins.options_of(family_name, obj)]


def type_text(annotation: Any) -> str:
    """A type as a config writer reads it: TOML words (list, table), choices, ranges."""
    from pydantic.fields import FieldInfo

    from meshlearn.plugins import ModuleOf

    bounds = []
    if typing.get_origin(annotation) is typing.Annotated:
        annotation, *metadata = typing.get_args(annotation)
        for meta in metadata:
            if isinstance(meta, ModuleOf):
                return f"{meta.family}: a name or {{ name, options }}"
            bounds += meta.metadata if isinstance(meta, FieldInfo) else [meta]
    text = _type_name(annotation)
    limits = [f"{symbol} {getattr(b, attr)}" for b in bounds
              for attr, symbol in (("gt", ">"), ("ge", "≥"), ("lt", "<"), ("le", "≤"))
              if getattr(b, attr, None) is not None]
    return f"{text}, {', '.join(limits)}" if limits else text


def _type_name(annotation: Any) -> str:
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if annotation is Any or annotation is inspect.Parameter.empty:
        return "any"
    if origin is typing.Literal:
        return " | ".join(json.dumps(a) for a in args)
    if origin in (typing.Union, types.UnionType):
        names = list(dict.fromkeys(_type_name(a) for a in args if a is not type(None)))
        return " | ".join(names)
    if origin in (list, tuple):
        if origin is tuple and args and args[-1] is not Ellipsis:
            return f"[{', '.join(_type_name(a) for a in args)}]"
        return f"list of {_type_name(args[0])}" if args else "list"
    if origin is dict or annotation is dict:
        return "table"
    if isinstance(annotation, type):
        return annotation.__name__
    return str(annotation).replace("typing.", "")


def default_text(value: Any) -> str:
    """A default as it would be written in the TOML file ('required' where there is none)."""
    from pydantic_core import PydanticUndefined

    from meshlearn.plugins import Spec

    if value is inspect.Parameter.empty or value is PydanticUndefined or value is Ellipsis:
        return "required"
    if value is None:
        return "unset"
    if isinstance(value, Spec):
        return default_text({"name": value.name, "options": value.options} if value.options else value.name)
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)
    if isinstance(value, (list, tuple)):
        return f"[{', '.join(default_text(v) for v in value)}]"
    if isinstance(value, dict) and not value:
        return "{}"
    if isinstance(value, dict):
        return "{ " + ", ".join(f"{k} = {default_text(v)}" for k, v in value.items()) + " }"
    return repr(value)
