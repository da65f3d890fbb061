"""The best configuration of every student type studied on one task and one transfer cache.

Both ``studies.compare`` and ``studies.probe`` start from the Optuna storage rather than from a
list in the config: whatever was searched (by anyone, on any machine sharing the storage) is what
gets compared, and whatever was not is reported as missing instead of failing.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import optuna
from omegaconf import OmegaConf
from optuna.trial import FrozenTrial, TrialState

from transfer.errors import KDError
from transfer.fingerprint import hash_json

log = logging.getLogger(__name__)

STUDENT_CONF = Path(__file__).parent / "conf" / "student"


@dataclass
class BestConfig:
    """One student type's best complete trial: what to retrain and where it came from."""

    student: str
    study_name: str
    trial_number: int
    value: float
    hparams: dict[str, Any]
    trial_run_id: str | None
    hparams_source: str  # "trial" (user attr "hparams") or "params+conf" (reconstructed, older studies)
    search_seeds: tuple[int, ...] = ()  # seeds the study's trials trained with: a retrain must not reuse them

    def config_hash(self, cache_key: str) -> str:
        """Identity of a retrain, seed excluded: same hash = same student, same data, same settings."""
        hparams = {k: v for k, v in self.hparams.items() if k != "seed"}
        return hash_json({"student": self.student, "hparams": hparams, "cache_key": cache_key})


@dataclass
class Studied:
    """What the storage holds for one task and cache: the best configs, and who is missing and why."""

    best: list[BestConfig]
    missing: dict[str, str] = field(default_factory=dict)  # student -> reason (no study, no complete trial)


def as_names(value: Any) -> list[str] | None:
    """A config list of names (``[a,b]``, ``a,b`` or ``a``); None/empty = all."""
    if not value:
        return None
    if isinstance(value, str):
        return [v.strip() for v in value.split(",") if v.strip()]
    return [str(v) for v in value]


def student_of(name: str, user_attrs: dict[str, Any], known: list[str]) -> str | None:
    """The student type of a study: its user attr, else the registered name inside the default study name."""
    if user_attrs.get("student"):
        return str(user_attrs["student"])
    parts = name.split("-")  # default name: <task>-<teacher label, may hold dashes>-<student>-<key6>
    if len(parts) >= 3 and parts[-2] in known:
        return parts[-2]
    matches = [i for i, part in enumerate(parts[1:], 1) if part in known]
    return parts[matches[-1]] if matches else None


def recover_hparams(student: str, trial: FrozenTrial) -> tuple[dict[str, Any], str]:
    """The trial's full hyper-parameters; studies made before they were recorded fall back to params+conf."""
    if isinstance(trial.user_attrs.get("hparams"), dict):
        return dict(trial.user_attrs["hparams"]), "trial"
    conf = STUDENT_CONF / f"{student}.yaml"
    fixed: dict[str, Any] = {}
    if conf.is_file():
        loaded = OmegaConf.to_container(OmegaConf.load(conf), resolve=True)
        fixed = dict(loaded.get("hparams") or {}) if isinstance(loaded, dict) else {}
    log.warning(
        "trial %d of %s has no recorded hparams; using its searched params plus %s defaults",
        trial.number,
        student,
        conf.name,
    )
    return {**fixed, **trial.params}, "params+conf"


def best_trial(study: optuna.Study, min_speedup: float | None = None) -> FrozenTrial | None:
    """The best complete trial meeting the study's constraint (first of equals: the one with the model).

    ``min_speedup``: only trials measured at least that many times faster than the teacher at batch 1
    in their study (every trial records it), so a comparison can ask for the speed a constrained study
    searched for even when an unconstrained study of the same student has a better, slower trial.
    """
    from studies.search_policy import best_feasible

    trials = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    if min_speedup:
        trials = [t for t in trials if float(t.user_attrs.get("latency_ratio_teacher", 0.0)) >= min_speedup]
    return best_feasible(trials)


