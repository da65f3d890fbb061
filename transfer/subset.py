"""A row subset of a transfer cache, read like a cache: train a student on part of what was labelled.

Measuring how a student's share of the teacher grows with the transfer set (1×, 2×, 4×, 8× the
training sentences) needs four transfer sets. Labelling each would label the training sentences
four times; instead the largest set is labelled once and the smaller ones are its rows. This
works because augmentation draws each sentence's synthetic examples from a generator seeded by
the sentence itself, so the synthetic sentences of ``n=1`` are among those of ``n=7``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from transfer.cache import TransferCache
from transfer.errors import KDError
from transfer.fingerprint import hash_json


class TransferSubset:
    """The cache's dev/test splits and assets unchanged; its transfer (train) rows restricted to ``rows``."""

    def __init__(self, cache: TransferCache, rows: Sequence[int]) -> None:
        self._cache = cache
        self.rows = np.asarray(sorted(set(int(r) for r in rows)), dtype=np.int64)
        if self.rows.size == 0 or self.rows[0] < 0 or self.rows[-1] >= len(cache):
            raise KDError(f"a subset of {cache.path} needs rows in [0, {len(cache)}), got {len(self.rows)} rows")
        self.texts: list[str] = [cache.texts[i] for i in self.rows]
        self.key = hash_json({"cache": cache.key, "rows": hash_json(self.rows.tolist())})

    def __getattr__(self, name: str) -> Any:  # dev/test splits, assets, label names: the cache's own
        return getattr(self._cache, name)

    @property
    def manifest(self) -> dict[str, Any]:
        return {**self._cache.manifest, "key": self.key, "subset_of": self._cache.key, "subset_rows": len(self.rows)}

    @property
    def labels(self) -> np.ndarray:
        return np.asarray(self._cache.labels[self.rows])

    @property
    def logits(self) -> np.ndarray:
        return np.asarray(self._cache.logits[self.rows])

    @property
    def activations(self) -> np.ndarray | None:
        acts = self._cache.activations
        return None if acts is None else np.asarray(acts[self.rows])

    def __len__(self) -> int:
        return len(self.rows)

    def __repr__(self) -> str:
        return f"TransferSubset({self._cache.path}, n={len(self)} of {len(self._cache)})"


def rows_of(cache: TransferCache, texts: Sequence[str]) -> list[int]:
    """The cache rows holding ``texts`` (each text's first row); a text the cache never labelled is an error."""
    index: dict[str, int] = {}
    for i, text in enumerate(cache.texts):
        index.setdefault(text, i)
    absent = [t for t in texts if t not in index]
    if absent:
        raise KDError(
            f"{len(absent)} of {len(texts)} sentences are not in transfer cache {cache.path} "
            f"(first: {absent[0][:80]!r}); the subset must come from the labelled set"
        )
    return [index[t] for t in texts]
