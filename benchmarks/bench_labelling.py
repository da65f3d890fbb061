"""Benchmark 2: teacher labelling throughput with length-sorted vs unsorted batches.

    python -m benchmarks.bench_labelling [n_sentences=4000] [batch_size=128]

Labels the same SST-2 training sentences with the packaged MiniLM teacher twice (sorted and
unsorted batches, into separate temporary caches) and prints the throughput ratio and the
padding each way.
"""

from __future__ import annotations

import sys
import tempfile
import time

import numpy as np

from benchmarks._common import DATA_DIR
from teachers.model import Teacher
from teachers.sources import packaged_path
from transfer.batching import length_sorted_batches
from transfer.cache import get_or_build_cache
from transfer.tasks import load_task
from transfer.transfer_set import make_transfer_set


def padding_fraction(lengths: np.ndarray, batch_size: int, sort: bool) -> float:
    batches = (
        length_sorted_batches(lengths, batch_size)
        if sort
        else [np.arange(i, min(i + batch_size, len(lengths))) for i in range(0, len(lengths), batch_size)]
    )
    padded = sum(len(b) * lengths[b].max() for b in batches)
    return 1 - lengths.sum() / padded


def main(argv: list[str]) -> None:
    args = dict(a.split("=", 1) for a in argv)
    n, batch_size = int(args.get("n_sentences", 4000)), int(args.get("batch_size", 128))
    task = load_task("sst2", DATA_DIR, limit=n)
    teacher = Teacher(packaged_path("minilm"), max_length=64)
    transfer = make_transfer_set(task)
    lengths = teacher.text_lengths(transfer.texts)
    seconds = {}
    for sort in (True, False, True):  # sorted twice, first and last, to expose drift on a noisy machine
        with tempfile.TemporaryDirectory() as tmp:
            start = time.perf_counter()
            get_or_build_cache(teacher, transfer, tmp, batch_size=batch_size, sort_by_length=sort)
            seconds.setdefault(sort, []).append(time.perf_counter() - start)
    total = len(transfer.texts) + len(transfer.dev_texts)
    sorted_s, unsorted_s = float(np.mean(seconds[True])), seconds[False][0]
    print(
        f"{total} texts, batch {batch_size}: sorted {total / sorted_s:.0f} texts/s, unsorted {total / unsorted_s:.0f} "
        f"texts/s -> sorted is {unsorted_s / sorted_s:.2f}x faster"
    )
    print(
        f"padding share of tokens (train): sorted {padding_fraction(lengths, batch_size, True):.1%}, "
        f"unsorted {padding_fraction(lengths, batch_size, False):.1%}"
    )


if __name__ == "__main__":
    main(sys.argv[1:])
