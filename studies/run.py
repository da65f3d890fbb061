"""Main entry point: ``python -m studies.run student=bilstm [key=value ...]``.

Prepares task, teacher and transfer cache (each cached), then creates or resumes an Optuna
study of one student type, logging one MLflow parent run for this invocation and one nested
child run per trial. Ends by printing the best trial and the commands to look at it.
"""

from __future__ import annotations

import logging
import os
import socket
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from filelock import FileLock
from omegaconf import DictConfig, OmegaConf

from studies.cli import run_cli
from transfer.errors import KDError

log = logging.getLogger("studies.run")


@dataclass
class StudyResult:
    study_name: str
    storage: str
    tracking_uri: str
    parent_run_id: str
    experiment_id: str
    best_trial: int | None
    best_value: float | None
    best_params: dict[str, Any]
    best_run_id: str | None
    teacher_metrics: dict[str, float]
    n_finished: int
    metric: str  # dev_<metric>: what chose the best trial
    report_metric: str  # test_<metric>: what is reported
    registered: str | None = None  # models:/<name>/<version> when tracking.register is set


def default_study_name(cfg: DictConfig, teacher_label: str, cache_key: str, setup: dict[str, Any]) -> str:
    """``<task>-<teacher>-<student>-<cache>``, plus a hash of the fixed settings when there are any.

    Fixing a hyper-parameter or searching extra objectives is another search: it gets its own
    study instead of topping up (and mixing with) the plain one.
    """
    from studies.search import setup_hash

    name = f"{cfg.task.name}-{teacher_label}-{cfg.student.name}-{cache_key[:6]}"
    plain = not setup["fixed"] and not setup["search_objectives"] and not setup.get("min_speedup")
    return name if plain else f"{name}-s{setup_hash(setup)}"


def fixed_hparams(student_cfg: DictConfig) -> dict[str, Any]:
    """Hyper-parameters the config fixes: ``student.hparams`` plus any other key of the student group (links)."""
    values = OmegaConf.to_container(student_cfg, resolve=True)
    assert isinstance(values, dict)
    fixed = dict(values.get("hparams") or {})
    fixed |= {k: v for k, v in values.items() if k not in ("name", "hparams")}
    return fixed


def log_teacher_run(prep: Any, experiment: str) -> str:
    """One MLflow run per teacher (per experiment) with the same metric names as the students."""
    import mlflow

    from studies.tracking import find_run, flat_params

    fingerprint = prep.teacher.fingerprint
    existing = find_run(experiment, role="teacher", teacher_fingerprint=fingerprint)
    if existing:
        if mlflow.get_run(existing).data.tags.get("has_pyfunc") != "true":  # a teacher run from before MLflow Models
            with mlflow.start_run(run_id=existing):
                _log_teacher_model(prep)
        return existing
    tags = {"role": "teacher", "teacher_fingerprint": fingerprint, "cache_key": prep.cache.key}
    with mlflow.start_run(run_name=f"teacher-{prep.teacher_label}", tags=tags, nested=False) as run:
        mlflow.log_params(flat_params({"teacher": dict(prep.teacher.record.get("finetune", {}))}))
        mlflow.log_params({"teacher.name": str(prep.cfg.teacher.name), "teacher.base": prep.teacher.record.get("base")})
        mlflow.log_metrics({**prep.teacher_metrics, "share_of_teacher": 1.0, "latency_ratio_teacher": 1.0})
        # the teacher's recipe choice, made on dev like every student's: its epoch curve and the pick
        for point in prep.teacher.record.get("epochs_scored") or []:
            mlflow.log_metric(f"epoch_{prep.metric}", point["dev_score"], step=int(point["step"]))
        if prep.teacher.record.get("chosen_epoch") is not None:
            mlflow.log_metric("chosen_epoch", float(prep.teacher.record["chosen_epoch"]))
        mlflow.log_dict(prep.teacher.record, "teacher_record.json")
        _log_teacher_model(prep)
        return run.info.run_id


def _log_teacher_model(prep: Any) -> None:
    """The fine-tuned teacher as an MLflow Model of the active (teacher) run, unless models are not logged."""
    import mlflow

    from studies.models import log_text_model

    if str(prep.cfg.tracking.log_models) == "none":
        return
    labels, example = prep.cache.label_names, prep.task.dev.texts[:2]
    log_text_model(prep.teacher.path, labels, example, kind="teacher", max_length=prep.teacher.max_length)
    mlflow.set_tag("has_pyfunc", "true")


