"""Stable content hashes, used for every cache key in the project.

A key must change whenever anything that changes the content changes, and must not change
otherwise; hashing canonical JSON and raw bytes gives exactly that.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any


def hash_json(obj: Any, length: int = 16) -> str:
    """Hash a JSON-serialisable object independently of dict ordering."""
    blob = json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:length]


def _field(h: Any, value: str) -> None:
    """Feed one length-prefixed field: no choice of characters inside texts can make two inputs collide."""
    data = value.encode("utf-8")
    h.update(len(data).to_bytes(8, "little"))
    h.update(data)


def hash_texts(texts: Iterable[str], labels: Iterable[Any] | None = None, length: int = 16) -> str:
    """Hash a sequence of texts (and optionally their labels), order-sensitive.

    Each text and label is length-prefixed (not separator-delimited), so texts that contain
    separator characters cannot make two different sequences hash alike.
    """
    h = hashlib.sha256()
    h.update(b"texts+labels" if labels is not None else b"texts")
    label_iter = iter(labels) if labels is not None else None
    count = 0
    for text in texts:
        _field(h, text)
        if label_iter is not None:
            _field(h, str(next(label_iter)))
        count += 1
    h.update(count.to_bytes(8, "little"))
    return h.hexdigest()[:length]


def hash_file(path: str | Path, length: int = 64, chunk: int = 1 << 22) -> str:
    """sha256 of a file's bytes, streamed so large arrays do not need to fit in memory."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()[:length]


def hash_dir(
    path: str | Path,
    suffixes: tuple[str, ...] = (".safetensors", ".bin", ".json", ".txt"),
    exclude: tuple[str, ...] = (),
) -> str:
    """Hash every relevant file of a model directory (names and bytes), in a stable order."""
    root = Path(path)
    h = hashlib.sha256()
    files = (p for p in root.rglob("*") if p.is_file() and p.suffix in suffixes and p.name not in exclude)
    for file in sorted(files):
        h.update(str(file.relative_to(root)).encode())
        h.update(hash_file(file).encode())
    return h.hexdigest()[:16]
