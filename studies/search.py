"""Optuna × MLflow: one Optuna trial = one student fitted on the cache = one nested MLflow run.

The objective reads top to bottom like Optuna's examples: sample hyper-parameters, fit and
measure the student (``studies/measure.py``), log it, return its dev score. Everything about
many workers sharing a study (storage, heartbeats, dead workers, the exact target) lives in
``studies/workers.py``; a study's identity (cache, student, fixed settings) is checked here.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import mlflow
import optuna
from optuna.trial import TrialState

from students.base import Student
from students.registry import get_student_class
from students.search_space import sample_hparams
from students.training import NonFiniteLoss
from studies.measure import fit_and_measure
from studies.pipeline import Prepared
from studies.search_policy import best_feasible, make_pruner, make_sampler, min_speedup, record_constraint
from studies.tracking import flat_params, log_records, log_student
from studies.workers import check_under_target
from transfer.errors import KDError
from transfer.fingerprint import hash_json

log = logging.getLogger(__name__)


def study_setup(
    student: str, fixed: dict[str, Any], search_objectives: Sequence[str], required_speedup: float | None = None
) -> dict[str, Any]:
    """What decides which configurations a study searches: part of its identity, beside the cache.

    A speed constraint changes which trial is best, so it is part of the identity too (only when
    set, so that studies made before it existed keep their identity), and so is the form its
    latency is read on: since students are timed in their serving form (a folded BiLSTM), a
    constrained study does not top up one whose trials were timed on the PyTorch module.
    """
    setup: dict[str, Any] = {"student": student, "fixed": fixed, "search_objectives": sorted(search_objectives)}
    if required_speedup:
        setup["min_speedup"] = float(required_speedup)
        setup["latency_form"] = "serving"
    return setup


def setup_hash(setup: dict[str, Any]) -> str:
    return hash_json(setup, length=6)


def _record_once(study: optuna.Study, key: str, value: Any) -> Any:
    """Set a study attribute unless present; returns the stored value (the first writer wins)."""
    recorded = study.user_attrs.get(key)
    if recorded is None:
        study.set_user_attr(key, value)
        # Two workers may both have found none: Optuna keeps the first write and silently drops
        # the other (an ignored unique-key violation), so read back which one won.
        recorded = study.user_attrs.get(key)
    return recorded


def open_study(
    name: str,
    storage: optuna.storages.BaseStorage,
    cfg: Any,
    cache_key: str,
    setup: dict[str, Any],
    metric: str,
    teacher_key: str = "",
) -> optuna.Study:
    """Create or resume the study; refuse one whose cache or set-up differs (its trials would not compare)."""
    study = optuna.create_study(
        study_name=name,
        storage=storage,
        direction="maximize",
        sampler=make_sampler(cfg, name),  # seeded per trial number: sittings and workers draw their own points
        pruner=make_pruner(cfg),
        load_if_exists=True,
    )
    recorded = _record_once(study, "cache_key", cache_key)
    if recorded != cache_key:
        raise KDError(
            f"study {name!r} was run on transfer cache {recorded}, but this configuration gives {cache_key}; "
            "its trials are not comparable: choose another study.name"
        )
    recorded_setup = _record_once(study, "setup", setup)
    if recorded_setup != setup:
        raise KDError(
            f"study {name!r} was searched with {_describe_setup(recorded_setup)}, but this run asks for "
            f"{_describe_setup(setup)}; topping it up would mix set-ups: leave study.name unset (each set-up "
            "gets its own study) or choose another study.name"
        )
    attrs = {"task": str(cfg.task.name), "student": setup["student"], "metric": metric, "teacher_key": teacher_key}
    for key, value in attrs.items():
        _record_once(study, key, value)
    if study.metric_names is None:
        with warnings.catch_warnings():  # experimental since Optuna 3.2, stable in use
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            study.set_metric_names([metric])  # optuna-dashboard then shows "dev_accuracy", not "Objective 0"
    return study


def _describe_setup(setup: Any) -> str:
    if not isinstance(setup, dict):
        return repr(setup)
    fixed = ", ".join(f"{k}={v}" for k, v in sorted((setup.get("fixed") or {}).items())) or "none"
    extras = ",".join(setup.get("search_objectives") or []) or "none"
    speed = f", min_speedup: {setup['min_speedup']:g}" if setup.get("min_speedup") else ""
    return f"student={setup.get('student')}, fixed hyper-parameters: {fixed}, search_objectives: {extras}{speed}"


def best_value(study: optuna.Study) -> float | None:
    """The best feasible complete trial's value so far (None before any)."""
    best = best_feasible(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)))
    return best.value if best else None


