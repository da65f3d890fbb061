"""Every model the framework keeps, as an MLflow Model with the ``python_function`` flavour.

Raw text in — a DataFrame with a ``text`` column, a list of strings or one string — and one row
out per text: ``label`` (the predicted label's name) and ``p_<label>`` for every class (the
softmax of the model's logits; for forests, of the teacher logits they regress). The model
folder carries the saved student (or teacher) *and* this project's code (``code_paths``), so
``mlflow.pyfunc.load_model("runs:/<run>/model")`` and ``mlflow models serve -m <uri>
--env-manager local`` need only the libraries, not a checkout. The signature and an input
example make the MLflow UI's "Register model" and the scoring server's input checks work.
"""

from __future__ import annotations

import contextlib
import logging
import shutil
import tempfile
from collections.abc import Iterator, Sequence
from importlib import metadata
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import pandas as pd
from mlflow.exceptions import MlflowException
from mlflow.models import ModelSignature
from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE
from mlflow.types import ColSpec, Schema

MODEL_NAME = "model"  # where a run's MLflow Model lives: runs:/<run>/model
TEXT_COLUMN = "text"
PACKAGES = ("students", "transfer", "teachers", "studies")  # the code a loaded model imports
REQUIREMENTS = ("mlflow", "torch", "transformers", "tokenizers", "numpy", "scipy", "scikit-learn", "lightgbm", "pandas")
REPO = Path(__file__).resolve().parent.parent


class TextClassifier(mlflow.pyfunc.PythonModel):
    """The pyfunc wrapper: loads a saved student (any type, int8 or folded too) or a fine-tuned teacher."""

    def load_context(self, context: Any) -> None:
        config = context.model_config or {}
        self.labels = [str(x) for x in config["labels"]]
        path = context.artifacts["model"]
        # "model_kind", not "kind": MLflow logs the config as run params, and forests have a "kind" hyper-parameter
        if config.get("model_kind", config.get("kind")) == "teacher":
            from teachers.model import Teacher

            teacher = Teacher(path, max_length=int(config["max_length"]), device="cpu")
            if config.get("int8"):
                from students.export import quantize_int8

                teacher.model = quantize_int8(teacher.model)
            self._predict_logits = teacher.predict_logits
        else:
            from students.export import load_predictor

            self._predict_logits = load_predictor(path).predict_logits

    # ``model_input`` stays unannotated: MLflow derives a schema from a type hint there, the signature says it all
    def predict(self, context: Any, model_input, params: dict[str, Any] | None = None) -> pd.DataFrame:
        texts = input_texts(model_input)
        logits = self._predict_logits(texts) if texts else np.zeros((0, len(self.labels)), dtype=np.float32)
        return predictions_frame(np.asarray(logits), self.labels)


def bad_input(message: str) -> MlflowException:
    """An input error the scoring server answers with HTTP 400 and this message."""
    return MlflowException(message, error_code=INVALID_PARAMETER_VALUE)


def input_texts(model_input: Any) -> list[str]:
    """The texts of a request: a DataFrame's ``text`` column, a Series, a list/array of strings, or one string."""
    if isinstance(model_input, pd.DataFrame):
        if list(model_input.columns) == [0]:  # a plain list of texts, made a frame by MLflow's schema check
            model_input = model_input.rename(columns={0: TEXT_COLUMN})
        if TEXT_COLUMN not in model_input.columns:
            raise bad_input(
                f"expected a column {TEXT_COLUMN!r} of raw texts, got columns {[str(c) for c in model_input.columns]}"
            )
        values = model_input[TEXT_COLUMN].tolist()
    elif isinstance(model_input, str):
        values = [model_input]
    elif isinstance(model_input, (pd.Series, np.ndarray, list, tuple)):
        values = list(model_input.tolist() if hasattr(model_input, "tolist") else model_input)
    else:
        raise bad_input(f"expected raw texts (a {TEXT_COLUMN!r} column or a list of strings), got {type(model_input)}")
    for i, value in enumerate(values):
        if not isinstance(value, str):
            raise bad_input(f"expected a string for every text, got {type(value).__name__} {value!r} at row {i}")
    return values


def softmax(logits: np.ndarray) -> np.ndarray:
    z = np.asarray(logits, dtype=np.float64)
    z = np.exp(z - z.max(axis=1, keepdims=True))
    return z / z.sum(axis=1, keepdims=True)


