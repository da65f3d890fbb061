"""Evaluation metrics, addressed by name so a task can declare which ones it reports.

Each task's published results use a specific metric (accuracy for SST-2, Matthews correlation
for CoLA, micro/macro F1 for the imbalanced Sara intents); naming them here keeps every
comparison in the project computed the same way, by scikit-learn.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from transfer.errors import KDError, unknown_name

METRICS: tuple[str, ...] = ("accuracy", "mcc", "f1_micro", "f1_macro")

MetricFn = Callable[[np.ndarray, np.ndarray], float]


def _metric_fn(name: str) -> MetricFn:
    """The scikit-learn function behind ``name`` (imported lazily: loading tasks must not need it)."""
    from sklearn.metrics import accuracy_score, f1_score, matthews_corrcoef

    def f1(average: str) -> MetricFn:
        # zero_division=0: a class that is never predicted scores 0 instead of warning.
        return lambda t, p: f1_score(t, p, average=average, zero_division=0)

    fns: dict[str, MetricFn] = {
        # Share of exact matches: the standard metric for balanced tasks (SST-2, TREC).
        "accuracy": accuracy_score,
        # Matthews correlation: robust to CoLA's 70/30 imbalance; 0 = chance, 1 = perfect.
        "mcc": matthews_corrcoef,
        # Micro F1 pools every decision (equals accuracy for single-label classification).
        "f1_micro": f1("micro"),
        # Macro F1 averages per-class F1 over the labels in y_true or y_pred, so rare classes count.
        "f1_macro": f1("macro"),
    }
    return fns[name]


def score(name: str, y_true: Sequence[int] | np.ndarray, y_pred: Sequence[int] | np.ndarray) -> float:
    """Metric ``name`` (one of ``METRICS``) of predictions ``y_pred`` against gold labels ``y_true``."""
    if name not in METRICS:
        raise unknown_name("metric", name, METRICS)
    t, p = np.asarray(y_true), np.asarray(y_pred)
    if t.ndim != 1 or t.shape != p.shape:
        raise KDError(f"metric {name!r}: y_true has shape {t.shape} but y_pred has shape {p.shape}")
    if len(t) == 0:
        raise KDError(f"metric {name!r}: nothing to score (no examples)")
    if np.issubdtype(t.dtype, np.number) and (t < 0).any():
        raise KDError(f"metric {name!r}: y_true contains unlabelled examples (-1); score labelled splits only")
    return float(_metric_fn(name)(t, p))
