"""Optuna × MLflow: one Optuna trial = one student fitted on the cache = one nested MLflow run.

The study lives in an Optuna RDB storage (SQLite by default, PostgreSQL/MySQL for many
workers) with heartbeats, so trials of a killed worker are failed and retried and completed
trials are never lost. ``study.n_trials`` is the study's target of finished trials: rerunning
the same command tops the study up instead of repeating it.
"""

from __future__ import annotations

import copy
import datetime
import logging
import random
import tempfile
import time
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import mlflow
import optuna
from optuna.trial import TrialState

from students.base import Student
from students.registry import get_student_class
from students.training import NonFiniteLoss
from studies.dblock import driver_url, schema_lock
from studies.evaluate import evaluate_model
from studies.pipeline import Prepared
from studies.tracking import flat_params
from transfer.errors import KDError

log = logging.getLogger(__name__)
FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)


class FixedParamsTrial:
    """Wraps a trial so hyper-parameters fixed in the config are not searched (nor recorded as sampled)."""

    def __init__(self, trial: optuna.Trial, fixed: dict[str, Any], objective_extras: Sequence[str] = ()) -> None:
        self._trial = trial
        self._fixed = fixed
        self.objective_extras = tuple(objective_extras)  # read by students.objectives.suggest_objective

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._trial, name)
        if not name.startswith("suggest_"):
            return attr

        def suggest(param: str, *args: Any, **kwargs: Any) -> Any:
            return self._fixed[param] if param in self._fixed else attr(param, *args, **kwargs)

        return suggest


def sample_hparams(
    student_cls: type[Student], trial: optuna.Trial, fixed: dict[str, Any], objective_extras: Sequence[str] = ()
) -> dict[str, Any]:
    """The trial's full hyper-parameters: searched ones from the space, fixed ones from the config.

    ``objective_extras`` (``study.search_objectives``) adds optional distillation terms (hidden,
    nst, ab, noise) to the search space of every neural student.
    """
    proxy = FixedParamsTrial(trial, fixed, objective_extras)
    return {**student_cls.search_space(proxy), **fixed}  # type: ignore[arg-type]


def make_storage(url: str, heartbeat_interval: int, tracking_uri: str | None = None) -> optuna.storages.BaseStorage:
    """Optuna RDB storage with heartbeats: a trial whose worker died is failed and re-queued (see StaleTrialHandler).

    Safe to call from many workers at once on a fresh database (schema creation is serialised and retried).
    """
    import sqlalchemy.exc

    url = driver_url(url)
    engine_kwargs = {"connect_args": {"timeout": 60}} if url.startswith("sqlite") else {"pool_pre_ping": True}
    attempts = 4
    for attempt in range(attempts):
        try:
            with schema_lock(url, "optuna"), warnings.catch_warnings():
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)  # heartbeats: stable enough
                return optuna.storages.RDBStorage(
                    url,
                    engine_kwargs=engine_kwargs,
                    heartbeat_interval=heartbeat_interval,
                    grace_period=2 * heartbeat_interval,
                    heartbeat_stale_trial_callback=StaleTrialHandler(heartbeat_interval, tracking_uri),
                )
        except (sqlalchemy.exc.IntegrityError, sqlalchemy.exc.OperationalError) as err:
            # a race we could not lock out (e.g. MySQL) or a database that is still starting: try again
            if attempt + 1 < attempts:
                time.sleep(0.5 * (attempt + 1) + random.random())
                continue
            raise KDError(f"cannot open Optuna storage {url!r}: {str(err).splitlines()[0]}") from err
        except Exception as err:  # sqlalchemy raises many kinds; the user needs the URL and the reason
            raise KDError(f"cannot open Optuna storage {url!r}: {str(err).splitlines()[0]}") from err
    raise AssertionError("unreachable")