def run_study(cfg: DictConfig) -> StudyResult:
    import mlflow
    import optuna

    from students.registry import get_student_class
    from studies import search, search_policy, workers
    from studies.pipeline import load_configured_task, prepare
    from studies.tracking import default_storage, flat_params, git_commit, set_runs_view, setup_mlflow
    from studies.validate import validate

    fixed = fixed_hparams(cfg.student)
    validate(cfg, fixed)  # every setting, before any costly work
    load_configured_task(cfg)  # bad data files, likewise
    extras = list(cfg.study.get("search_objectives") or ())
    setup = search.study_setup(str(cfg.student.name), fixed, extras, search_policy.min_speedup(cfg))
    experiment = cfg.tracking.experiment or f"kd-{cfg.task.name}"
    tracking_uri = setup_mlflow(cfg.tracking.uri, experiment)
    prep = prepare(cfg)
    name = cfg.study.name or default_study_name(cfg, prep.teacher_label, prep.cache.key, setup)
    storage_url = cfg.study.storage or default_storage()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    heartbeat = int(cfg.study.heartbeat_interval)
    storage = workers.make_storage(storage_url, heartbeat, tracking_uri)
    study = search.open_study(
        name, storage, cfg, prep.cache.key, setup, prep.metric, str(prep.teacher.record.get("key", ""))
    )
    if cfg.study.get("enqueue_defaults"):
        search_policy.enqueue_defaults(study, get_student_class(str(cfg.student.name)), fixed, extras)
    warm = search_policy.enqueue_earlier_best(
        study, storage, get_student_class(str(cfg.student.name)), prep.cache.key, fixed, extras,
        int(cfg.study.get("warm_start") or 0),
    )  # fmt: skip
    if warm:
        print(f"queued the best trials on dev of earlier studies: {', '.join(warm)}", flush=True)
    # one teacher run per experiment even when workers sharing the cache start together
    with FileLock(str(Path(str(cfg.cache_dir)) / "teachers" / "mlflow-teacher-run.lock")):
        teacher_run = log_teacher_run(prep, experiment)
    experiment_id = mlflow.get_experiment_by_name(experiment).experiment_id
    workers.close_dead_study_runs(experiment_id, name)
    set_runs_view(experiment_id, prep.task.metric_names)
    link_dashboard_to_mlflow(study, experiment, tracking_uri)

    tags = {
        "study_name": name,
        "cache_key": prep.cache.key,
        "teacher_fingerprint": prep.teacher.fingerprint,
        "teacher_run_id": teacher_run,
        "git_commit": git_commit(),
        "task": str(cfg.task.name),
        "worker": f"{socket.gethostname()}:{os.getpid()}",  # which invocation ran what, when many share a study
    }
    target = int(cfg.study.n_trials)
    poll = max(0.5, min(5.0, heartbeat / 2))
    deadline = time.monotonic() + float(cfg.study.timeout) if cfg.study.timeout else None
    with mlflow.start_run(
        run_name=f"study-{name}", tags={**tags, "role": "study", "student": cfg.student.name}
    ) as parent:
        mlflow.log_params(flat_params(OmegaConf.to_container(cfg, resolve=True)))  # type: ignore[arg-type]
        mlflow.log_params({"study.storage_url": storage_url})
        mlflow.set_tag("mlflow.note.content", study_run_note(name, storage_url, str(cfg.student.name), prep.metric))
        mlflow.log_metrics({f"teacher_{k}": v for k, v in prep.teacher_metrics.items()})
        # Counts every worker's finished and running trials (and fails those of dead workers), so
        # N workers on one study stop at the target together; see workers.needs_more_trials.
        if workers.needs_more_trials(study, target, poll, deadline):
            workers.quiet_skipped_trials()
            study.optimize(
                search.make_objective(prep, str(cfg.student.name), fixed, tags, target),
                n_trials=target - workers.finished_trials(study),
                timeout=cfg.study.timeout,
                callbacks=[_print_trial(prep.metric), workers.StopAtTarget(target, poll, deadline)],
                catch=(workers.OverTarget,),
            )
        else:
            print(
                f"study {name!r} already has {cfg.study.n_trials} finished trials; raise study.n_trials to search more"
            )
        result = _summarise(study, name, storage_url, tracking_uri, parent.info.run_id, experiment_id, prep)
        if result.best_run_id:
            mlflow.set_tags({"best_run_id": result.best_run_id, "best_trial": str(result.best_trial)})
            best_metrics = mlflow.get_run(result.best_run_id).data.metrics
            mlflow.log_metrics(
                {f"best_{k}": best_metrics[k] for k in (prep.metric, prep.report_metric) if k in best_metrics}
            )
            _copy_best_model(result.best_run_id)
            if cfg.tracking.get("register"):
                result.registered = register_best(
                    result.best_run_id, str(cfg.tracking.register), prep.cache.label_names, prep.task.dev.texts[:2]
                )
                mlflow.set_tag("registered_model", result.registered)
        log_trials_pareto(study, prep.metric, f"{cfg.student.name} trials, {cfg.task.name}")
    return result


