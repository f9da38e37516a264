"""LEAF benchmark tasks (FEMNIST, CelebA, Shakespeare, Sent140, Reddit) from LEAF's JSON.

LEAF (Caldas et al., 2018) ships a preprocessing pipeline that writes
``<task>/data/train/*.json`` and ``<task>/data/test/*.json``, each file being
``{"users": [...], "num_samples": [...], "user_data": {user: {"x": [...], "y": [...]}}}``.
The user of every training sample is kept (``users_train``) so that the
"natural" partition can give each node one real client's data; the test data
of all users forms the global test set.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .base import Dataset

__all__ = [
    "ALL_LETTERS",
    "read_leaf_split",
    "load_femnist",
    "load_celeba",
    "load_shakespeare",
    "load_sent140",
    "load_reddit",
    "check_leaf",
    "leaf_sources",
]

# LEAF's models/shakespeare character set (models/utils/language_utils.py).
ALL_LETTERS = "\n !\"&'(),-.0123456789:;>?ABCDEFGHIJKLMNOPQRSTUVWXYZ[]abcdefghijklmnopqrstuvwxyz}"

_LEAF_URL = "https://github.com/TalwalkarLab/leaf"
_PREPROCESS = {
    "femnist": "./preprocess.sh -s niid --sf 0.05 -k 0 -t sample",
    "celeba": "./preprocess.sh -s niid --sf 1.0 -k 5 -t sample",
    "shakespeare": "./preprocess.sh -s niid --sf 0.2 -k 0 -t sample -tf 0.8",
    "sent140": "./preprocess.sh -s niid --sf 0.3 -k 3 -t sample",
    "reddit": "download its preprocessed reddit_leaf.zip as the README of data/reddit says",
}
_TOKEN = re.compile(r"[\w']+|[.,!?;]")  # LEAF's split_line for Sent140


def _hint(task: str) -> str:
    return (
        f"get it with LEAF ({_LEAF_URL}): cd data/{task} && {_PREPROCESS[task]}, "
        f"then set data.root to leaf/data/{task}/data (the folder holding train/ and test/)"
    )


def _base(task: str, root: str | None) -> Path:
    """Folder that holds train/ and test/ (``root`` itself or ``root/data``)."""
    if not root:
        raise FileNotFoundError(
            f"data.dataset = 'leaf-{task}' needs data.root pointing at LEAF JSON "
            f"(expected <data.root>/train/*.json and <data.root>/test/*.json); to get it, " + _hint(task)
        )
    base = Path(root).expanduser()
    if not (base / "train").is_dir() and (base / "data" / "train").is_dir():
        base = base / "data"
    for split in ("train", "test"):
        if not any((base / split).glob("*.json")):
            raise FileNotFoundError(
                f"data.dataset = 'leaf-{task}': expected *.json files in {base / split} "
                f"(data.root = {root}); to get them, " + _hint(task)
            )
    return base


def leaf_sources(task: str, root: str | None = None) -> list[Path]:
    """The JSON files a LEAF task is parsed from."""
    base = _base(task, root)
    return [*sorted((base / "train").glob("*.json")), *sorted((base / "test").glob("*.json"))]


def check_leaf(task: str, root: str | None = None) -> None:
    base = _base(task, root)
    if task == "celeba":
        _celeba_images(base, root)


def read_leaf_split(folder: str | Path) -> list[tuple[str, list, list]]:
    """``(user, xs, ys)`` for every user of every ``*.json`` in ``folder``, in file then list order."""
    out: list[tuple[str, list, list]] = []
    for path in sorted(Path(folder).glob("*.json")):
        try:
            with open(path, encoding="utf-8") as fh:
                blob = json.load(fh)
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise ValueError(f"{path}: not valid LEAF JSON ({exc})") from exc
        if not isinstance(blob, dict) or not isinstance(blob.get("user_data"), dict):
            raise ValueError(f"{path}: missing 'user_data' (not a LEAF data file)")
        user_data = blob["user_data"]
        users = blob.get("users", list(user_data))
        counts = blob.get("num_samples")
        if not isinstance(users, list) or not all(isinstance(user, str) for user in users):
            raise ValueError(f"{path}: 'users' must be a list of user names")
        if counts is not None and not (isinstance(counts, list) and all(type(c) is int for c in counts)):
            raise ValueError(f"{path}: 'num_samples' must be a list of integers")
        for i, user in enumerate(users):
            record = user_data.get(user)
            if not isinstance(record, dict) or "x" not in record or "y" not in record:
                raise ValueError(f"{path}: user {user!r} has no x/y in 'user_data'")
            xs, ys = record["x"], record["y"]
            if not isinstance(xs, list) or not isinstance(ys, list):
                raise ValueError(f"{path}: user {user!r}: 'x' and 'y' must be lists of samples")
            if len(xs) != len(ys):
                raise ValueError(f"{path}: user {user!r} has {len(xs)} x but {len(ys)} y")
            if counts is not None and i < len(counts) and counts[i] != len(xs):
                raise ValueError(f"{path}: user {user!r}: num_samples says {counts[i]}, found {len(xs)}")
            out.append((str(user), xs, ys))
    return out


def _assemble(
    task: str,
    root: str | None,
    convert_x: Callable[[list, str], np.ndarray],
    convert_y: Callable[[list, str], np.ndarray],
    num_classes: int,
    prepare: Callable[[list[tuple[str, list, list]]], None] | None = None,
    samples: Callable[[list, list, str], tuple[list, list]] | None = None,
) -> Dataset:
    """``samples`` turns a user's records (xs, ys) into its samples, when one record holds several."""
    base = _base(task, root)
    train = read_leaf_split(base / "train")
    test = read_leaf_split(base / "test")
    if samples is not None:
        train = [(user, *samples(ux, uy, str(base / "train"))) for user, ux, uy in train]
        test = [(user, *samples(ux, uy, str(base / "test"))) for user, ux, uy in test]
    if prepare is not None:
        prepare(train)
    names: list[str] = []
    index: dict[str, int] = {}
    xs: list = []
    ys: list = []
    owners: list[int] = []
    for user, ux, uy in train:
        if user not in index:
            index[user] = len(names)
            names.append(user)
        xs.extend(ux)
        ys.extend(uy)
        owners.extend([index[user]] * len(ux))
    tx = [x for _, ux, _ in test for x in ux]
    ty = [y for _, _, uy in test for y in uy]
    y_train, y_test = convert_y(ys, str(base / "train")), convert_y(ty, str(base / "test"))
    for y, where in ((y_train, base / "train"), (y_test, base / "test")):
        if y.size and (y.min() < 0 or y.max() >= num_classes):
            raise ValueError(f"{where}: labels must lie in 0..{num_classes - 1}")
    return Dataset(
        name=f"leaf-{task}",
        x_train=convert_x(xs, str(base / "train")),
        y_train=y_train,
        x_test=convert_x(tx, str(base / "test")),
        y_test=y_test,
        num_classes=num_classes,
        users_train=np.asarray(owners, dtype=np.int64),
        user_names=names,
    )