def find_studied(
    storage: optuna.storages.BaseStorage | str,
    task: str,
    cache_key: str,
    students: list[str] | None = None,
    min_speedup: Mapping[str, float] | None = None,
    only: Sequence[str] | None = None,
) -> Studied:
    """Every study of ``task`` on ``cache_key``; per student type, the best complete trial over its studies.

    ``min_speedup`` (student → N): that student's best is its best trial at least N× the teacher's speed.
    ``only``: just these studies (by name). An ablation needs it: its fixed configuration must be what is
    retrained, not a better trial that another study of the same student found on the same cache.
    """
    from students.registry import available_students

    known = available_students()
    wanted = list(students) if students else known
    unknown = [s for s in wanted if s not in known]
    if unknown:
        raise KDError(f"unknown student(s) {', '.join(unknown)}; known students: {', '.join(known)}")
    best: dict[str, BestConfig] = {}
    without_trials: set[str] = set()
    too_slow: set[str] = set()  # complete trials, none of them fast enough
    for summary in optuna.get_all_study_summaries(storage, include_best_trial=False):
        attrs = dict(summary.user_attrs)
        if not summary.study_name.startswith(f"{task}-") or attrs.get("cache_key") != cache_key:
            continue
        if only is not None and summary.study_name not in only:
            continue
        student = student_of(summary.study_name, attrs, known)
        if student is None or student not in wanted:
            if student is None:
                log.warning("cannot tell the student type of study %r; skipped", summary.study_name)
            continue
        study = optuna.load_study(study_name=summary.study_name, storage=storage)
        floor = (min_speedup or {}).get(student)
        trial = best_trial(study, floor)
        if trial is None:
            (too_slow if floor else without_trials).add(student)
            continue
        if student in best and best[student].value >= float(trial.value or 0.0):
            continue
        hparams, source = recover_hparams(student, trial)
        used = {
            int(t.user_attrs["hparams"]["seed"])
            for t in study.get_trials(deepcopy=False)
            if isinstance(t.user_attrs.get("hparams"), dict) and "seed" in t.user_attrs["hparams"]
        }
        best[student] = BestConfig(
            student=student,
            study_name=summary.study_name,
            trial_number=trial.number,
            value=float(trial.value or 0.0),
            hparams=hparams,
            trial_run_id=trial.user_attrs.get("mlflow_run_id"),
            hparams_source=source,
            search_seeds=tuple(sorted(used | {int(hparams.get("seed", 0))})),
        )
    nowhere = "no study" if only is None else "no study among compare.studies"  # the list, not the storage, left it out
    missing = {
        s: _why_missing(s, without_trials, too_slow, min_speedup or {}, nowhere) for s in wanted if s not in best
    }
    return Studied(best=[best[s] for s in sorted(best)], missing=missing)


def _why_missing(
    student: str, without_trials: set[str], too_slow: set[str], min_speedup: Mapping[str, float], nowhere: str
) -> str:
    if student in too_slow:
        return f"no complete trial ≥ {min_speedup[student]:g}× the teacher's batch-1 speed"
    return "study has no complete trial" if student in without_trials else nowhere


def studies_of_task(storage: optuna.storages.BaseStorage | str, task: str) -> list[tuple[str, dict[str, Any]]]:
    """(name, attributes) of every study of ``task`` in the storage, whatever its teacher or cache."""
    return [
        (s.study_name, dict(s.user_attrs))
        for s in optuna.get_all_study_summaries(storage, include_best_trial=False)
        if s.user_attrs.get("task") == task or s.study_name.startswith(f"{task}-")
    ]


def check_studies_exist(
    storage: optuna.storages.BaseStorage | str, task: str, teacher_key: str, storage_url: str, overrides: list[str]
) -> None:
    """Before preparing anything: is there a study of this task made with this teacher at all?

    Without this, ``studies.compare task=trec`` with settings no study used would fine-tune a new
    teacher and label a cache, only to find no study on them.
    """
    found = studies_of_task(storage, task)
    if not found:
        every = [s.study_name for s in optuna.get_all_study_summaries(storage, include_best_trial=False)]
        listing = ", ".join(every) if every else "none"
        raise no_study_error(task, "(any)", storage_url, overrides, f"studies in the storage: {listing}")
    keys = {attrs.get("teacher_key") for _, attrs in found}
    if None not in keys and teacher_key not in keys:
        listing = "; ".join(f"{name} (teacher {attrs.get('teacher_key')})" for name, attrs in found)
        raise KDError(
            f"no study of task {task!r} used this teacher configuration (teacher key {teacher_key}); "
            f"studies of {task}: {listing}. Give the same teacher.* and data.* settings as the study you want."
        )


def no_study_error(task: str, cache_key: str, storage_url: str, overrides: list[str], listing: str = "") -> KDError:
    """The error when nothing at all was studied: say which command makes a study first."""
    extra = " ".join(o for o in overrides if not re.match(r"^(compare|probe)\.", o) and not o.startswith("task="))
    return KDError(
        f"no Optuna study of task {task!r} on transfer cache {cache_key} in {storage_url}"
        + (f" ({listing})" if listing else "")
        + f"; run a study first, e.g. python -m studies.run task={task} student=bilstm {extra}".rstrip()
    )