def log_trials_pareto(study: Any, metric: str, title: str) -> None:
    """Every complete trial on the dev-score / batch-1 latency plane (front marked), as the study run's artifacts.

    With ``study.min_speedup`` this is where a person sees what the constraint cost; without it,
    which trials a faster student could have come from.
    """
    import mlflow
    from optuna.trial import TrialState

    from studies.report import Point, pareto_html, pareto_png

    points = [
        Point(f"#{t.number}", float(t.user_attrs["latency_ms_b1"]), float(t.value))
        for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
        if t.value is not None and "latency_ms_b1" in t.user_attrs
    ]
    if len(points) < 2:
        return
    with tempfile.TemporaryDirectory() as tmp:
        for writer, suffix in ((pareto_png, "png"), (pareto_html, "html")):
            path = writer(Path(tmp) / f"trials_pareto.{suffix}", points, "batch-1 latency (ms)", metric, title)
            mlflow.log_artifact(str(path))


def study_run_note(name: str, storage_url: str, student: str, metric: str) -> str:
    """The study run's description in MLflow: which Optuna study it is and how to watch that study."""
    return (
        f"Optuna study `{name}` of `{student}` students, maximising `{metric}` (chosen on dev; test only reported). "
        f"One child run `{student}-trial-<n>` per trial this invocation ran; pruned trials end FINISHED with "
        f'"(pruned)" in their name. Watch the search: `optuna-dashboard {storage_url}`'
    )


def link_dashboard_to_mlflow(study: Any, experiment: str, tracking_uri: str) -> None:
    """A note on the study's optuna-dashboard page naming the MLflow experiment and runs that track it."""
    import warnings

    from optuna_dashboard import get_note, save_note

    if get_note(study):
        return  # a person's note, or ours from an earlier invocation
    body = (
        f"# {study.study_name}\n\nTracked in MLflow experiment `{experiment}` (`mlflow ui --backend-store-uri "
        f"{tracking_uri}`): parent runs `study-{study.study_name}`, one child run per trial; the trial's "
        "`mlflow_run_id` user attribute names its run."
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        save_note(study, body)


def register_best(run_id: str, registered_name: str, labels: Sequence[str], example: Sequence[str]) -> str:
    """Register the best trial's MLflow Model (``tracking.register``); a new version per call.

    A best trial logged before students became MLflow Models has only its saved student: it is
    logged as one into that run first (``labels``, ``example``: the task's label names, example texts).
    """
    import mlflow

    from studies.models import log_text_model, register

    tags = mlflow.get_run(run_id).data.tags
    if tags.get("has_pyfunc") != "true":
        if tags.get("has_model") != "true":
            raise KDError(
                f"tracking.register={registered_name}: the best trial's run {run_id} has no saved student to "
                "register (it was logged with tracking.log_models=none); rerun a study with tracking.log_models=best"
            )
        with tempfile.TemporaryDirectory() as tmp:
            local = mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path="student", dst_path=tmp)
            with mlflow.start_run(run_id=run_id, nested=True):
                log_text_model(local, labels, example)
                mlflow.set_tag("has_pyfunc", "true")
    return register(run_id, registered_name)


def _copy_best_model(run_id: str) -> None:
    """Log the best trial's saved student under the parent run too, so the study run holds its winner."""
    import mlflow

    run = mlflow.get_run(run_id)
    if run.data.tags.get("has_model") != "true":
        return
    with tempfile.TemporaryDirectory() as tmp:
        local = mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path="student", dst_path=tmp)
        mlflow.log_artifacts(local, "best_student")


def _print_trial(metric: str) -> Any:
    def callback(study: Any, trial: Any) -> None:
        if str(trial.user_attrs.get("fail_reason", "")).startswith("skipped"):
            return  # ended before any work: another worker's trial reached the target first
        value = f"{metric}={trial.value:.4f}" if trial.value is not None else trial.state.name.lower()
        reason = trial.user_attrs.get("fail_reason", "")
        print(f"trial {trial.number}: {value} {reason}".rstrip(), flush=True)

    return callback