def _int_labels(ys: list, where: str) -> np.ndarray:
    try:
        return np.asarray([int(y) for y in ys], dtype=np.int64)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{where}: labels must be integers ({exc})") from exc


# --- FEMNIST -----------------------------------------------------------------

def load_femnist(root: str | None = None) -> Dataset:
    """FEMNIST: 28x28 handwritten characters of 62 classes, one LEAF user per writer.

    LEAF stores pixels as ``value / 255`` (white background = 1.0); they are kept as-is.
    """

    def images(xs: list, where: str) -> np.ndarray:
        arr = np.asarray(xs, dtype=np.float32)
        if arr.size == 0:
            return arr.reshape(0, 1, 28, 28)
        if arr.ndim != 2 or arr.shape[1] != 784:
            raise ValueError(f"{where}: FEMNIST x must be 784 floats per sample, got shape {arr.shape}")
        return arr.reshape(-1, 1, 28, 28)

    return _assemble("femnist", root, images, _int_labels, num_classes=62)


# --- Shakespeare -------------------------------------------------------------

def _char_ids(texts: Sequence[str], where: str) -> np.ndarray:
    """Map characters to ALL_LETTERS indices; characters outside the set become ' '.

    LEAF's own ``word_to_indices`` gives -1 for them, which no embedding accepts.
    """
    joined = "".join(texts)
    codes = np.frombuffer(joined.encode("utf-32-le"), dtype="<u4")
    size = max(int(codes.max()) + 1 if codes.size else 0, 128)
    table = np.full(size, ALL_LETTERS.index(" "), dtype=np.int64)
    for i, ch in enumerate(ALL_LETTERS):
        table[ord(ch)] = i
    return table[codes]


