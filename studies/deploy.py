"""Export a study's student for lean CPU inference and log it as a servable MLflow Model.

    python -m studies.deploy student=bilstm deploy.export=folded      # the best BiLSTM of the default study
    python -m studies.deploy deploy.run=<run id> deploy.export=int8    # any run holding a neural student

The export (``students.export``: int8 dynamic quantisation, or the folded BiLSTM with only the
rows of the transfer set's tokens) is logged into the student's own run as
``runs:/<run>/model_<export>`` (python_function flavour, like ``runs:/<run>/model``), with its
size on disk as ``size_bytes_<export>``; ``mlflow models serve -m`` that URI serves it.
"""

from __future__ import annotations

import sys
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from studies.cli import run_cli
from transfer.errors import KDError


@dataclass
class Deployed:
    run_id: str
    model_uri: str
    size_bytes: int
    tracking_uri: str


def best_run(cfg: DictConfig, prep: Any) -> str:
    """The MLflow run of the best trial of ``student`` on this task and cache (chosen on dev)."""
    from studies.best import find_studied
    from studies.tracking import default_storage

    storage = cfg.study.storage or default_storage()
    studied = find_studied(storage, str(cfg.task.name), prep.cache.key, [str(cfg.student.name)])
    if not studied.best or not studied.best[0].trial_run_id:
        raise KDError(
            f"no {cfg.student.name} study with a complete trial on this task and cache: run "
            f"`python -m studies.run student={cfg.student.name}` first, or give deploy.run=<run id>"
        )
    return str(studied.best[0].trial_run_id)


def deploy(cfg: DictConfig, overrides: Sequence[str] = ()) -> Deployed:
    import mlflow

    from students.base import Student
    from students.export import export_student, file_bytes
    from studies.models import log_text_model
    from studies.pipeline import prepare
    from studies.tracking import setup_mlflow
    from studies.validate import validate

    validate(cfg)
    tracking_uri = setup_mlflow(cfg.tracking.uri, cfg.tracking.experiment or f"kd-{cfg.task.name}")
    prep = prepare(cfg)  # cached: the label names, example texts and the transfer set's vocabulary
    run_id = str(cfg.deploy.run) if cfg.deploy.run else best_run(cfg, prep)
    how = str(cfg.deploy.export)
    name = f"model_{how}"
    with tempfile.TemporaryDirectory() as tmp:
        try:
            local = mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path="student", dst_path=tmp)
        except Exception as err:  # MLflow raises several types for a missing run or artifact
            raise KDError(f"run {run_id} has no saved student to export ({type(err).__name__}: {err})") from err
        student = Student.load(local).with_runtime("cpu")
        try:
            exported = export_student(student, how, str(cfg.deploy.vocab), str(cfg.deploy.dtype), prep.cache.texts)
        except ValueError as err:
            raise KDError(f"cannot export run {run_id} as {how}: {err}") from err
        path = exported.save(Path(tmp) / "export")
        size = file_bytes(path)
        with mlflow.start_run(run_id=run_id):
            log_text_model(path, prep.cache.label_names, prep.task.dev.texts[:2], name=name)
            mlflow.log_metric(f"size_bytes_{how}", float(size))
    return Deployed(run_id, f"runs:/{run_id}/{name}", size, tracking_uri)


def _show(result: Deployed) -> None:
    print(f"exported {result.model_uri} ({result.size_bytes / 1e6:.2f} MB on disk)")
    print(
        f"serve it: MLFLOW_TRACKING_URI={result.tracking_uri} "
        f"mlflow models serve -m {result.model_uri} --env-manager local -p 5001"
    )


def _usage() -> str:
    return (
        "usage: python -m studies.deploy [student=bilstm] [deploy.run=<run id>] [deploy.export=int8|folded] "
        "[deploy.vocab=all|transfer] [deploy.dtype=float32|float16] [task/teacher/data/study overrides as for "
        "studies.run]"
    )


def main(argv: Sequence[str] | None = None) -> int:
    return run_cli(argv, _usage, deploy, _show, "nothing was logged")


if __name__ == "__main__":
    sys.exit(main())
