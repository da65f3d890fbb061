"""The one interface every student implements, neural or not (think scikit-learn's estimators).

A student is built from plain hyper-parameters, fitted on a ``TransferCache`` (teacher logits,
activations, hard labels), predicts logits for raw texts, saves and loads itself, and counts
its parameters. Everything else (studies, comparison, chains) only uses this interface.
"""

from __future__ import annotations

import json
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, NamedTuple

import numpy as np

if TYPE_CHECKING:
    import optuna

    from transfer.cache import TransferCache
    from transfer.tasks import Split

# Called after each epoch (or boosting round) with (step, dev score); may raise optuna.TrialPruned.
Reporter = Callable[[int, float], None]


class ParamCount(NamedTuple):
    """Parameter counts; ``non_embedding`` excludes token/position embedding tables (or TF-IDF vocab)."""

    total: int
    non_embedding: int


@dataclass(frozen=True)
class DevSet:
    """What a student may use during ``fit`` for early stopping and pruning reports."""

    split: Split
    score: Callable[[np.ndarray, np.ndarray], float]  # (y_true, y_pred) -> main task metric

    def evaluate(self, logits: np.ndarray) -> float:
        return float(self.score(self.split.labels, np.asarray(logits).argmax(axis=1)))


class Student(ABC):
    """Base class of every student type. Subclasses set ``name`` and implement the abstract methods."""

    name: ClassVar[str] = ""

    def __init__(self, **hparams: Any) -> None:
        self.hparams: dict[str, Any] = {**self.default_hparams(), **hparams}

    # -- hyper-parameters -------------------------------------------------------------------
    @classmethod
    def default_hparams(cls) -> dict[str, Any]:
        """Values used for any hyper-parameter not given (and not searched)."""
        return {}

    @classmethod
    @abstractmethod
    def search_space(cls, trial: optuna.Trial) -> dict[str, Any]:
        """Sample this student's hyper-parameters from an Optuna trial."""

    # -- learning and inference -------------------------------------------------------------
    @abstractmethod
    def fit(self, cache: TransferCache, dev: DevSet | None = None, report: Reporter | None = None) -> Student:
        """Learn from the cached teacher outputs; ``dev`` drives early stopping, ``report`` pruning."""

    @abstractmethod
    def predict_logits(self, texts: Sequence[str]) -> np.ndarray:
        """Logits (or logit-like scores whose argmax is the prediction), shape [len(texts), num_labels]."""

    def predict(self, texts: Sequence[str]) -> np.ndarray:
        return self.predict_logits(texts).argmax(axis=1)

    @abstractmethod
    def n_params(self) -> ParamCount:
        """Learned parameters (for trees: nodes; see each student's docstring)."""

    # -- persistence ------------------------------------------------------------------------
    def save(self, path: str | Path) -> Path:
        """Write hyper-parameters plus the subclass's state under ``path`` (a directory)."""
        out = Path(path)
        out.mkdir(parents=True, exist_ok=True)
        meta = {"student": self.name, "hparams": self.hparams}
        (out / "student.json").write_text(json.dumps(meta, indent=2, default=str))
        self._save_state(out)
        return out

    @classmethod
    def load(cls, path: str | Path) -> Student:
        """Load any saved student; dispatches on the type recorded in ``student.json``."""
        from students.registry import get_student_class

        src = Path(path)
        meta = json.loads((src / "student.json").read_text())
        klass = get_student_class(meta["student"]) if cls is Student else cls
        student = klass(**meta["hparams"])
        student._load_state(src)
        return student

    @abstractmethod
    def _save_state(self, path: Path) -> None: ...

    @abstractmethod
    def _load_state(self, path: Path) -> None: ...

    # -- identity ---------------------------------------------------------------------------
    def fingerprint(self) -> str:
        """Content hash of the fitted student (used to key a cache it labels, e.g. in a chain)."""
        import tempfile

        from transfer.fingerprint import hash_dir

        with tempfile.TemporaryDirectory() as tmp:
            self.save(tmp)
            return f"{self.name}-{hash_dir(tmp, suffixes=('.json', '.pt', '.txt', '.pkl', '.npy', '.joblib'))}"
