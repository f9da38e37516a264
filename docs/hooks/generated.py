"""MkDocs hook: the option and key tables are generated from the code at build time.

A page line ``<!-- generated: WHAT [ARG] -->`` is replaced by

- ``families``: the module families and their built-ins (what ``meshlearn list`` prints);
- ``family NAME``: every built-in of a family, its docstring and its options, read from its
  signature (what ``meshlearn describe FAMILY NAME`` prints);
- ``config SECTION``: the keys of a config section (``top``, ``data``, ``privacy.dp``,
  ``topology.schedule``...) from the pydantic models of ``meshlearn.config``.

so defaults and descriptions live once, in the code. On GitHub the line is an invisible comment.
A page with ``config`` tables must have one for every section with keys: a section added to
the config without a table is a warning, which fails ``mkdocs build --strict``.
"""

from __future__ import annotations

import logging
import posixpath
import re
import typing
from typing import Annotated, Any

from mkdocs.exceptions import PluginError
from pydantic import BaseModel

from meshlearn import plugins
from meshlearn.commands import describe
from meshlearn.config import ExperimentConfig

log = logging.getLogger("mkdocs.hooks.generated")
DIRECTIVE = re.compile(r"^<!-- generated: (\w+)(?: ([\w.]+))? -->$", re.MULTILINE)
_CODE = re.compile(r"(``.+?``|`[^`]+`)", re.DOTALL)


def on_page_markdown(markdown: str, page, config, files) -> str:
    def expand(match: re.Match) -> str:
        what, arg = match.groups()
        try:
            if what == "families":
                return families(posixpath.dirname(page.file.src_uri))
            if what == "family" and arg in plugins.FAMILIES:
                return family(arg)
            if what == "config":
                return config_section(arg or "top")
        except (KeyError, TypeError) as exc:
            raise PluginError(f"{page.file.src_path}: {match.group(0)}: {exc}") from None
        raise PluginError(f"{page.file.src_path}: unknown directive {match.group(0)}")

    shown = {arg or "top" for what, arg in DIRECTIVE.findall(markdown) if what == "config"}
    if shown:
        for path in sorted(set(sections()) - shown):
            log.warning(f"{page.file.src_path} has no table of config section {path!r}: "
                        f"add '<!-- generated: config {path} -->'")
    return DIRECTIVE.sub(expand, markdown)


# Markdown of docstrings and cells

def text(doc: str, cell: bool = False) -> str:
    """Docstring prose as Markdown: code spans kept, characters Markdown would read as markup
    escaped (``2**bits``, ``x_i``, ``{ name }``, ``<``), table separators escaped inside a cell."""
    doc = describe.plain(doc)
    parts = _CODE.split(doc)
    for i in range(0, len(parts), 2):
        parts[i] = re.sub(r"([\\*_>\[\]{}])", r"\\\1", parts[i]).replace("<", "&lt;")
    out = "".join(parts)
    if cell:
        out = " ".join(out.split()).replace("|", "\\|")
    return out


def code(value: str) -> str:
    return f"`{value}`" if value else ""


def default(value: str) -> str:
    """A default as code, or in words where there is none."""
    return f"*{value}*" if value in ("required", "unset") else code(value)


def table(header: tuple[str, ...], rows: list[tuple[str, ...]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


# module families

def families(folder: str) -> str:
    """The families table, with links to the family pages relative to the page's ``folder``."""
    rows = [(f"[{fam.name}]({posixpath.relpath(f'families/{fam.name}.md', folder or '.')})", code(fam.key),
             code(fam.options_key), text(fam.doc, cell=True),
             ", ".join(code(name) for name in fam.builtins()))
            for fam in plugins.FAMILIES.values()]
    return table(("family", "chosen by", "options in", "what it is", "built-ins"), rows)


def family(name: str) -> str:
    fam = plugins.FAMILIES[name]
    out = []
    for builtin, obj in fam.builtins().items():
        out += [f"### `{builtin}`", "", f"`{plugins.import_path_of(obj)}`", "", text(describe.docstring(obj)), ""]
        rows = [(code(option), text(kind, cell=True), default(value), text(about, cell=True))
                for option, kind, value, about in describe.option_rows(name, obj)]
        out += [table(("option", "type", "default", "description"), rows) if rows else "No options.", ""]
    return "\n".join(out)


# config sections

def _model(path: str) -> type[BaseModel]:
    """The pydantic model of a section path (``privacy.dp``, ``topology.schedule``...)."""
    model = ExperimentConfig
    for part in [] if path == "top" else path.split("."):
        field = model.model_fields.get(part)
        model = None if field is None else _section_of(field.annotation)
        if model is None:
            raise TypeError(f"{path!r} is not a section")
    return model


def _section_of(annotation: Any) -> type[BaseModel] | None:
    """The section model inside an annotation (``X | None``, ``list[X]``, ``dict[str, X]``)."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in typing.get_args(annotation):
        found = _section_of(arg)
        if found is not None:
            return found
    return None


def sections(model: type[BaseModel] = ExperimentConfig, path: str = "top") -> list[str]:
    """The paths of every section that has keys of its own (``top``, ``data``, ``privacy.dp``...)."""
    out, own = [], False
    for key, field in model.model_fields.items():
        sub = _section_of(field.annotation)
        if sub is None:
            own = True
        else:
            out += sections(sub, key if path == "top" else f"{path}.{key}")
    return ([path] if own else []) + out


def config_section(path: str) -> str:
    model = _model(path)
    rows = []
    for key, field in model.model_fields.items():
        if _section_of(field.annotation) is not None:
            continue   # a sub-section: its own table
        annotation = Annotated[(field.annotation, *field.metadata)] if field.metadata else field.annotation
        value = field.default_factory() if field.default_factory is not None else field.default
        rows.append((code(key), text(describe.type_text(annotation), cell=True),
                     default(describe.default_text(value)), text(field.description or "", cell=True)))
    return table(("key", "type", "default", "description"), rows)
