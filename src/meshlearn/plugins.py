"""Module families: every pluggable part is a built-in name or the user's own code by import path.

A config names an implementation the same way in every family (algorithm, sharing,
compressor, dataset, partitioner, topology, model, aggregator, attack, optimizer): a built-in name such as
``"topk"``, an import path ``"mypkg.rules:MedianGossip"``, or a file ``"rules.py:MedianGossip"``
(relative to the config file's folder). Its options are the keyword arguments of its
constructor (or function): the signature is the schema, so options are checked against it
when the config is parsed, defaults live once (in the signature), and ``meshlearn describe``
prints them from the same place. A user's class goes through exactly the same path as ours.

Parameters the framework passes itself (a sharing scheme's ``seed``, a model's
``input_shape``...) are the family's ``provided`` names and are not options. An option
annotated with ``Annotated[..., Field(...)]`` gets pydantic's range checks and its
description; one annotated ``Annotated[Spec, ModuleOf("compressor")]`` takes a module of that
family (a name, or a table ``{name = ..., options = {...}}``).
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import inspect
import sys
import typing
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any

from pydantic import AfterValidator, TypeAdapter, ValidationError
from pydantic.fields import FieldInfo

__all__ = ["Family", "FAMILIES", "Spec", "ModuleOf", "family", "resolve", "options_of", "check_options",
           "build", "locate", "canonical", "import_path_of", "absolute_spec", "add_import_paths", "import_folders", "config_folder", "config_path",
           "ConfigPath", "summary"]


@dataclass(frozen=True)
class Spec:
    """A module named inside another module's options (e.g. CHOCO-SGD's compressor)."""

    name: str
    options: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class ModuleOf:
    """Marks an option that takes a module of another family:
    ``compressor: Annotated[Spec, ModuleOf("compressor")] = Spec("topk")``."""

    family: str


@dataclass(frozen=True)
class Family:
    """One kind of pluggable module.

    ``registry`` ("module:ATTR") holds the built-ins by name; ``base`` ("module:Class"), where
    set, is the class a plug-in must subclass; ``provided`` are parameters the framework fills
    in (never options); ``key`` is the config key that names the implementation and
    ``options_key`` the table of its options.
    """

    name: str
    key: str
    options_key: str
    registry: str
    provided: tuple[str, ...] = ()
    base: str | None = None
    doc: str = ""

    def builtins(self) -> dict[str, Any]:
        return _attr(self.registry)

    def base_class(self) -> type | None:
        return _attr(self.base) if self.base else None


FAMILIES: dict[str, Family] = {f.name: f for f in (
    Family("algorithm", "algorithm.name", "algorithm.options", "meshlearn.algorithms:ALGORITHMS", ("sharing",),
           "meshlearn.algorithms.base:Algorithm", "what every node does in a round (or on events, if asynchronous)"),
    Family("sharing", "sharing.name", "sharing.options", "meshlearn.sharing:SHARINGS", ("seed",),
           "meshlearn.sharing.base:Sharing",
           "what nodes send and how they aggregate what they receive"),
    Family("compressor", "sharing.options.compressor", "sharing.options.compressor.options",
           "meshlearn.sharing.compressors:COMPRESSORS", ("seed",),
           "meshlearn.sharing.compressors:Compressor", "maps model rows to a (smaller) payload and back"),
    Family("dataset", "data.dataset", "data.options", "meshlearn.data.datasets:DATASETS", ("root",), None,
           "reads a whole task from files on disk into a Dataset"),
    Family("partitioner", "data.partition", "data.partition_options", "meshlearn.data.partition:PARTITIONS",
           ("labels", "num_nodes", "rng", "users", "seed", "min_samples"), None,
           "splits the training set across nodes (a list of index arrays)"),
    Family("topology", "topology.kind", "topology.options", "meshlearn.topology.generators:TOPOLOGIES",
           ("n", "seed", "label_counts"), None,
           "builds the communication graph (a networkx graph on nodes 0..n-1)"),
    Family("model", "model.name", "model.options", "meshlearn.models:MODELS", ("input_shape", "num_classes", "cardinalities"),
           "torch.nn:Module", "the network every node trains"),
    Family("aggregator", "aggregation.name", "aggregation.options", "meshlearn.aggregation:AGGREGATORS",
           ("rounds",), "meshlearn.aggregation.base:Aggregator",
           "folds the models a node received into its own (the mixing step)"),
    Family("attack", "byzantine.attack", "byzantine.options", "meshlearn.byzantine:ATTACKS", ("seed",),
           "meshlearn.byzantine.attacks:Attack", "what Byzantine nodes send (and train on)"),
    Family("optimizer", "training.optimizer", "training.optimizer_options", "meshlearn.training:OPTIMIZERS",
           ("lr",),
           "meshlearn.training:Optimizer", "the local update rule, run on stacked nodes"),
)}


def family(name: str) -> Family:
    try:
        return FAMILIES[name]
    except KeyError:
        raise ValueError(f"unknown module family {name!r}; families: {', '.join(FAMILIES)}") from None


# import paths

def is_import_path(spec: str) -> bool:
    return ":" in spec


def absolute_spec(spec: str, base_dir: str | Path | None = None) -> str:
    """``"rules.py:Name"`` relative to ``base_dir`` (default: the folder of the config being
    parsed, else the working directory) made absolute, so that the resolved config works from
    any working directory and on every worker."""
    if not isinstance(spec, str):
        return spec
    target, sep, attr = spec.rpartition(":")
    if not sep or not target.endswith(".py"):
        return spec
    return f"{config_path(target, base_dir)}:{attr}"


_ADDED: list[str] = []   # folders made importable for plug-ins in this process, oldest first


def add_import_paths(paths: Iterable[str | Path]) -> None:
    """Make folders importable for ``"package.module:Name"`` plug-ins (first in ``sys.path``,
    as Python does for a script's folder); each is added once, for the rest of the process
    (a module imported from one stays imported: two plug-in folders should not reuse a
    module name)."""
    for p in reversed([str(Path(p).resolve()) for p in paths]):
        if p not in sys.path:
            sys.path.insert(0, p)
        if p not in _ADDED:
            _ADDED.append(p)


def import_folders() -> list[str]:
    """The folders made importable so far: worker processes make them importable too."""
    return list(_ADDED)


_CONFIG_FOLDER: ContextVar[Path | None] = ContextVar("meshlearn_config_folder", default=None)


@contextmanager
def config_folder(folder: str | Path | None) -> Iterator[None]:
    """While a config is parsed: the folder that ``"file.py:Name"`` specs are relative to."""
    token = _CONFIG_FOLDER.set(Path(folder) if folder is not None else None)
    try:
        yield
    finally:
        _CONFIG_FOLDER.reset(token)


def config_path(path: str, base_dir: str | Path | None = None) -> str:
    """``path`` made absolute against ``base_dir`` (default: the folder of the config being
    parsed, else the working directory), the rule of ``"file.py:Name"`` specs, so the resolved
    config finds the file from any working directory and on every worker."""
    target = Path(path).expanduser()
    if not target.is_absolute():
        target = Path(base_dir or _CONFIG_FOLDER.get() or Path.cwd()) / target
    return str(target.resolve())


ConfigPath = Annotated[str, AfterValidator(config_path)]
"""The type of a plug-in option that names a file: relative to the config file (``config_path``)."""


def _attr(ref: str) -> Any:
    module, _, attr = ref.partition(":")
    obj = importlib.import_module(module)
    for part in attr.split("."):
        obj = getattr(obj, part)
    return obj


def _load_file(path: str) -> Any:
    """Import a ``.py`` file as a module of its own (named from its absolute path, so that
    every process that loads it agrees and it is imported once)."""
    resolved = Path(path).resolve()
    name = f"meshlearn_plugin_{resolved.stem}_{hashlib.sha1(str(resolved).encode()).hexdigest()[:8]}"
    if name in sys.modules:
        return sys.modules[name]
    if not resolved.is_file():
        raise ImportError(f"file {str(resolved)!r} not found")
    spec = importlib.util.spec_from_file_location(name, resolved)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    sys.path.insert(0, str(resolved.parent))   # so that the file can import its neighbours
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[name]
        raise
    finally:
        sys.path.remove(str(resolved.parent))
    return module


def resolve(family_name: str, spec: str) -> Any:
    """The implementation named by ``spec``: a built-in name or an import path."""
    fam = family(family_name)
    builtins = fam.builtins()
    if not isinstance(spec, str) or not spec:
        raise ValueError(f"{fam.key} must be a name or an import path, got {spec!r}")
    if spec in builtins:
        return builtins[spec]
    if not is_import_path(spec):
        raise ValueError(f"{fam.key} = {spec!r} is unknown; built-in {fam.name}s: {', '.join(sorted(builtins))}; "
                         "or give your own as 'package.module:Name' or 'file.py:Name'")
    target, _, attr = spec.rpartition(":")
    try:
        module = _load_file(target) if target.endswith(".py") else importlib.import_module(target)
        obj = module
        for part in attr.split("."):
            obj = getattr(obj, part)
    except Exception as exc:
        raise ValueError(f"{fam.key} = {spec!r} could not be imported: {type(exc).__name__}: {exc}. "
                         "The config file's folder and the working directory are importable; check the "
                         "module path and the name after ':'") from None
    base = fam.base_class()
    if base is not None and not (isinstance(obj, type) and issubclass(obj, base)):
        raise ValueError(f"{fam.key} = {spec!r} is not a subclass of {base.__module__}.{base.__qualname__}")
    if inspect.isabstract(obj):
        raise ValueError(f"{fam.key} = {spec!r} is abstract: implement {', '.join(sorted(obj.__abstractmethods__))}")
    if base is None and not callable(obj):
        raise ValueError(f"{fam.key} = {spec!r} is not callable")
    return obj


def locate(family_name: str, spec: str) -> str:
    """``spec`` as the resolved config records it: a file path made absolute, and an entry
    registered by hand made an import path (``canonical``)."""
    return canonical(family_name, absolute_spec(spec))


def canonical(family_name: str, spec: str) -> str:
    """``spec`` as every process can load it: built-in names stay; an entry registered by hand
    in this process (not one of meshlearn's) becomes its import path, so that workers load the
    user's code or fail saying so, instead of silently running something else."""
    obj = family(family_name).builtins().get(spec)
    if obj is None:
        return spec
    path = import_path_of(obj)
    return spec if path.startswith(("meshlearn.", "meshlearn:")) else path


def import_path_of(obj: Any) -> str:
    """``"module:QualName"`` of an implementation (of a dataset entry: its load function)."""
    target = _callable_of(obj)
    return f"{getattr(target, '__module__', '')}:{target.__qualname__}"


# options from signatures

@dataclass(frozen=True)
class OptionInfo:
    """One option of an implementation, read from its signature."""

    name: str
    annotation: Any
    default: Any                      # inspect.Parameter.empty when required
    description: str = ""
    family: str | None = None         # a module of this family (Annotated[Spec, ModuleOf(...)])

    @property
    def required(self) -> bool:
        return self.default is inspect.Parameter.empty


def _callable_of(obj: Any) -> Callable:
    """What is called with the options: the class itself, or a dataset entry's ``load``."""
    return getattr(obj, "load", obj) if not isinstance(obj, type) else obj


def options_of(family_name: str, obj: Any) -> list[OptionInfo]:
    """The options of an implementation: its signature less the parameters the framework provides."""
    fam = family(family_name)
    target = _callable_of(obj)
    sig = inspect.signature(target)
    try:
        hints = typing.get_type_hints(target.__init__ if isinstance(target, type) else target, include_extras=True)
    except Exception:   # annotations that do not evaluate: no type checks, names and defaults still hold
        hints = {}
    out = []
    for p in sig.parameters.values():
        if p.name in fam.provided or p.name == "self" or p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
            continue
        annotation = hints.get(p.name, Any)
        description, member = "", None
        for meta in getattr(annotation, "__metadata__", ()):
            if isinstance(meta, FieldInfo) and meta.description:
                description = meta.description
            if isinstance(meta, ModuleOf):
                member = meta.family
        default = p.default
        if isinstance(default, FieldInfo):
            default = default.default
        out.append(OptionInfo(p.name, annotation, default, description, member))
    return out


def _json_default(value: Any) -> Any:
    if isinstance(value, Spec):
        return {"name": value.name, "options": dict(value.options)}
    if isinstance(value, tuple):
        return list(value)
    return value


def check_options(family_name: str, spec: str, options: dict[str, Any] | None, where: str,
                  obj: Any = None) -> dict[str, Any]:
    """Check ``options`` against the implementation's signature and return them with every
    default filled in (so a resolved config lists the options in effect). Raises
    ``ValueError`` naming ``where.KEY`` and listing the accepted options with their defaults."""
    obj = resolve(family_name, spec) if obj is None else obj
    options = dict(options or {})
    accepted = options_of(family_name, obj)
    by_name = {o.name: o for o in accepted}
    listing = ", ".join(o.name + ("" if o.required else f" = {_json_default(o.default)!r}") for o in accepted) \
        or "none"
    unknown = sorted(set(options) - set(by_name))
    if unknown and not _takes_any(_callable_of(obj)):
        raise ValueError(f"{where}.{unknown[0]} is not an option of {family(family_name).key} = {spec!r}; "
                         f"its options: {listing}")
    out: dict[str, Any] = {}
    for opt in accepted:
        if opt.name not in options:
            if opt.required:
                raise ValueError(f"{where}.{opt.name} is required by {family(family_name).key} = {spec!r}; "
                                 f"its options: {listing}")
            out[opt.name] = _json_default(opt.default)
            if opt.family is not None:
                out[opt.name] = check_module(opt.family, out[opt.name], f"{where}.{opt.name}")
            continue
        value = options.pop(opt.name)
        if opt.family is not None:
            out[opt.name] = check_module(opt.family, value, f"{where}.{opt.name}")
            continue
        if opt.annotation is not Any:
            try:
                value = TypeAdapter(opt.annotation).validate_python(value)
            except ValidationError as exc:
                problem = "; ".join(e["msg"] for e in exc.errors())
                raise ValueError(f"{where}.{opt.name} = {value!r}: {problem}") from None
            except Exception:   # an annotation pydantic cannot check: take the value as given
                pass
        out[opt.name] = _json_default(value)
    out.update(options)   # extra keyword arguments of a **kwargs signature
    return out


def check_module(family_name: str, value: Any, where: str) -> dict[str, Any]:
    """A module given inside options: a name, a ``Spec``, or ``{name = ..., options = {...}}``
    (the old flat form ``{name = ..., key = value}`` is accepted too); returns the table form."""
    if isinstance(value, Spec):
        value = {"name": value.name, "options": dict(value.options)}
    if isinstance(value, str):
        value = {"name": value}
    if not isinstance(value, dict) or not isinstance(value.get("name"), str):
        raise ValueError(f"{where} must be a name or a table with a 'name' (and 'options'), got {value!r}")
    value = dict(value)
    name = locate(family_name, value.pop("name"))
    options = value.pop("options", {})
    if not isinstance(options, dict):
        raise ValueError(f"{where}.options must be a table, got {options!r}")
    options = {**value, **options}
    return {"name": name, "options": check_options(family_name, name, options, f"{where}.options")}


def build(family_name: str, spec: str, options: dict[str, Any] | None = None, **provided: Any) -> Any:
    """Instantiate (or call) the implementation with its options and the provided parameters."""
    target = _callable_of(resolve(family_name, spec))
    accepted = inspect.signature(target).parameters
    given = {k: v for k, v in provided.items() if k in accepted or _takes_any(target)}
    return target(**given, **(options or {}))


def _takes_any(target: Callable) -> bool:
    """The callable takes ``**kwargs``: any option (or provided parameter) goes to it."""
    return any(p.kind == p.VAR_KEYWORD for p in inspect.signature(target).parameters.values())


def summary(obj: Any) -> str:
    """The first paragraph of an implementation's docstring, on one line (a sentence often
    wraps over several lines)."""
    doc = getattr(obj, "summary", None) if not isinstance(obj, type) else None
    doc = doc or inspect.getdoc(_callable_of(obj)) or ""
    return " ".join(doc.strip().split("\n\n")[0].split())
