"""Build, fit and measure one student the one way every study, comparison and probe does.

The same metrics for every student (``dev_*`` to choose by, ``test_*`` to report), its latency
measured side by side with the teacher's in the same process and the same minutes (alternating
blocks), so ``latency_ratio_teacher`` compares like with like even on a busy machine. The ratio is
the median over rounds of each round's own ratio, so a round disturbed by another job on the
machine is outvoted by the undisturbed ones, where one ratio of two overall medians takes
whatever share of the disturbance each model happened to absorb. The rounds' quartiles
are kept beside it (``…_q25`` / ``…_q75``), so a speed constraint can be read with its spread.
The student is timed in its serving form (``Student.serving_predictor``: the folded BiLSTM on
CPU), the form a deployment runs, after checking that it gives the student's own logits.
"""

from __future__ import annotations

import logging
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from students.base import FitRecord, Reporter, Student
from students.registry import get_student_class
from studies.evaluate import evaluate_model, pooled_median, round_ratios, side_by_side_rounds
from studies.pipeline import Prepared, device_of

log = logging.getLogger(__name__)

LATENCY_ROUNDS = 10  # alternating blocks per model, a ratio per round; tracking.latency_samples calls in all


@dataclass
class Measured:
    """A fitted student, its metrics, and what its fit wants tracked beside it."""

    student: Student
    metrics: dict[str, float]
    records: list[FitRecord]


def build_student(prep: Prepared, name: str, hparams: dict[str, Any]) -> Student:
    """A new, unfitted student of type ``name`` on the study's device and progress settings."""
    student = get_student_class(name)(**hparams)
    return student.with_runtime(device_of(prep.cfg), bool(prep.cfg.progress))


def shares(metrics: dict[str, float], teacher: dict[str, float], metric: str) -> dict[str, float]:
    """The student's score as a fraction of the teacher's: on test (reported) and on dev."""

    def ratio(key: str) -> float:
        denominator = teacher.get(key, 0.0)
        return metrics[key] / denominator if denominator else float("nan")

    return {"share_of_teacher": ratio(f"test_{metric}"), "dev_share_of_teacher": ratio(f"dev_{metric}")}


Serving = tuple[str, Callable[[Sequence[str]], np.ndarray]]  # (form name, predict_logits)
SERVING_CHECK_TEXTS = 64  # dev texts on which a serving form must give the student's own logits


def serving_form(student: Student, texts: Sequence[str]) -> Serving:
    """The student's serving form (``Student.serving_predictor``) if its logits are the student's own.

    Checked one text at a time (the timed batch size) and as one batch, on the first dev texts:
    a form that disagrees is a bug in it, so it is reported and the module is timed instead.
    """
    name, serving = student.serving_predictor()
    if name == "module":
        return name, serving
    sample = list(texts[:SERVING_CHECK_TEXTS])
    expected = student.predict_logits(sample)
    singles = np.concatenate([serving([t]) for t in sample[:8]])
    if np.allclose(serving(sample), expected, rtol=1e-3, atol=1e-4) and np.allclose(
        singles, expected[:8], rtol=1e-3, atol=1e-4
    ):
        return name, serving
    log.warning("%s: its %s form's logits differ from the student's; timing the module instead", student.name, name)
    return "module", student.predict_logits


def latency_beside_teacher(
    student: Student, prep: Prepared, batch_size: int = 1, serving: Serving | None = None
) -> dict[str, float]:
    """Student and teacher latency at ``batch_size``, in alternating blocks of the same dev texts.

    ``tracking.latency_samples`` counts texts, not calls: a call on a batch of 64 already averages
    over its texts, so larger batches get fewer calls per block (at least one per round, one
    warm-up). Otherwise timing the teacher at batch 64 took minutes per model on this CPU.
    ``serving``: the checked serving form (``serving_form``), when the caller times several batch sizes.
    """
    samples = max(LATENCY_ROUNDS, int(prep.cfg.tracking.latency_samples))
    form, predict = serving or serving_form(student, prep.task.dev.texts)
    timed = side_by_side_rounds(
        {"teacher": prep.teacher.predict_logits, "student": predict},
        prep.task.dev.texts,
        rounds=LATENCY_ROUNDS,
        block=max(1, samples // (LATENCY_ROUNDS * batch_size)),
        warmup=2 if batch_size == 1 else 1,
        batch_size=batch_size,
    )
    suffix = f"b{batch_size}"
    ratio = f"latency_ratio_teacher{'' if batch_size == 1 else '_' + suffix}"
    q25, median, q75 = statistics.quantiles(round_ratios(timed["teacher"], timed["student"]), n=4, method="inclusive")
    return {
        f"latency_ms_{suffix}": pooled_median(timed["student"]),
        f"teacher_latency_ms_{suffix}": pooled_median(timed["teacher"]),
        ratio: median,
        f"{ratio}_q25": q25,
        f"{ratio}_q75": q75,
        f"latency_{suffix}_serving_form": float(form != "module"),  # 1: timed on its serving form (e.g. folded)
    }


def measure(student: Student, prep: Prepared, batch_latency: int | None = None) -> dict[str, float]:
    """Every standard metric of a fitted student, latency included (side by side with the teacher)."""
    metrics = evaluate_model(
        student.predict_logits,
        prep.task,
        prep.cache.dev_logits,
        student.n_params(),
        latency_samples=None,
        teacher_test_logits=prep.cache.test_logits,
    )
    serving = serving_form(student, prep.task.dev.texts)  # built and checked once for both batch sizes
    metrics |= latency_beside_teacher(student, prep, serving=serving)
    if batch_latency and batch_latency > 1:
        metrics |= latency_beside_teacher(student, prep, batch_latency, serving)
    metrics |= shares(metrics, prep.teacher_metrics, prep.task.metric)
    return metrics


def fit_and_measure(
    prep: Prepared,
    name: str,
    hparams: dict[str, Any],
    report: Reporter | None = None,
    batch_latency: int | None = None,
) -> Measured:
    """Build a ``name`` student with ``hparams``, fit it on the cache (dev for its choices), measure it."""
    student = build_student(prep, name, hparams)
    started = time.perf_counter()
    student.fit(prep.cache, prep.dev_set(), report)
    train_seconds = time.perf_counter() - started
    metrics = measure(student, prep, batch_latency)
    metrics["train_seconds"] = train_seconds
    metrics |= student.fit_metrics()
    return Measured(student, metrics, student.fit_records())
