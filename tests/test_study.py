"""End to end: a tiny study in Optuna and MLflow, its resumption, and the CLI's one-line errors."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import mlflow
import optuna
import pytest
from mlflow.tracking import MlflowClient

import teachers.finetune as finetune
from studies.config import compose
from studies.run import StudyResult, describe, main, run_study
from transfer.cache import STATS

MODEL_METRICS = {
    "dev_accuracy",
    "dev_agreement",
    "params_total",
    "params_non_embedding",
    "latency_ms_b1",
    "train_seconds",
}
FIXED = ["student.hparams.hidden_size=16", "student.hparams.mlp_dim=16"]


@dataclass
class Snapshot:
    """What Optuna and MLflow hold after one invocation."""

    result: StudyResult
    passes: int  # STATS.passes after the invocation
    trials: list[optuna.trial.FrozenTrial]
    runs: list[Any]  # mlflow Run objects of the experiment
    cache_key: str  # recorded on the Optuna study


@dataclass
class Runs:
    root: Path
    before: int  # STATS.passes before the first invocation
    first: Snapshot
    second: Snapshot


def _snapshot(result: StudyResult, root: Path) -> Snapshot:
    study = optuna.load_study(study_name=result.study_name, storage=f"sqlite:///{root / 'optuna.db'}")
    client = MlflowClient(tracking_uri=f"sqlite:///{root / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("kd-sst2")
    runs = client.search_runs([experiment.experiment_id], max_results=1000)
    return Snapshot(result, STATS.passes, study.get_trials(deepcopy=False), runs, study.user_attrs["cache_key"])


@pytest.fixture(scope="module")
def runs(make_tiny_overrides, tmp_path_factory: pytest.TempPathFactory) -> Runs:
    """The same 2-trial study run twice in one folder (the second run must find everything done)."""
    root = tmp_path_factory.mktemp("study")
    overrides = [*make_tiny_overrides(root), "study.n_trials=2", *FIXED]
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(root)
        before = STATS.passes
        first = _snapshot(run_study(compose(overrides)), root)
        assert mlflow.active_run() is None

        def no_training(*args: Any, **kwargs: Any) -> None:
            raise AssertionError("the teacher was fine-tuned again")

        mp.setattr(finetune, "_train", no_training)
        second = _snapshot(run_study(compose(overrides)), root)
        assert mlflow.active_run() is None
    return Runs(root, before, first, second)


def _by_role(runs: list[Any], role: str) -> list[Any]:
    return [r for r in runs if r.data.tags.get("role") == role]


def test_study_has_exactly_the_requested_trials(runs: Runs) -> None:
    trials = runs.first.trials
    assert len(trials) == 2
    assert all(t.state == optuna.trial.TrialState.COMPLETE for t in trials)
    assert runs.first.result.n_finished == 2 and runs.first.result.metric == "dev_accuracy"
    assert runs.first.result.best_value == max(t.value for t in trials)
    # hyper-parameters fixed in student.hparams are not searched
    for trial in trials:
        assert "hidden_size" not in trial.params and "mlp_dim" not in trial.params
        assert {"lr", "dropout", "pooling"} <= set(trial.params)


def test_mlflow_has_one_parent_with_one_child_per_trial(runs: Runs) -> None:
    mlflow_runs = runs.first.runs
    parents = _by_role(mlflow_runs, "study")
    assert len(parents) == 1
    parent = parents[0]
    assert parent.info.run_id == runs.first.result.parent_run_id
    assert parent.info.status == "FINISHED"
    assert parent.data.tags["study_name"] == runs.first.result.study_name

    children = [r for r in mlflow_runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    assert len(children) == 2
    assert {r.info.run_id for r in children} == {t.user_attrs["mlflow_run_id"] for t in runs.first.trials}
    assert {r.info.run_id for r in _by_role(mlflow_runs, "trial")} == {r.info.run_id for r in children}
    for child in children:
        assert child.data.tags["role"] == "trial" and child.info.status == "FINISHED"
        assert set(child.data.metrics) >= MODEL_METRICS, child.data.metrics.keys()
        for tag in ("cache_key", "teacher_fingerprint", "git_commit"):
            assert child.data.tags.get(tag), tag
            assert child.data.tags[tag] == parent.data.tags[tag]
        assert child.data.params["hidden_size"] == "16" and child.data.params["mlp_dim"] == "16"
        # the logged figure is the model's own: the value Optuna chose by, recomputed from the run
        trial = next(t for t in runs.first.trials if t.user_attrs["mlflow_run_id"] == child.info.run_id)
        assert child.data.metrics["dev_accuracy"] == pytest.approx(trial.value)
        assert child.data.metrics["share_of_teacher"] == pytest.approx(
            child.data.metrics["test_accuracy"] / parent.data.metrics["teacher_test_accuracy"]
        )
        assert 0 < child.data.metrics["params_non_embedding"] < child.data.metrics["params_total"]
    assert parent.data.tags["cache_key"] == runs.first.cache_key


def test_teacher_run_has_the_same_metric_names(runs: Runs) -> None:
    teachers = _by_role(runs.first.runs, "teacher")
    assert len(teachers) == 1
    teacher = teachers[0]
    assert set(teacher.data.metrics) >= MODEL_METRICS
    child = _by_role(runs.first.runs, "trial")[0]
    assert set(child.data.metrics) & set(teacher.data.metrics) >= MODEL_METRICS
    assert teacher.data.metrics["dev_agreement"] == 1.0
    assert teacher.data.tags["teacher_fingerprint"] == child.data.tags["teacher_fingerprint"]
    assert teacher.data.tags["cache_key"] == child.data.tags["cache_key"]
    assert child.data.tags["teacher_run_id"] == teacher.info.run_id


def test_rerun_adds_no_trial_and_does_not_label_again(runs: Runs) -> None:
    assert runs.first.passes == runs.before + 1  # the first run labelled the transfer set once
    assert runs.second.passes == runs.first.passes  # the rerun did not
    assert len(runs.second.trials) == 2
    assert [t.number for t in runs.second.trials] == [t.number for t in runs.first.trials]
    assert runs.second.result.study_name == runs.first.result.study_name
    assert runs.second.result.best_trial == runs.first.result.best_trial
    # no new trial or teacher run; only the second invocation's (empty) parent run
    assert len(_by_role(runs.second.runs, "trial")) == 2
    assert len(_by_role(runs.second.runs, "teacher")) == 1
    parents = _by_role(runs.second.runs, "study")
    assert len(parents) == 2
    new_parent = runs.second.result.parent_run_id
    assert not [r for r in runs.second.runs if r.data.tags.get("mlflow.parentRunId") == new_parent]


def test_describe_names_the_best_trial_and_the_tools(runs: Runs) -> None:
    mlflow.set_tracking_uri(runs.first.result.tracking_uri)
    text = describe(runs.first.result)
    assert f"best trial #{runs.first.result.best_trial}" in text
    assert "mlflow ui --backend-store-uri sqlite:///" in text and "optuna-dashboard sqlite:///" in text


def test_mlflow_ui_opens_on_training_runs_with_metric_columns(runs: Runs) -> None:
    """What a new user meets in the MLflow UI: training runs, metric columns, runs that say what they are."""
    import json

    from optuna_dashboard import get_note

    from studies.tracking import RUNS_VIEW_KEY, runs_view_url

    client = MlflowClient(tracking_uri=runs.first.result.tracking_uri)
    experiment = client.get_experiment_by_name("kd-sst2")
    tags = experiment.tags
    assert tags["mlflow.experimentKind"] == "custom_model_development"  # not the GenAI overview
    view = json.loads(tags[f"mlflow.sharedViewState.{RUNS_VIEW_KEY}"])
    for metric in ("test_accuracy", "share_of_teacher", "latency_ratio_teacher", "latency_ms_b1"):
        assert f"metrics.`{metric}`" in view["selectedColumns"]
    url = runs_view_url(experiment.experiment_id)
    assert "workflowType=machine_learning" in url and f"viewStateShareKey={RUNS_VIEW_KEY}" in url
    assert url in tags["mlflow.note.content"]  # the experiment's description links the view
    assert url in describe(runs.first.result)  # and so does the closing message

    parent = next(r for r in _by_role(runs.first.runs, "study") if r.info.run_id == runs.first.result.parent_run_id)
    name = runs.first.result.study_name
    assert parent.info.run_name == f"study-{name}"
    assert (
        name in parent.data.tags["mlflow.note.content"]
        and "optuna-dashboard" in parent.data.tags["mlflow.note.content"]
    )
    assert {r.info.run_name for r in _by_role(runs.first.runs, "trial")} == {"bilstm-trial-0", "bilstm-trial-1"}
    assert name.startswith("sst2-") and "-bilstm-" in name  # the study says task and student

    study = optuna.load_study(study_name=name, storage=f"sqlite:///{runs.root / 'optuna.db'}")
    assert "kd-sst2" in get_note(study) and f"study-{name}" in get_note(study)  # the dashboard points to MLflow


# -- command-line errors ------------------------------------------------------------------------


def _error_line(capsys: pytest.CaptureFixture[str], argv: list[str]) -> str:
    code = main(argv)
    err = capsys.readouterr().err
    assert code == 2, err
    assert "Traceback" not in err
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, err
    return errors[0]


def _replace(overrides: list[str], key: str, value: str) -> list[str]:
    return [o for o in overrides if not o.startswith(f"{key}=")] + [f"{key}={value}"]


def test_cli_unknown_student(tiny_overrides: list[str], capsys) -> None:
    line = _error_line(capsys, [*tiny_overrides, "student=no-such-student"])
    assert "unknown student 'no-such-student'" in line and "bilstm" in line


def test_cli_unknown_task(tiny_overrides: list[str], capsys) -> None:
    line = _error_line(capsys, [*tiny_overrides, "task=no-such-task"])
    assert "unknown task 'no-such-task'" in line and "sst2" in line


def test_cli_missing_data_folder(tiny_overrides: list[str], tmp_path: Path, capsys) -> None:
    missing = tmp_path / "no-data-here"
    line = _error_line(capsys, _replace(tiny_overrides, "data.dir", str(missing)))
    assert str(missing) in line and "data.dir" in line and "KD_DATA_DIR" in line


def test_cli_malformed_row(tiny_overrides: list[str], tmp_path: Path, capsys) -> None:
    sst2 = tmp_path / "bad-data" / "sst2"
    sst2.mkdir(parents=True)
    (sst2 / "train.tsv").write_text("sentence\tlabel\na fine film\t1\na dull film with no label\nbad\t0\n")
    (sst2 / "dev.tsv").write_text("sentence\tlabel\ngood\t1\nbad\t0\n")
    line = _error_line(capsys, _replace(tiny_overrides, "data.dir", str(tmp_path / "bad-data")))
    assert f"{sst2 / 'train.tsv'}:3:" in line


def test_a_tag_another_worker_wrote_first_is_not_an_error() -> None:
    """Two workers setting the same experiment tag: the loser's unique-key error is harmless, others are not."""
    from types import SimpleNamespace

    from mlflow.exceptions import MlflowException

    from studies.tracking import set_experiment_tag_shared

    class Client:
        def __init__(self, present: bool) -> None:
            self.present = present

        def set_experiment_tag(self, *args: Any) -> None:
            raise MlflowException("duplicate key value violates unique constraint")

        def get_experiment(self, experiment_id: str) -> Any:
            return SimpleNamespace(tags={"k": "v"} if self.present else {})

    set_experiment_tag_shared(Client(present=True), "1", "k", "v")  # the other worker's write stands
    with pytest.raises(MlflowException):
        set_experiment_tag_shared(Client(present=False), "1", "k", "v")
