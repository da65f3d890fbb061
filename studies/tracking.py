"""MLflow plumbing: where runs go, the tags every run carries, and the teacher's reference run."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from studies.dblock import driver_url, schema_lock

if TYPE_CHECKING:
    from students.base import FitRecord, Student

DEFAULT_DIR = Path("mlruns")


def default_tracking_uri() -> str:
    DEFAULT_DIR.mkdir(exist_ok=True)
    return f"sqlite:///{(DEFAULT_DIR / 'mlflow.db').resolve()}"


def default_storage() -> str:
    DEFAULT_DIR.mkdir(exist_ok=True)
    return f"sqlite:///{(DEFAULT_DIR / 'optuna.db').resolve()}"


def setup_mlflow(uri: str | None, experiment: str) -> str:
    """Point MLflow at ``uri`` (default: SQLite under mlruns/, artifacts beside it) and pick the experiment."""
    import logging

    import mlflow
    from mlflow.exceptions import MlflowException

    logging.getLogger("mlflow").setLevel(logging.WARNING)
    os.environ.setdefault("GIT_PYTHON_REFRESH", "quiet")
    uri = driver_url(uri or default_tracking_uri())
    mlflow.set_tracking_uri(uri)
    # Workers starting together: the first one migrates a fresh SQL store (schema_lock) and
    # creates the experiment; the others find it (an MLflow server answers "already exists").
    with schema_lock(uri, "mlflow"):
        if mlflow.get_experiment_by_name(experiment) is None:
            artifacts = (DEFAULT_DIR / "artifacts").resolve().as_uri() if uri.startswith("sqlite") else None
            try:
                mlflow.create_experiment(experiment, artifact_location=artifacts)
            except MlflowException:
                if mlflow.get_experiment_by_name(experiment) is None:
                    raise
    exp = mlflow.set_experiment(experiment)
    open_on_training_runs(exp.experiment_id)
    return uri


# MLflow 3 opens an experiment on its GenAI overview (traces, token usage) unless the experiment
# says it holds model training; the UI's "Machine learning" switch writes this same tag.
EXPERIMENT_KIND_TAG = "mlflow.experimentKind"
TRAINING_KIND = "custom_model_development"
# A runs-table view stored in the experiment, opened by ``#/experiments/<id>/runs?viewStateShareKey=<key>``
# (MLflow's "share view"): the metric columns a person compares, not only Source/Models/Dataset.
RUNS_VIEW_KEY = "kd-students-runs"
SHARED_VIEW_TAG = "mlflow.sharedViewState."
NOTE_TAG = "mlflow.note.content"


def set_experiment_tag_shared(client: Any, experiment_id: str, key: str, value: str) -> None:
    """Set an experiment tag that several workers may be setting at the same instant.

    Two workers that both find the tag missing both insert it; on PostgreSQL the second insert is a
    unique-key violation. Whoever lost finds the tag written by the other, which is all it wanted.
    """
    from mlflow.exceptions import MlflowException

    try:
        client.set_experiment_tag(experiment_id, key, value)
    except MlflowException:
        if key not in client.get_experiment(experiment_id).tags:
            raise


def open_on_training_runs(experiment_id: str) -> None:
    """Tag the experiment as model training (unless a person already chose a kind in the UI)."""
    import mlflow

    client = mlflow.MlflowClient()
    if EXPERIMENT_KIND_TAG not in client.get_experiment(experiment_id).tags:
        set_experiment_tag_shared(client, experiment_id, EXPERIMENT_KIND_TAG, TRAINING_KIND)


def runs_view_columns(task_metrics: Sequence[str]) -> list[str]:
    """The runs table's columns in the experiment's view: test scores first, then share, speed and size."""
    metrics = [f"test_{m}" for m in task_metrics] + ["share_of_teacher", "latency_ratio_teacher", "latency_ms_b1"]
    metrics += [f"dev_{task_metrics[0]}", "params_non_embedding"]
    return [f"metrics.`{m}`" for m in metrics]


def runs_view_url(experiment_id: str) -> str:
    """The path (after the server's address) of the experiment's training runs with the metric columns.

    ``workflowType=machine_learning`` is MLflow 3's "Model training" switch: recent versions keep
    it per browser, defaulting to GenAI, and read no experiment tag for it.
    """
    return f"#/experiments/{experiment_id}/runs?workflowType=machine_learning&viewStateShareKey={RUNS_VIEW_KEY}"


def set_runs_view(experiment_id: str, task_metrics: Sequence[str]) -> None:
    """Store the metric-column view in the experiment and link it from the experiment's description.

    MLflow keeps a person's own column choice in their browser; a new user opening the
    experiment sees no metric column until they add them by hand, so the description (shown
    above the runs) links to this view. A description a person wrote is left alone.
    """
    import json

    import mlflow

    client = mlflow.MlflowClient()
    columns = runs_view_columns(task_metrics)
    name = "attributes.`Run Name`"
    view = {
        "selectedColumns": columns,
        "columnOrder": [name, *columns],
        "columnWidths": {name: 340},  # room for study-<task>-<teacher>-<student>-<cache>
        "runListHidden": False,
    }
    set_experiment_tag_shared(client, experiment_id, SHARED_VIEW_TAG + RUNS_VIEW_KEY, json.dumps(view))
    if NOTE_TAG not in client.get_experiment(experiment_id).tags:
        note = (
            f"Knowledge-distillation studies (kd-students). [Open the runs table with the metric columns]"
            f"({runs_view_url(experiment_id)}): test scores, `share_of_teacher` (test score / the teacher's), "
            "`latency_ratio_teacher` (teacher batch-1 latency / the student's, measured side by side), "
            "`latency_ms_b1`. One parent run `study-<study name>` per `studies.run` invocation holds one child run "
            "`<student>-trial-<n>` per Optuna trial; `compare-<task>` runs hold the comparison report and Pareto plot."
        )
        set_experiment_tag_shared(client, experiment_id, NOTE_TAG, note)


def git_commit() -> str:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5, cwd=Path(__file__).resolve().parent
        )
        return out.stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def flat_params(values: dict[str, Any], prefix: str = "") -> dict[str, str]:
    """Flatten nested config into MLflow params (values truncated to MLflow's limit)."""
    out: dict[str, str] = {}
    for key, value in values.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out |= flat_params(value, f"{name}.")
        else:
            out[name] = str(value)[:500]
    return out


def find_run(experiment: str, **tags: str) -> str | None:
    """The id of a run in ``experiment`` carrying all ``tags``, if any."""
    import mlflow

    exp = mlflow.get_experiment_by_name(experiment)
    if exp is None:
        return None
    query = " and ".join(f"tags.{k} = '{v}'" for k, v in tags.items())
    runs = mlflow.search_runs([exp.experiment_id], filter_string=query, max_results=1, output_format="list")
    return runs[0].info.run_id if runs else None


def log_records(records: Sequence[FitRecord]) -> None:
    """One nested run per record a student's fit returned (e.g. chain links), under the active run."""
    import mlflow

    for record in records:
        with mlflow.start_run(run_name=record.name, nested=True, tags=record.tags):
            mlflow.log_params(flat_params(record.params))
            mlflow.log_metrics(record.metrics)
            for name, points in record.curves.items():
                for step, value in points:
                    mlflow.log_metric(name, value, step=step)


def log_student(
    student: Student, artifact_path: str = "student", labels: Sequence[str] | None = None, example: Sequence[str] = ()
) -> None:
    """Save a fitted student into the active run under ``artifact_path`` and tag the run ``has_model``.

    With ``labels`` (the task's label names) it is also logged as an MLflow Model (``runs:/<run>/model``,
    python_function flavour: raw text in, label and probabilities out; ``example``: input example texts).
    """
    import tempfile

    import mlflow

    with tempfile.TemporaryDirectory() as tmp:
        saved = student.save(Path(tmp) / "student")
        mlflow.log_artifacts(str(saved), artifact_path)
        if labels is not None:
            from studies.models import log_text_model

            log_text_model(saved, labels, example)
            mlflow.set_tag("has_pyfunc", "true")
    mlflow.set_tag("has_model", "true")
