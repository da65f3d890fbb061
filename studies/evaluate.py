"""One evaluation for every model (teacher or student), so metric names are the same everywhere.

``dev_<metric>`` (every task metric), ``dev_agreement`` (argmax equal to the teacher's),
``params_total``, ``params_non_embedding``, ``latency_ms_b1`` (median over single-sentence
calls), and ``test_<metric>`` when the task has a test split.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager

import numpy as np

from transfer.tasks import Task

PredictFn = Callable[[Sequence[str]], np.ndarray]
LATENCY_THREADS = 1  # torch threads for every latency measurement: one request per core


def latency_ms(
    predict: PredictFn, texts: Sequence[str], samples: int = 50, batch_size: int = 1, warmup: int = 3
) -> float:
    """Median wall time (ms) of ``predict`` on batches of ``batch_size`` texts, raw text in, logits out.

    Measured on ``LATENCY_THREADS`` torch threads for every model (teacher and students alike), as
    when serving one request per core; intra-op threading mostly adds overhead at batch 1.
    """
    pool = list(texts) or ["a"]
    batches = [[pool[(i * batch_size + j) % len(pool)] for j in range(batch_size)] for i in range(samples + warmup)]
    times = []
    with torch_threads(LATENCY_THREADS):
        for i, batch in enumerate(batches):
            start = time.perf_counter()
            predict(batch)
            if i >= warmup:
                times.append((time.perf_counter() - start) * 1000)
    return float(statistics.median(times))


@contextmanager
def torch_threads(n: int) -> Iterator[None]:
    """Run a block on ``n`` torch intra-op threads, restoring the previous setting afterwards."""
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def agreement(logits: np.ndarray, teacher_logits: np.ndarray) -> float:
    return float((np.asarray(logits).argmax(1) == np.asarray(teacher_logits).argmax(1)).mean())


def evaluate_model(
    predict: PredictFn,
    task: Task,
    teacher_dev_logits: np.ndarray,
    params: tuple[int, int],
    latency_samples: int = 50,
    dev_logits: np.ndarray | None = None,
) -> dict[str, float]:
    """The standard metrics of one model on ``task``; ``params`` is (total, non-embedding).

    ``dev_logits``: the model's dev logits when already known (the teacher's are in the cache).
    """
    dev_logits = predict(task.dev.texts) if dev_logits is None else np.asarray(dev_logits, dtype=np.float32)
    metrics = {f"dev_{k}": v for k, v in task.score(task.dev.labels, dev_logits.argmax(1)).items()}
    metrics["dev_agreement"] = agreement(dev_logits, teacher_dev_logits)
    if task.test is not None and len(task.test):
        test_logits = predict(task.test.texts)
        metrics |= {f"test_{k}": v for k, v in task.score(task.test.labels, test_logits.argmax(1)).items()}
    metrics["params_total"] = float(params[0])
    metrics["params_non_embedding"] = float(params[1])
    metrics["latency_ms_b1"] = latency_ms(predict, task.dev.texts, samples=latency_samples)
    return metrics