def predictions_frame(logits: np.ndarray, labels: Sequence[str]) -> pd.DataFrame:
    """One row per text: ``label`` and one ``p_<label>`` column per class."""
    if logits.ndim != 2 or logits.shape[1] != len(labels):
        raise ValueError(f"logits of shape {logits.shape} do not match {len(labels)} labels")
    probs = softmax(logits) if len(logits) else np.zeros((0, len(labels)))
    frame = {"label": [str(labels[i]) for i in logits.argmax(axis=1)] if len(logits) else []}
    frame |= {f"p_{name}": probs[:, k] for k, name in enumerate(labels)}
    return pd.DataFrame(frame)


def signature(labels: Sequence[str]) -> ModelSignature:
    """One string input, by position: a named ``text`` column would make MLflow refuse a plain list of texts
    before the model sees it (``input_texts`` insists on the ``text`` column for frames)."""
    outputs = [ColSpec("string", "label"), *(ColSpec("double", f"p_{name}") for name in labels)]
    return ModelSignature(inputs=Schema([ColSpec("string")]), outputs=Schema(outputs))


def requirements() -> list[str]:
    """The libraries a loaded model imports, pinned to the versions it was logged with."""
    pinned = []
    for name in REQUIREMENTS:
        try:
            pinned.append(f"{name}=={metadata.version(name).split('+')[0]}")
        except metadata.PackageNotFoundError:
            pinned.append(name)
    return pinned


def copy_code(destination: Path) -> list[str]:
    """This project's packages, without caches, to ship inside the model folder."""
    paths = []
    for package in PACKAGES:
        target = destination / package
        shutil.copytree(REPO / package, target, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        paths.append(str(target))
    return paths


def log_text_model(
    directory: str | Path,
    labels: Sequence[str],
    example: Sequence[str],
    kind: str = "student",
    name: str = MODEL_NAME,
    max_length: int | None = None,
    int8: bool = False,
) -> Any:
    """Log the saved model in ``directory`` as a pyfunc MLflow Model of the active run; returns its ``ModelInfo``.

    ``kind``: "student" (a saved student, int8 or folded export included) or "teacher" (a fine-tuned
    teacher folder; ``max_length`` its tokenisation length, ``int8`` to quantise it when loaded).
    """
    if kind not in ("student", "teacher"):
        raise ValueError(f"kind must be student or teacher, got {kind!r}")
    if kind == "teacher" and not max_length:
        raise ValueError("a teacher model needs its max_length")
    config: dict[str, Any] = {"model_kind": kind, "labels": [str(x) for x in labels]}
    if kind == "teacher":
        config |= {"max_length": int(max_length or 0), "int8": bool(int8)}
    examples = [str(t) for t in example][:2] or ["an example sentence"]
    with tempfile.TemporaryDirectory() as tmp, _quiet_pyfunc_advice():
        return mlflow.pyfunc.log_model(
            name=name,
            python_model=TextClassifier(),
            artifacts={"model": str(directory)},
            code_paths=copy_code(Path(tmp)),
            signature=signature(config["labels"]),
            input_example=pd.DataFrame({TEXT_COLUMN: examples}),
            pip_requirements=requirements(),
            model_config=config,
        )


class _DropMessage(logging.Filter):
    def __init__(self, fragment: str) -> None:
        super().__init__()
        self.fragment = fragment

    def filter(self, record: logging.LogRecord) -> bool:
        return self.fragment not in record.getMessage()


@contextlib.contextmanager
def _quiet_pyfunc_advice() -> Iterator[None]:
    """Drop MLflow's advice against pickling a model object, which would repeat for every trial.

    ``TextClassifier`` holds no state (everything comes from the artifacts and ``model_config``),
    so pickling it is safe. Other messages pass.
    """
    drop = _DropMessage("Passing a Python object as `python_model`")
    pyfunc_log = logging.getLogger("mlflow.pyfunc")
    pyfunc_log.addFilter(drop)
    try:
        yield
    finally:
        pyfunc_log.removeFilter(drop)


def register(run_id: str, registered_name: str, name: str = MODEL_NAME) -> str:
    """Register a run's MLflow Model under ``registered_name``; returns its ``models:/<name>/<version>`` URI."""
    version = mlflow.register_model(f"runs:/{run_id}/{name}", registered_name)
    return f"models:/{registered_name}/{version.version}"
