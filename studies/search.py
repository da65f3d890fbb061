"""Optuna × MLflow: one Optuna trial = one student fitted on the cache = one nested MLflow run.

The study lives in an Optuna RDB storage (SQLite by default, PostgreSQL/MySQL for many
workers) with heartbeats, so trials of a killed worker are failed and retried and completed
trials are never lost. ``study.n_trials`` is the study's target of finished trials: rerunning
the same command tops the study up instead of repeating it.
"""

from __future__ import annotations

import logging
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import mlflow
import optuna
from optuna.trial import TrialState

from students.base import Student
from students.registry import get_student_class
from students.training import NonFiniteLoss
from studies.evaluate import evaluate_model
from studies.pipeline import Prepared
from studies.tracking import flat_params
from transfer.errors import KDError

log = logging.getLogger(__name__)
FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)


class FixedParamsTrial:
    """Wraps a trial so hyper-parameters fixed in the config are not searched (nor recorded as sampled)."""

    def __init__(self, trial: optuna.Trial, fixed: dict[str, Any]) -> None:
        self._trial = trial
        self._fixed = fixed

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._trial, name)
        if not name.startswith("suggest_"):
            return attr

        def suggest(param: str, *args: Any, **kwargs: Any) -> Any:
            return self._fixed[param] if param in self._fixed else attr(param, *args, **kwargs)

        return suggest


def sample_hparams(student_cls: type[Student], trial: optuna.Trial, fixed: dict[str, Any]) -> dict[str, Any]:
    """The trial's full hyper-parameters: searched ones from the space, fixed ones from the config."""
    return {**student_cls.search_space(FixedParamsTrial(trial, fixed)), **fixed}  # type: ignore[arg-type]


def make_storage(url: str, heartbeat_interval: int) -> optuna.storages.BaseStorage:
    engine_kwargs = {"connect_args": {"timeout": 60}} if url.startswith("sqlite") else {"pool_pre_ping": True}
    try:
        return optuna.storages.RDBStorage(
            url,
            engine_kwargs=engine_kwargs,
            heartbeat_interval=heartbeat_interval,
            grace_period=2 * heartbeat_interval,
            heartbeat_stale_trial_callback=optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=2),
        )
    except Exception as err:  # sqlalchemy raises many kinds; the user needs the URL and the reason
        raise KDError(f"cannot open Optuna storage {url!r}: {str(err).splitlines()[0]}") from err


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
    elif recorded != cache_key:
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
        hparams = sample_hparams(student_cls, trial, fixed)
        hparams.setdefault("seed", int(prep.cfg.seed))
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
