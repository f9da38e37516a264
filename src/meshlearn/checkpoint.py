"""Checkpoints: everything that decides a run's future, saved without pickle.

A component's state (``state_dict()``) is a tree of dicts and lists whose leaves are tensors,
numpy arrays or JSON values (numbers, strings, booleans, None). ``encode`` turns a tree into
one safetensors blob: the tensors and arrays are its tensors, the rest of the tree is JSON in
its metadata, with each tensor leaf replaced by a reference to its key. Reading one back runs
no code, so a checkpoint from elsewhere cannot execute anything.

A run directory keeps its latest checkpoint in ``checkpoint/``: ``run.json`` (the round it was
taken after, the summary so far, how the run was launched) and one ``host-K.safetensors`` per
process that hosts nodes (the simulators: one; the networked engines: one per worker). A new
checkpoint is written beside the old one and swapped in by renames, so a crash while saving
leaves the previous checkpoint whole.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch

from meshlearn.results import RunDirError

__all__ = ["CHECKPOINT_DIR", "encode", "decode", "save_checkpoint", "load_checkpoint", "find_checkpoint",
           "remove_checkpoint", "CheckpointError"]

CHECKPOINT_DIR = "checkpoint"
_NEW, _OLD = CHECKPOINT_DIR + ".new", CHECKPOINT_DIR + ".old"
_TREE = "state"   # the metadata key holding the JSON tree


class CheckpointError(RunDirError):
    """A checkpoint is missing, damaged, or does not belong to the run being resumed."""


def encode(tree: Any) -> bytes:
    """One safetensors blob holding ``tree``."""
    from safetensors.torch import save

    tensors: dict[str, torch.Tensor] = {}

    def walk(value: Any, path: str) -> Any:
        if isinstance(value, torch.Tensor):
            tensors[path] = value.detach().cpu().clone().contiguous()   # a copy: safetensors refuses shared memory
            return {"$tensor": path}
        if isinstance(value, np.ndarray):
            tensors[path] = torch.from_numpy(np.array(value, copy=True, order="C"))
            return {"$array": path}
        if isinstance(value, dict):
            if all(isinstance(k, str) and not k.startswith("$") for k in value):
                return {k: walk(v, f"{path}/{k}") for k, v in value.items()}
            return {"$items": [[k, walk(v, f"{path}/{k}")] for k, v in value.items()]}
        if isinstance(value, (list, tuple)):
            return [walk(v, f"{path}/{i}") for i, v in enumerate(value)]
        if isinstance(value, np.generic):
            return value.item()
        if value is None or isinstance(value, (bool, int, float, str)):
            return value
        raise TypeError(f"state entry {path or '/'} is a {type(value).__name__}: a state holds tensors, numpy "
                        "arrays, numbers, strings, lists and dicts")

    meta = json.dumps(walk(tree, ""))
    return save(tensors, metadata={_TREE: meta})


def decode(blob: bytes) -> Any:
    """The tree ``encode`` stored in ``blob``."""
    from safetensors.torch import load

    try:
        tensors = load(blob)
        return _build(json.loads(_metadata(blob)), tensors)
    except Exception as exc:   # safetensors' own error, or a header or tree that is not ours
        raise CheckpointError(f"a checkpoint file is damaged ({type(exc).__name__}: {exc}); start the run "
                              "again") from None


def _build(value: Any, tensors: dict[str, torch.Tensor]) -> Any:
    if isinstance(value, dict):
        if "$tensor" in value:
            return tensors[value["$tensor"]]
        if "$array" in value:
            return tensors[value["$array"]].numpy()
        if "$items" in value:
            return {(tuple(k) if isinstance(k, list) else k): _build(v, tensors) for k, v in value["$items"]}
        return {k: _build(v, tensors) for k, v in value.items()}
    if isinstance(value, list):
        return [_build(v, tensors) for v in value]
    return value


def _metadata(blob: bytes) -> str:
    """The JSON tree in a safetensors blob's header (8-byte length, then the header's JSON)."""
    size = int.from_bytes(blob[:8], "little")
    header = json.loads(blob[8:8 + size])
    return header["__metadata__"][_TREE]


def save_checkpoint(run_dir: str | Path, run: dict[str, Any], hosts: dict[int, bytes]) -> Path:
    """Write ``run`` (JSON) and each host's encoded state as the run's checkpoint, replacing
    the previous one only once the new one is complete."""
    run_dir = Path(run_dir)
    new, current, old = run_dir / _NEW, run_dir / CHECKPOINT_DIR, run_dir / _OLD
    shutil.rmtree(new, ignore_errors=True)
    new.mkdir()
    for k, blob in hosts.items():
        (new / f"host-{k}.safetensors").write_bytes(blob)
    (new / "run.json").write_text(json.dumps(run, indent=2, allow_nan=True) + "\n")
    shutil.rmtree(old, ignore_errors=True)
    if current.exists():
        current.rename(old)
    new.rename(current)
    shutil.rmtree(old, ignore_errors=True)
    return current


def remove_checkpoint(run_dir: str | Path) -> None:
    """Delete the run's checkpoint: a run that ended (completed or diverged) is not resumed."""
    for name in (CHECKPOINT_DIR, _NEW, _OLD):
        shutil.rmtree(Path(run_dir) / name, ignore_errors=True)


def find_checkpoint(run_dir: str | Path) -> Path:
    """The run's latest whole checkpoint folder (the previous one if a save was cut short)."""
    run_dir = Path(run_dir)
    for name in (CHECKPOINT_DIR, _OLD):
        if (run_dir / name / "run.json").is_file():
            return run_dir / name
    raise CheckpointError(f"{run_dir} holds no checkpoint ({CHECKPOINT_DIR}/run.json): the run stopped before its "
                          "first checkpoint; start it again (set checkpoint.every to checkpoint every k rounds)")


def load_checkpoint(run_dir: str | Path, states: bool = True) -> tuple[dict[str, Any], dict[int, bytes]]:
    """``run.json`` and (with ``states``) each host's encoded state from the run's latest
    checkpoint; without, only ``run.json`` is read (the config, the round)."""
    folder = find_checkpoint(run_dir)
    try:
        run = json.loads((folder / "run.json").read_text())
        hosts = {int(k): (folder / f"host-{k}.safetensors").read_bytes() for k in run["hosts"]} if states else {}
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise CheckpointError(f"{folder} is damaged ({exc}); start the run again") from None
    return run, hosts
