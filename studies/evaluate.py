"""One evaluation for every model (teacher or student), so metric names are the same everywhere.

``dev_<metric>`` / ``test_<metric>`` (every task metric), ``dev_agreement`` / ``test_agreement``
(argmax equal to the teacher's), ``params_total``, ``params_non_embedding``, ``latency_ms_b1``
(median over single-sentence calls). Choices read ``dev_*``; reports read ``test_*``.
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


def split_metrics(
    prefix: str, task: Task, split_labels: np.ndarray, logits: np.ndarray, teacher_logits: np.ndarray | None
) -> dict[str, float]:
    """``<prefix>_<metric>`` for every task metric, and ``<prefix>_agreement`` with the teacher's argmax."""
    logits = np.asarray(logits, dtype=np.float32)
    metrics = {f"{prefix}_{k}": v for k, v in task.score(split_labels, logits.argmax(1)).items()}
    if teacher_logits is not None:
        metrics[f"{prefix}_agreement"] = agreement(logits, teacher_logits)
    return metrics


def side_by_side_rounds(
    models: dict[str, PredictFn],
    texts: Sequence[str],
    rounds: int = 8,
    block: int = 25,
    warmup: int = 5,
    batch_size: int = 1,
) -> dict[str, list[list[float]]]:
    """Latencies (ms) of each model on batches of ``batch_size`` texts, measured in alternating blocks, per round.

    Alternating spreads machine noise over all models alike, so their ratio holds even on a busy
    machine; blocks (rather than one call each) keep every model's weights as warm in the CPU
    caches as they would be when serving alone. Every model sees the same texts in a round. One
    torch thread, as every latency here. ``result[name][r]`` are model ``name``'s timed calls in round ``r``.
    """
    pool = list(texts) or ["a"]
    times: dict[str, list[list[float]]] = {name: [] for name in models}
    with torch_threads(LATENCY_THREADS):
        for r in range(rounds):
            for name, predict in models.items():
                timed: list[float] = []
                for i in range(warmup + block):
                    start_at = ((r * block + i) * batch_size) % len(pool)
                    batch = [pool[(start_at + j) % len(pool)] for j in range(batch_size)]
                    start = time.perf_counter()
                    predict(batch)
                    if i >= warmup:
                        timed.append((time.perf_counter() - start) * 1000)
                times[name].append(timed)
    return times


def side_by_side_latency(models: dict[str, PredictFn], texts: Sequence[str], **options: int) -> dict[str, float]:
    """Median latency (ms) of each model over every timed call of ``side_by_side_rounds`` (same ``options``)."""
    return {name: pooled_median(per_round) for name, per_round in side_by_side_rounds(models, texts, **options).items()}


def pooled_median(per_round: list[list[float]]) -> float:
    """The median of every timed call, all rounds pooled."""
    return float(statistics.median(t for calls in per_round for t in calls))


def round_ratios(numerator: list[list[float]], denominator: list[list[float]]) -> list[float]:
    """Per round, the ratio of two models' median latencies measured in that round (the same minutes, texts)."""
    return [statistics.median(a) / max(statistics.median(b), 1e-9) for a, b in zip(numerator, denominator, strict=True)]


def evaluate_model(
    predict: PredictFn,
    task: Task,
    teacher_dev_logits: np.ndarray,
    params: tuple[int, int],
    latency_samples: int | None = 50,
    dev_logits: np.ndarray | None = None,
    teacher_test_logits: np.ndarray | None = None,
    test_logits: np.ndarray | None = None,
) -> dict[str, float]:
    """The standard metrics of one model on ``task``; ``params`` is (total, non-embedding).

    ``dev_*`` are what every choice is made on; ``test_*`` are reported only. ``latency_samples``
    None leaves latency to the caller (students are timed side by side with the teacher). ``dev_logits`` /
    ``test_logits``: the model's logits when already known (the teacher's are in the cache).
    """
    dev_logits = predict(task.dev.texts) if dev_logits is None else dev_logits
    test_logits = predict(task.test.texts) if test_logits is None else test_logits
    metrics = split_metrics("dev", task, task.dev.labels, dev_logits, teacher_dev_logits)
    metrics |= split_metrics("test", task, task.test.labels, test_logits, teacher_test_logits)
    metrics["params_total"] = float(params[0])
    metrics["params_non_embedding"] = float(params[1])
    if latency_samples:
        metrics["latency_ms_b1"] = latency_ms(predict, task.dev.texts, samples=latency_samples)
    return metrics
