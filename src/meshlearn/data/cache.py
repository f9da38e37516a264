"""Parsed datasets cached as ``.npy`` files and memory-mapped on later loads.

Parsing source files is slow (LEAF's JSON above all: about 15 s for 272 MB, in every worker
process). A loader that names its source files (``Loader.sources``) has its result stored
once under the user cache folder (``$MESHLEARN_CACHE``, else ``$XDG_CACHE_HOME/meshlearn``,
else ``~/.cache/meshlearn``), one entry per dataset, options and source paths. The entry
records each source file's size and modification time; a later load whose files still match
memory-maps the arrays (copy-on-write), so processes on one machine share one copy through
the page cache and each reads only the samples it indexes. When a source file changed, the
entry is rebuilt; files elsewhere, or other options, get their own entry. Entries hold plain
arrays (``allow_pickle=False``) and a JSON description: nothing is unpickled.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
from collections.abc import Callable, Iterable
from pathlib import Path

import numpy as np

from .base import Dataset

__all__ = ["folder", "cached"]

log = logging.getLogger("meshlearn.data")

FORMAT = 1
_EDGE = 1 << 16
ARRAYS = ("x_train", "y_train", "x_test", "y_test", "users_train")


def folder() -> Path:
    """Where entries live."""
    if os.environ.get("MESHLEARN_CACHE"):
        return Path(os.environ["MESHLEARN_CACHE"]).expanduser()
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache").expanduser() / "meshlearn"


def _stamps(sources: Iterable[Path]) -> list[list]:
    """Each source file's absolute path, size, modification time (ns) and a digest of its first
    and last 64 KiB (a rewrite within one tick of the file system's clock), in path order."""
    out = []
    for path in sorted({Path(p).resolve() for p in sources}):
        stat = path.stat()
        digest = hashlib.blake2b(digest_size=16)
        with open(path, "rb") as fh:
            digest.update(fh.read(_EDGE))
            if stat.st_size > 2 * _EDGE:
                fh.seek(-_EDGE, os.SEEK_END)
            digest.update(fh.read(_EDGE))
        out.append([str(path), stat.st_size, stat.st_mtime_ns, digest.hexdigest()])
    return out


def cached(name: str, options: dict, sources: Iterable[Path], build: Callable[[], Dataset]) -> Dataset:
    """The dataset ``build()`` makes from ``sources``, from the cache when they are unchanged."""
    stamps = _stamps(sources)
    identity = json.dumps([FORMAT, name, options, [stamp[0] for stamp in stamps]], sort_keys=True, default=str)
    slug = "".join(c if c.isalnum() or c in "-_" else "_" for c in name)[-40:]
    entry = folder() / "datasets" / f"{slug}-{hashlib.sha256(identity.encode()).hexdigest()[:20]}"
    try:
        return _read(entry, stamps)
    except (OSError, ValueError, KeyError):   # no entry, an entry of older files, or a damaged one
        pass
    data = build()
    try:
        _write(entry, data, stamps)
    except (OSError, ValueError) as exc:   # read-only or full disk, object arrays: go on uncached
        log.warning("could not cache data set %s in %s: %s", name, entry, exc)
    return data


def _read(entry: Path, stamps: list[list]) -> Dataset:
    meta = json.loads((entry / "meta.json").read_text())
    if meta["format"] != FORMAT or meta["sources"] != stamps:
        raise ValueError("the source files changed")
    arrays = {key: np.load(entry / f"{key}.npy", mmap_mode="c", allow_pickle=False)
              for key in ARRAYS if key in meta["arrays"]}
    cardinalities = meta["cardinalities"]
    return Dataset(meta["name"], arrays["x_train"], arrays["y_train"], arrays["x_test"], arrays["y_test"],
                   meta["num_classes"], arrays.get("users_train"), meta["user_names"], meta["task"],
                   None if cardinalities is None else tuple(cardinalities))


def _write(entry: Path, data: Dataset, stamps: list[list]) -> None:
    """Write the entry beside its place, then move it there (replacing an outdated one)."""
    entry.parent.mkdir(parents=True, exist_ok=True)
    staging = entry.with_name(f"{entry.name}.{os.getpid()}.tmp")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir()
    try:
        present = [key for key in ARRAYS if getattr(data, key) is not None]
        for key in present:
            np.save(staging / f"{key}.npy", np.ascontiguousarray(getattr(data, key)), allow_pickle=False)
        meta = {"format": FORMAT, "sources": stamps, "arrays": present, "name": data.name,
                "num_classes": int(data.num_classes), "task": data.task,
                "user_names": None if data.user_names is None else [str(u) for u in data.user_names],
                "cardinalities": None if data.cardinalities is None else [int(c) for c in data.cardinalities]}
        (staging / "meta.json").write_text(json.dumps(meta))
        shutil.rmtree(entry, ignore_errors=True)
        os.rename(staging, entry)
    except OSError as exc:
        if not (entry / "meta.json").is_file():
            raise
        log.debug("data set entry %s was written by another process first (%s)", entry, exc)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
