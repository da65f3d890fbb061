"""Helpers for tests/test_faults.py that must also run in a child process (which a test then kills).

``python tests/fault_helpers.py build ROOT`` builds the fake transfer set's cache under ROOT with
a ``RecordingLabeler`` configured from the environment:

- ``FAULT_LABELER_LOG``: append ``<pid> <batch size>`` per ``label_batch`` call (proof of passes)
- ``FAULT_LABELER_SLEEP``: seconds per batch, so a test can kill the process mid-labelling
- ``KD_CACHE_CHUNK_SIZE``: examples per resumable chunk (read by ``transfer.cache``)

It prints one JSON line: the cache path and this process's ``STATS`` counters.
"""

from __future__ import annotations

import json
import os
import sys
import time
import zlib
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from transfer.cache import TransferSet

LAYERS, WIDTH = 3, 4
BATCH_SIZE = 8
WORDS = ["alpha", "beta", "gamma", "delta", "epsilon", "zeta"]


class RecordingLabeler:
    """A deterministic labeler (outputs depend on each text alone) that can log its calls and be slow."""

    fingerprint = "fault-labeler-1"

    def __init__(self, log_path: str | None = None, sleep: float = 0.0) -> None:
        self.log_path = log_path
        self.sleep = sleep
        self.calls = 0

    def text_lengths(self, texts: Sequence[str]) -> np.ndarray:
        return np.array([len(t.split()) for t in texts])

    def label_batch(self, texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray | None]:
        self.calls += 1
        if self.log_path:
            with open(self.log_path, "a") as log:
                log.write(f"{os.getpid()} {len(texts)}\n")
        if self.sleep:
            time.sleep(self.sleep)
        codes = np.array([zlib.crc32(t.encode()) % 1000 for t in texts], dtype=np.float32)
        logits = np.stack([codes / 100.0, -codes / 300.0], axis=1)
        grid = np.arange(LAYERS * WIDTH, dtype=np.float32).reshape(LAYERS, WIDTH)
        return logits, codes[:, None, None] / 97.0 + grid[None] / 8.0

    def write_assets(self, directory: Path) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        (directory / "labeler.txt").write_text(self.fingerprint)


def fault_transfer_set(n_train: int = 120, n_dev: int = 40) -> TransferSet:
    """A fixed transfer set of varied-length texts (so length sorting reorders them)."""
    rng = np.random.default_rng(7)

    def texts(n: int, split: str) -> list[str]:
        return [f"{split} {i} " + " ".join(rng.choice(WORDS, size=int(rng.integers(0, 12)))) for i in range(n)]

    return TransferSet(
        texts=texts(n_train, "train"),
        labels=np.arange(n_train, dtype=np.int64) % 2,
        dev_texts=texts(n_dev, "dev"),
        dev_labels=np.arange(n_dev, dtype=np.int64) % 2,
        label_names=["negative", "positive"],
        task="fault",
    )


def build(root: str) -> dict[str, object]:
    """Build (or find) the fault transfer set's cache under ``root`` as the environment says."""
    from transfer.cache import STATS, get_or_build_cache

    labeler = RecordingLabeler(os.environ.get("FAULT_LABELER_LOG"), float(os.environ.get("FAULT_LABELER_SLEEP", "0")))
    cache = get_or_build_cache(labeler, fault_transfer_set(), root, batch_size=BATCH_SIZE)
    return {"path": str(cache.path), "passes": STATS.passes, "examples": STATS.examples, "calls": labeler.calls}


if __name__ == "__main__":
    if len(sys.argv) != 3 or sys.argv[1] != "build":
        sys.exit("usage: python tests/fault_helpers.py build ROOT")
    print(json.dumps(build(sys.argv[2])), flush=True)