class StaleTrialHandler:
    """Called (in whichever worker notices) for each trial of a dead worker that Optuna has just failed.

    Optuna notices only when a live worker asks for a trial (``optimize``/``ask``) or calls
    ``fail_stale_trials``: a trial is stale once its heartbeat is older than the grace period
    (2 × ``study.heartbeat_interval``). We close the dead trial's MLflow run as FAILED (it would
    stay RUNNING forever) and re-queue the same hyper-parameters, at most ``max_retry`` times.
    """

    def __init__(self, heartbeat_interval: int, tracking_uri: str | None, max_retry: int = 2) -> None:
        self.heartbeat_interval = heartbeat_interval
        self.tracking_uri = tracking_uri
        self._retry = optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=max_retry)

    def __call__(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        reason = f"worker died: no heartbeat for over {2 * self.heartbeat_interval}s"
        log.warning("study %r, trial %d: %s; marked FAIL and re-queued", study.study_name, trial.number, reason)
        run_id = trial.user_attrs.get("mlflow_run_id")
        if run_id and self.tracking_uri:
            try:
                client = mlflow.MlflowClient(tracking_uri=self.tracking_uri)
                client.set_tag(run_id, "state", "failed")
                client.set_tag(run_id, "fail_reason", reason)
                client.set_terminated(run_id, status="FAILED")
            except Exception as err:  # the study must go on even if MLflow is unreachable
                log.warning("could not mark MLflow run %s of dead trial %d as failed: %s", run_id, trial.number, err)
        self._retry(study, trial)


def trial_counts(study: optuna.Study) -> tuple[int, int]:
    """(finished, running) trials of the study, across all workers."""
    states = [t.state for t in study.get_trials(deepcopy=False, states=(*FINISHED, TrialState.RUNNING))]
    finished = sum(state in FINISHED for state in states)
    return finished, len(states) - finished


def fail_orphaned_trials(study: optuna.Study, grace: float) -> None:
    """Fail (and re-queue) RUNNING trials that never recorded a heartbeat and started over ``grace`` s ago.

    A worker killed between creating a trial and its heartbeat thread's first beat leaves a trial
    that Optuna's stale check skips (it only looks at trials *with* a heartbeat), so it would stay
    RUNNING forever and keep the study below its target. Reads Optuna's heartbeat table directly;
    if Optuna's internals change, this quietly does nothing.
    """
    now = datetime.datetime.now()
    old = {
        t._trial_id: t
        for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
        if t.datetime_start is not None and (now - t.datetime_start).total_seconds() > grace
    }
    if not old:
        return
    storage = study._storage
    backend = getattr(storage, "_backend", storage)  # Optuna wraps RDBStorage in a caching layer
    try:
        from optuna.storages._rdb import models

        with backend.scoped_session() as session:
            column = models.TrialHeartbeatModel.trial_id
            beating = {row[0] for row in session.query(column).filter(column.in_(list(old)))}
    except Exception as err:  # not an RDB storage, or Optuna's internals moved
        log.debug("cannot look for trials without heartbeat: %s", err)
        return
    callback = backend.get_heartbeat_stale_trial_callback()
    for trial_id in set(old) - beating:
        try:
            if not storage.set_trial_state_values(trial_id, state=TrialState.FAIL):
                continue
        except optuna.exceptions.UpdateFinishedTrialError:  # another worker got there first
            continue
        if callback is not None:
            callback(study, copy.deepcopy(storage.get_trial(trial_id)))


def needs_more_trials(study: optuna.Study, target: int, poll: float, deadline: float | None = None) -> bool:
    """Whether this worker should start another trial for the study to reach ``target`` finished trials.

    Counts every worker's trials: when the trials others are running already cover what is left,
    wait until they finish (False) or one of their workers dies and its trial, failed as stale,
    is re-queued (True). So N workers on one study end with ``target`` finished trials, not up
    to N-1 more (the overshoot of Optuna's MaxTrialsCallback, which counts finished trials only),
    and the study still reaches its target when a worker is killed. Only two workers deciding in
    the same instant can still start one trial too many.
    """
    interval = getattr(study._storage, "get_heartbeat_interval", lambda: None)()
    grace = 2 * interval if interval else 0
    while True:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            optuna.storages.fail_stale_trials(study)
        if grace:
            fail_orphaned_trials(study, grace)
        finished, running = trial_counts(study)
        if finished >= target:
            return False
        if finished + running < target:
            return True
        if deadline is not None and time.monotonic() >= deadline:
            return False
        time.sleep(poll)


class StopAtTarget:
    """Optuna callback: stop this worker once the study's finished + running trials reach the target."""

    def __init__(self, target: int, poll: float, deadline: float | None = None) -> None:
        self.target = target
        self.poll = poll
        self.deadline = deadline

    def __call__(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        if not needs_more_trials(study, self.target, self.poll, self.deadline):
            study.stop()


def open_study(name: str, storage: optuna.storages.BaseStorage, cfg: Any, cache_key: str) -> optuna.Study:
    sampler: optuna.samplers.BaseSampler = (
        optuna.samplers.RandomSampler(seed=int(cfg.seed))
        if cfg.study.sampler == "random"
        else optuna.samplers.TPESampler(seed=int(cfg.seed), n_startup_trials=4)
    )
    pruner: optuna.pruners.BasePruner = (
        optuna.pruners.NopPruner()
        if cfg.study.pruner == "none"
        else optuna.pruners.MedianPruner(n_startup_trials=2, n_warmup_steps=1)
    )
    study = optuna.create_study(
        study_name=name, storage=storage, direction="maximize", sampler=sampler, pruner=pruner, load_if_exists=True
    )
    recorded = study.user_attrs.get("cache_key")
    if recorded is None:
        study.set_user_attr("cache_key", cache_key)
        # Two workers may both have found no key: Optuna keeps the first write and silently drops
        # the other (an ignored unique-key violation), so read back which one won.
        recorded = study.user_attrs.get("cache_key")
    if recorded != cache_key:
        raise KDError(
            f"study {name!r} was run on transfer cache {recorded}, but this configuration gives {cache_key}; "
            "its trials are not comparable: choose another study.name"
        )
    return study


def finished_trials(study: optuna.Study) -> int:
    return len(study.get_trials(deepcopy=False, states=FINISHED))


def best_value(study: optuna.Study) -> float | None:
    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    return max((t.value for t in complete if t.value is not None), default=None)


def make_objective(
    prep: Prepared, student_name: str, fixed: dict[str, Any], parent_tags: dict[str, str]
) -> Callable[[optuna.Trial], float]:
    """The Optuna objective: sample, fit on the cache, evaluate, log to a nested MLflow run."""
    student_cls = get_student_class(student_name)
    metric = prep.metric
    teacher_score = prep.teacher_metrics[metric]
    progress = bool(prep.cfg.progress)

    def objective(trial: optuna.Trial) -> float:
        try:
            hparams = sample_hparams(student_cls, trial, fixed, tuple(prep.cfg.study.get("search_objectives") or ()))
        except ValueError as err:  # Optuna refuses a parameter whose range changed within one study
            raise KDError(
                f"study {trial.study.study_name!r} was searched with another search space for {student_name} "
                f"({err}); start a new study with study.name=<new name>"
            ) from err
        hparams.setdefault("seed", int(prep.cfg.seed))
        trial.set_user_attr("hparams", hparams)  # the full config (fixed ones too), for studies.compare
        tags = {**parent_tags, "role": "trial", "trial_number": str(trial.number), "student": student_name}
        with mlflow.start_run(run_name=f"{student_name}-trial-{trial.number}", nested=True, tags=tags) as run:
            trial.set_user_attr("mlflow_run_id", run.info.run_id)
            mlflow.log_params(flat_params(hparams))

            def report(step: int, score: float) -> None:
                mlflow.log_metric(metric, score, step=step)
                trial.report(score, step)
                if trial.should_prune():
                    mlflow.set_tag("state", "pruned")
                    raise optuna.TrialPruned(f"pruned at step {step} with {metric}={score:.4f}")

            student = student_cls(**{**hparams, "progress": progress})
            started = time.perf_counter()
            try:
                student.fit(prep.cache, prep.dev_set(), report)
            except NonFiniteLoss as err:
                reason = f"non-finite loss: {err}"
                trial.set_user_attr("fail_reason", reason)
                mlflow.set_tags({"state": "pruned", "fail_reason": reason})
                raise optuna.TrialPruned(reason) from err
            train_seconds = time.perf_counter() - started
            metrics = evaluate_model(
                student.predict_logits,
                prep.task,
                prep.cache.dev_logits,
                student.n_params(),
                int(prep.cfg.tracking.latency_samples),
            )
            metrics["train_seconds"] = train_seconds
            metrics["share_of_teacher"] = metrics[metric] / teacher_score if teacher_score else 0.0
            metrics["latency_ratio_teacher"] = prep.teacher_metrics["latency_ms_b1"] / max(
                metrics["latency_ms_b1"], 1e-9
            )
            mlflow.log_metrics(metrics)
            if hasattr(student, "artifacts"):
                for name, text in student.artifacts(prep.task.dev.texts).items():
                    mlflow.log_text(text, f"explanations/{name}")
            mlflow.set_tag("state", "complete")
            for key in ("share_of_teacher", "latency_ms_b1", "dev_agreement", "params_total"):
                trial.set_user_attr(key, metrics[key])
            previous = best_value(trial.study)
            if prep.cfg.tracking.log_models == "best" and (previous is None or metrics[metric] > previous):
                with tempfile.TemporaryDirectory() as tmp:
                    mlflow.log_artifacts(str(student.save(Path(tmp) / "student")), "student")
                mlflow.set_tag("has_model", "true")
            return metrics[metric]

    return objective
