"""Task definitions: what a task is (label set, metric, splits) and the registry of loaders.

Every loader returns the same ``Task`` so nothing downstream knows which file format a
task came from. Loaders live in ``transfer/loaders.py``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

from transfer.errors import KDError, unknown_name
from transfer.fingerprint import hash_texts
from transfer.metrics import score as compute_score


@dataclass(frozen=True)
class Split:
    """Texts with integer labels (indices into ``Task.labels``); ``labels`` may be -1 = unlabelled."""

    texts: list[str]
    labels: np.ndarray

    def __post_init__(self) -> None:
        if len(self.texts) != len(self.labels):
            raise ValueError(f"{len(self.texts)} texts but {len(self.labels)} labels")

    def __len__(self) -> int:
        return len(self.texts)

    def limit(self, n: int | None) -> Split:
        """The first ``n`` examples (all of them when ``n`` is None)."""
        if n is None or n >= len(self):
            return self
        return Split(self.texts[:n], self.labels[:n])

    def fingerprint(self) -> str:
        return hash_texts(self.texts, self.labels.tolist())


@dataclass(frozen=True)
class Task:
    """A classification task: its label names, its metric and its splits."""

    name: str
    labels: list[str]
    metric: str  # "accuracy" | "mcc" | "f1_micro" | "f1_macro"
    train: Split  # teacher fine-tuning and the transfer set
    dev: Split  # every choice: early stopping, boosting rounds, pruning, the best trial
    test: Split  # reported only, never used for a choice
    extra_metrics: tuple[str, ...] = field(default_factory=tuple)

    @property
    def num_labels(self) -> int:
        return len(self.labels)

    @property
    def metric_names(self) -> tuple[str, ...]:
        """Every metric of this task, main metric first."""
        return (self.metric, *[m for m in self.extra_metrics if m != self.metric])

    def score(self, y_true: Sequence[int] | np.ndarray, y_pred: Sequence[int] | np.ndarray) -> dict[str, float]:
        """Every metric of this task, main metric first, keyed by metric name."""
        return {name: compute_score(name, y_true, y_pred) for name in self.metric_names}

    def fingerprint(self) -> str:
        """Hash of the label set and every split's content (what a cache key needs)."""
        parts = [self.name, self.metric, *self.labels, self.train.fingerprint(), self.dev.fingerprint()]
        return hash_texts([*parts, self.test.fingerprint()])


TaskLoader = Callable[..., Task]
_LOADERS: dict[str, TaskLoader] = {}


def register_task(name: str) -> Callable[[TaskLoader], TaskLoader]:
    """Decorator: make a loader available as ``task=<name>``."""

    def wrap(fn: TaskLoader) -> TaskLoader:
        _LOADERS[name] = fn
        return fn

    return wrap


def available_tasks() -> list[str]:
    import transfer.loaders  # noqa: F401  (registers the built-in loaders)

    return sorted(_LOADERS)


def load_task(name: str, data_dir: str, limit: int | None = None, **options: object) -> Task:
    """Load a registered task from ``data_dir``; ``limit`` caps the examples of every split."""
    known = available_tasks()
    if name not in _LOADERS:
        raise unknown_name("task", name, known)
    task = _LOADERS[name](data_dir, **options)
    task = Task(
        name=task.name,
        labels=task.labels,
        metric=task.metric,
        train=task.train.limit(limit),
        dev=task.dev.limit(limit),
        test=task.test.limit(limit),
        extra_metrics=task.extra_metrics,
    )
    for split_name in ("train", "dev", "test"):
        if len(getattr(task, split_name)) == 0:
            raise KDError(f"task {name!r}: the {split_name} split is empty (data.dir={data_dir})")
    return task