def load_shakespeare(root: str | None = None) -> Dataset:
    """Shakespeare next-character prediction: 80-character windows, one user per role."""

    def sequences(xs: list, where: str) -> np.ndarray:
        if not xs:
            return np.zeros((0, 80), dtype=np.int64)
        if not all(isinstance(s, str) for s in xs):
            raise ValueError(f"{where}: Shakespeare x must be strings")
        length = len(xs[0])
        if any(len(s) != length for s in xs):
            raise ValueError(f"{where}: Shakespeare x strings must all have the same length ({length})")
        return _char_ids(xs, where).reshape(len(xs), length)

    def targets(ys: list, where: str) -> np.ndarray:
        if not all(isinstance(s, str) and len(s) == 1 for s in ys):
            raise ValueError(f"{where}: Shakespeare y must be single characters")
        return _char_ids(ys, where)

    return _assemble("shakespeare", root, sequences, targets, num_classes=len(ALL_LETTERS))


# --- Sent140 -----------------------------------------------------------------

def tokenize(text: str) -> list[str]:
    """LEAF's Sent140 word splitting, lower-cased so that vocabularies match GloVe's."""
    return _TOKEN.findall(text.lower())


def load_sent140(root: str | None = None, vocab_size: int = 10000, seq_len: int = 25) -> Dataset:
    """Sent140 tweet sentiment (2 classes) as token ids (N, seq_len).

    The vocabulary is built from the training tweets only (no test leakage):
    id 0 pads, id 1 is unknown, ids 2..vocab_size-1 are the most frequent words
    (ties by first occurrence), so ``vocab_size`` is the embedding size a model needs.
    """
    if vocab_size < 3:
        raise ValueError(f"vocab_size must be >= 3 (padding, unknown, one word), got {vocab_size}")
    if seq_len < 1:
        raise ValueError(f"seq_len must be >= 1, got {seq_len}")
    vocab: dict[str, int] = {}

    def text(x: Any, where: str) -> str:
        if not isinstance(x, (list, tuple)) or len(x) < 5 or not isinstance(x[4], str):
            raise ValueError(f"{where}: Sent140 x must be tweet records with the text at index 4")
        return x[4]

    def build_vocab(train: list[tuple[str, list, list]]) -> None:
        where = "train"
        counts = Counter(w for _, ux, _ in train for x in ux for w in tokenize(text(x, where)))
        for i, (word, _) in enumerate(counts.most_common(vocab_size - 2)):
            vocab[word] = i + 2

    def sequences(xs: list, where: str) -> np.ndarray:
        out = np.zeros((len(xs), seq_len), dtype=np.int64)
        for row, x in enumerate(xs):
            ids = [vocab.get(w, 1) for w in tokenize(text(x, where))[:seq_len]]
            out[row, : len(ids)] = ids
        return out

    return _assemble("sent140", root, sequences, _int_labels, num_classes=2, prepare=build_vocab)


