"""The one interface every student implements, neural or not (think scikit-learn's estimators).

A student is built from plain hyper-parameters, fitted on a ``TransferCache`` (teacher logits,
activations, hard labels), predicts logits for raw texts, saves and loads itself, and counts
its parameters. Everything else (studies, comparison, chains) only uses this interface.
"""

from __future__ import annotations

import json
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, NamedTuple

import numpy as np

if TYPE_CHECKING:
    import optuna

    from transfer.cache import TransferCache
    from transfer.tasks import Split

# Called after each epoch (or boosting round) with (step, dev score); may raise optuna.TrialPruned.
Reporter = Callable[[int, float], None]

# Settings that decide how a student runs, never what it learns: not hyper-parameters, so they
# never enter student.json, a fingerprint or a cache key.
RUNTIME_KEYS = ("device", "progress")


@dataclass
class Runtime:
    """Where and how visibly a student trains: ``device`` None/"auto" = a GPU when present."""

    device: str | None = None
    progress: bool = False

    def torch_device(self) -> Any:
        import torch

        if self.device in (None, "auto"):
            return torch.device("cuda" if torch.cuda.is_available() else "cpu")
        return torch.device(str(self.device))


@dataclass
class FitRecord:
    """Something a fit did that deserves its own tracked run (e.g. one chain link); studies/ logs it.

    Students never talk to the tracker themselves: they return these and the caller decides.
    """

    name: str
    tags: dict[str, str] = field(default_factory=dict)
    params: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, float] = field(default_factory=dict)
    curves: dict[str, list[tuple[int, float]]] = field(default_factory=dict)  # metric -> [(step, value)]


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
    # Whether the dev scores ``fit`` reports come while work remains (epochs, boosting rounds), so
    # a pruner may stop it early; a one-shot learner reports once, after all its work is done.
    reports_while_training: ClassVar[bool] = True

    def __init__(self, **hparams: Any) -> None:
        for key in RUNTIME_KEYS:  # tolerated for students saved before runtime settings moved out
            hparams.pop(key, None)
        self.hparams: dict[str, Any] = {**self.default_hparams(), **hparams}
        self.runtime = Runtime()

    def with_runtime(self, device: str | None = None, progress: bool = False) -> Student:
        """Set where and how visibly this student trains (not a hyper-parameter); returns ``self``."""
        self.runtime = Runtime(device=device, progress=progress)
        return self

    # -- hyper-parameters -------------------------------------------------------------------
    @classmethod
    def default_hparams(cls) -> dict[str, Any]:
        """Values used for any hyper-parameter not given (and not searched)."""
        return {}

    @classmethod
    def searched_defaults(cls, fixed: Mapping[str, Any]) -> dict[str, Any]:
        """The defaults under the names ``search_space`` gives them: a study's known-good first trial.

        The same as ``default_hparams`` unless the space renames parameters (a chain's ``link0.lr``).
        """
        return cls.default_hparams()

    @classmethod
    @abstractmethod
    def search_space(cls, trial: optuna.Trial, extras: Sequence[str] = ()) -> dict[str, Any]:
        """Sample this student's hyper-parameters from an Optuna trial.

        ``extras``: optional distillation terms to search too (``study.search_objectives``);
        students without a distillation objective ignore them.
        """

    @classmethod
    def hparam_names(cls) -> set[str]:
        """Every hyper-parameter this student understands (fixing any other is a mistake)."""
        return set(cls.default_hparams())

    @classmethod
    def unknown_hparams(cls, names: Sequence[str]) -> list[str]:
        """The ``names`` this student does not understand (a misspelt fixed value would be ignored)."""
        return sorted(set(names) - cls.hparam_names())

    # -- learning and inference -------------------------------------------------------------
    @abstractmethod
    def fit(self, cache: TransferCache, dev: DevSet | None = None, report: Reporter | None = None) -> Student:
        """Learn from the cached teacher outputs; ``dev`` drives early stopping, ``report`` pruning."""

    @abstractmethod
    def predict_logits(self, texts: Sequence[str]) -> np.ndarray:
        """Logits (or logit-like scores whose argmax is the prediction), shape [len(texts), num_labels]."""

    def predict(self, texts: Sequence[str]) -> np.ndarray:
        return self.predict_logits(texts).argmax(axis=1)

    def serving_predictor(self) -> tuple[str, Callable[[Sequence[str]], np.ndarray]]:
        """(name, predict_logits) of the fastest form of this fitted student with the same logits.

        What a deployment would run, so what batch-1 latency is timed on (``studies.measure``,
        which checks the logits agree first). Default: the student itself ("module").
        """
        return "module", self.predict_logits

    def fit_records(self) -> list[FitRecord]:
        """What the last ``fit`` wants tracked beside the student's own run (default: nothing)."""
        return []

    def fit_metrics(self) -> dict[str, float]:
        """Scalars about the last ``fit`` worth logging with the student's metrics (e.g. best epoch)."""
        return {}

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