def pruning_reporter(
    trial: optuna.Trial, metric: str, prunable: bool, echo: bool = False
) -> Callable[[int, float], None]:
    """Per-epoch dev scores: an ``epoch_<metric>`` curve in MLflow, and Optuna's pruning decision.

    The curve has its own name, so the run's ``<metric>`` column is the final model's score and
    never the last epoch's. A student whose only report comes after all its work is done
    (``reports_while_training`` False) is never pruned: that would throw its result away.
    ``echo`` prints one line per report, for runs without progress bars (``progress=false``, a
    log file), whose trials would otherwise be silent for minutes.
    """

    def report(step: int, score: float) -> None:
        mlflow.log_metric(f"epoch_{metric}", score, step=step)
        trial.report(score, step)
        if echo:
            print(f"  trial {trial.number} step {step}: {metric}={score:.4f}", flush=True)
        if prunable and trial.should_prune():
            raise optuna.TrialPruned(f"pruned at step {step} with {metric}={score:.4f}")

    return report


@contextmanager
def trial_run(trial: optuna.Trial, student_name: str, tags: dict[str, str]) -> Iterator[Any]:
    """The trial's nested MLflow run, ended with a status a person can read in the runs list.

    Pruned trials end FINISHED with ``state=pruned`` and "(pruned)" in their name: pruning is the
    search working, not a failure. A real error ends the run FAILED with its reason.
    """
    run_name = f"{student_name}-trial-{trial.number}"
    tags = {**tags, "role": "trial", "trial_number": str(trial.number), "student": student_name}
    run = mlflow.start_run(run_name=run_name, nested=True, tags=tags)
    trial.set_user_attr("mlflow_run_id", run.info.run_id)
    status = "FINISHED"  # ended by hand: MLflow's own context manager calls every exception a failure
    try:
        yield run
        mlflow.set_tag("state", "complete")
    except optuna.TrialPruned as pruned:
        mlflow.set_tags({"state": "pruned", "prune_reason": str(pruned), "mlflow.runName": f"{run_name} (pruned)"})
        raise
    except BaseException as err:
        status = "KILLED" if isinstance(err, KeyboardInterrupt) else "FAILED"
        reason = f"{type(err).__name__}: {err}".splitlines()[0][:500]
        trial.set_user_attr("fail_reason", reason)
        mlflow.set_tags({"state": "failed", "fail_reason": reason})
        raise
    finally:
        mlflow.end_run(status)


def make_objective(
    prep: Prepared, student_name: str, fixed: dict[str, Any], parent_tags: dict[str, str], target: int
) -> Callable[[optuna.Trial], float]:
    """The Optuna objective: sample, fit on the cache, measure, log to a nested MLflow run; returns dev score."""
    student_cls: type[Student] = get_student_class(student_name)
    metric = prep.metric
    extras = tuple(prep.cfg.study.get("search_objectives") or ())
    required_speedup = min_speedup(prep.cfg)
    echo = not prep.cfg.get("progress", True)  # no progress bars (a log file): one line per dev report

    def objective(trial: optuna.Trial) -> float:
        check_under_target(trial, target)
        try:
            hparams = sample_hparams(student_cls, trial, fixed, extras)
        except ValueError as err:  # Optuna refuses a parameter whose range changed within one study
            raise KDError(
                f"study {trial.study.study_name!r} was searched with another search space for {student_name} "
                f"({err}); start a new study with study.name=<new name>"
            ) from err
        hparams.setdefault("seed", int(prep.cfg.seed))
        trial.set_user_attr("hparams", hparams)  # the full config (fixed ones too), for studies.compare
        with trial_run(trial, student_name, parent_tags):
            mlflow.log_params(flat_params(hparams))
            report = pruning_reporter(trial, metric, student_cls.reports_while_training, echo)
            try:
                measured = fit_and_measure(prep, student_name, hparams, report)
            except NonFiniteLoss as err:
                trial.set_user_attr("fail_reason", f"non-finite loss: {err}")
                raise optuna.TrialPruned(f"non-finite loss: {err}") from err
            metrics = measured.metrics
            mlflow.log_metrics(metrics)
            log_records(measured.records)
            if hasattr(measured.student, "artifacts"):
                for name, text in measured.student.artifacts(prep.task.dev.texts).items():
                    mlflow.log_text(text, f"explanations/{name}")
            kept = ("share_of_teacher", "latency_ms_b1", "latency_ratio_teacher", "test_agreement", "sparsity")
            for key in (*kept, "latency_ratio_teacher_q25", "latency_ratio_teacher_q75"):
                if key in metrics:  # sparsity: neural students only (distillation with pruning)
                    trial.set_user_attr(key, metrics[key])
            trial.set_user_attr(prep.report_metric, metrics[prep.report_metric])
            record_constraint(trial, metrics["latency_ratio_teacher"], required_speedup)
            previous = best_value(trial.study)
            fast_enough = required_speedup is None or metrics["latency_ratio_teacher"] >= required_speedup
            better = previous is None or metrics[metric] > previous
            if prep.cfg.tracking.log_models == "best" and fast_enough and better:
                log_student(measured.student, "student", prep.cache.label_names, prep.task.dev.texts[:2])
            return metrics[metric]

    return objective