def load_reddit(root: str | None = None, vocab_size: int = 10000, seq_len: int = 10) -> Dataset:
    """LEAF Reddit next-word prediction: a sample is one ``seq_len``-token sequence of a comment,
    its label the last non-padding token of the matching target sequence (the word that follows).

    A user's ``x`` is a list of comments, each a list of token sequences; its ``y`` a list of
    records whose ``target_tokens`` are those sequences shifted by one word. Sequences whose
    target is all padding are dropped. The vocabulary is built from the training tokens (LEAF's
    pickled vocabulary is not read, as unpickling runs code): id 0 is ``<PAD>``, id 1 unknown,
    ids 2..vocab_size-1 the most frequent other tokens (ties by first occurrence), so
    ``vocab_size`` is both the embedding size and the number of classes.
    """
    if vocab_size < 3:
        raise ValueError(f"vocab_size must be >= 3 (padding, unknown, one word), got {vocab_size}")
    if seq_len < 1:
        raise ValueError(f"seq_len must be >= 1, got {seq_len}")
    vocab: dict[str, int] = {_PAD: 0}

    def sequences_of(xs: list, ys: list, where: str) -> tuple[list, list]:
        out_x, out_y = [], []
        for comment, target in zip(xs, ys):
            targets = target.get("target_tokens") if isinstance(target, dict) else None
            if not _token_lists(comment) or not _token_lists(targets) or len(targets) != len(comment):
                raise ValueError(f"{where}: Reddit x must be comments as lists of token lists, y records with as "
                                 "many 'target_tokens' lists")
            for seq, target_seq in zip(comment, targets):
                if any(token != _PAD for token in target_seq):   # an all-padding target predicts nothing
                    out_x.append(seq)
                    out_y.append(target_seq)
        return out_x, out_y

    def build_vocab(train: list[tuple[str, list, list]]) -> None:
        counts = Counter(token for _, ux, _ in train for seq in ux for token in seq if token != _PAD)
        for i, (token, _) in enumerate(counts.most_common(vocab_size - 2)):
            vocab[token] = i + 2

    def ids(seqs: list, where: str) -> np.ndarray:
        out = np.zeros((len(seqs), seq_len), dtype=np.int64)
        for row, seq in enumerate(seqs):
            out[row, :min(len(seq), seq_len)] = [vocab.get(token, 1) for token in seq[:seq_len]]
        return out

    def next_words(targets: list, where: str) -> np.ndarray:
        return np.asarray([next(vocab.get(t, 1) for t in reversed(seq) if t != _PAD) for seq in targets],
                          dtype=np.int64)

    return _assemble("reddit", root, ids, next_words, num_classes=vocab_size, prepare=build_vocab,
                     samples=sequences_of)


_PAD = "<PAD>"


def _token_lists(value: Any) -> bool:
    return isinstance(value, list) and all(isinstance(seq, list) and all(isinstance(t, str) for t in seq)
                                           for seq in value)


# --- CelebA ------------------------------------------------------------------

def _celeba_images(base: Path, root: str | None) -> Path:
    folder = base / "raw" / "img_align_celeba"
    if folder.is_dir():
        return folder
    raise FileNotFoundError(
        f"data.dataset = 'leaf-celeba': expected the images in {folder} "
        f"(data.root = {root}); LEAF's preprocess.sh expects img_align_celeba/ from "
        "https://mmlab.ie.cuhk.edu.hk/projects/CelebA.html under data/raw/"
    )


def load_celeba(root: str | None = None, image_size: int = 84) -> Dataset:
    """CelebA smiling / not smiling (2 classes), one user per celebrity.

    LEAF's JSON holds image file names; images are read from
    ``raw/img_align_celeba/`` and resized to ``image_size`` squares (LEAF uses 84).
    Needs Pillow.
    """
    try:
        from PIL import Image
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ImportError("data.dataset = 'leaf-celeba' needs Pillow: pip install pillow") from exc
    folder = _celeba_images(_base("celeba", root), root)

    def images(xs: list, where: str) -> np.ndarray:
        out = np.empty((len(xs), 3, image_size, image_size), dtype=np.float32)
        for i, name in enumerate(xs):
            path = folder / str(name)
            if not path.is_file():
                raise FileNotFoundError(f"{where}: image {name!r} not found in {folder}")
            with Image.open(path) as img:
                img = img.convert("RGB").resize((image_size, image_size))
                out[i] = np.asarray(img, dtype=np.float32).transpose(2, 0, 1) / 255.0
        return out

    return _assemble("celeba", root, images, _int_labels, num_classes=2)