def _summarise(
    study: Any, name: str, storage: str, uri: str, parent_id: str, experiment_id: str, prep: Any
) -> StudyResult:
    from optuna.trial import TrialState

    from studies.search_policy import best_feasible

    best = best_feasible(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)))
    return StudyResult(
        study_name=name,
        storage=storage,
        tracking_uri=uri,
        parent_run_id=parent_id,
        experiment_id=experiment_id,
        best_trial=best.number if best else None,
        best_value=best.value if best else None,
        best_params=dict(best.params) if best else {},
        best_run_id=best.user_attrs.get("mlflow_run_id") if best else None,
        teacher_metrics=prep.teacher_metrics,
        n_finished=len(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED))),
        metric=prep.metric,
        report_metric=prep.report_metric,
    )


def describe(result: StudyResult) -> str:
    """The closing message: the best trial (chosen on dev) against the teacher, on test; how to look at it."""
    from studies.tracking import runs_view_url

    metric, reported = result.metric, result.report_metric
    lines = [f"study {result.study_name!r}: {result.n_finished} finished trials (complete or pruned)"]
    teacher = result.teacher_metrics
    if result.best_trial is None:
        lines.append(
            "no trial completed (all pruned or failed) or none met study.min_speedup; see the MLflow runs for reasons"
        )
    else:
        import mlflow

        m = mlflow.get_run(result.best_run_id).data.metrics if result.best_run_id else {}
        nan = float("nan")
        test_score, teacher_test = m.get(reported, nan), teacher.get(reported, nan)
        share = 100 * test_score / teacher_test if teacher_test else nan
        lines.append(
            f"best trial #{result.best_trial} (chosen on {metric}={result.best_value:.4f}): "
            f"{reported}={test_score:.4f} vs the teacher's {reported}={teacher_test:.4f} "
            f"({share:.1f}% of the teacher); test agreement {m.get('test_agreement', nan):.3f}"
        )
        lines.append(
            f"batch-1 latency {m.get('latency_ms_b1', nan):.2f} ms vs the teacher's "
            f"{m.get('teacher_latency_ms_b1', nan):.2f} ms measured beside it "
            f"({m.get('latency_ratio_teacher', nan):.1f}x faster); "
            f"params {int(m.get('params_total', 0)):,} ({int(m.get('params_non_embedding', 0)):,} non-embedding)"
        )
        lines.append(f"best hyper-parameters: {result.best_params}")
        model_uri = result.registered or f"runs:/{result.best_run_id}/model"
        lines += [
            "",
            "serve it (raw text in, label and class probabilities out):",
            f"  MLFLOW_TRACKING_URI={result.tracking_uri} "
            f"mlflow models serve -m {model_uri} --env-manager local -p 5001",
            "  curl -s 127.0.0.1:5001/invocations -H 'Content-Type: application/json' "
            """-d '{"dataframe_records": [{"text": "a gripping, funny film"}]}'""",
        ]
    runs = runs_view_url(result.experiment_id)
    lines += [
        "",
        "look at it:",
        f"  mlflow ui --backend-store-uri {result.tracking_uri}    # then open http://127.0.0.1:5000/{runs}",
        f"  optuna-dashboard {result.storage}    # then open http://127.0.0.1:8080",
    ]
    return "\n".join(lines)


def usage() -> str:
    from students.registry import available_students
    from studies.config import group_options

    return (
        "usage: python -m studies.run [key=value ...]\n\n"
        "examples:\n"
        "  python -m studies.run student=bilstm\n"
        "  python -m studies.run task=trec student=cnn study.n_trials=20 data.limit=2000\n"
        "  python -m studies.run teacher.name=bert-base-uncased student.hparams.epochs=5\n\n"
        f"students: {', '.join(available_students())}   (python -m studies.list shows their search spaces)\n"
        f"tasks:    {', '.join(group_options('task'))}\n"
        f"teachers: {', '.join(group_options('teacher'))}  (or teacher.name=<HF id or local path>)\n\n"
        "defaults (studies/conf/config.yaml):\n" + (Path(__file__).parent / "conf" / "config.yaml").read_text()
    )


def main(argv: Sequence[str] | None = None) -> int:
    return run_cli(
        argv,
        usage,
        lambda cfg, _args: run_study(cfg),
        lambda result: print(describe(result)),
        "finished trials are stored; rerun the same command to resume",
    )


if __name__ == "__main__":
    sys.exit(main())
