"""How a study spends its trials: sampler, pruner, known-good first trials, and a speed constraint.

A 2-core CPU cannot afford large random searches, so each trial has to count:

- ``study.pruner=hyperband`` runs successive halving over epochs (Li et al. 2018): many
  configurations get one epoch, the better third gets three, and so on, instead of every poor
  configuration training to the end (``median`` prunes only against the median so far).
- ``study.enqueue_defaults=true`` makes the first trial of a new study the student's defaults
  (the literature's recipe), so TPE starts from a known-good point rather than from chance.
- ``study.warm_start=K`` also queues the K best trials (on dev) of the student's other studies
  against the same teacher, once, when a study begins: a study with a new constraint, a new way
  of timing or a larger transfer set starts from what earlier searches found best, re-measured
  under its own rules. (One teacher key means one task and one dev split, so their dev scores rank.)
- ``study.min_speedup=N`` makes "at least N× faster than the teacher at batch 1" a constraint
  (Optuna's constrained TPE): the best trial is the best *feasible* one, so the search finds the
  student that is both accurate and fast instead of the largest model in the space.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from students.search_space import recorded_space
from transfer.fingerprint import hash_json

CONSTRAINT_ATTR = "constraints"  # Optuna's constrained samplers read "≤ 0 is feasible" values from here


def sampler_seed(seed: int, study_name: str = "", trial_number: int = 0) -> int:
    """The sampler's seed for one trial: the students' seed, the study and the trial's number.

    Seeded by ``seed`` alone, every study of a student would draw the same random start-up
    configurations, a resumed study would draw its first sitting's again (a warm-started study
    re-ran the very trial it was given), and workers opening one study together would all run
    the same configuration. Trial numbers are handed out by the storage, once each, so mixing in
    the study's name and the trial's number keeps every draw reproducible and new.
    """
    return int(hash_json({"seed": int(seed), "study": study_name, "trial": int(trial_number)}, length=8), 16)


class PerTrialSeeded(optuna.samplers.BaseSampler):
    """A sampler rebuilt before each trial with ``sampler_seed(seed, study, trial number)``.

    Optuna seeds a sampler once per process, so two processes on one study (or two sittings of
    it) replay one random stream. Rebuilding from the trial's number is cheap: TPE and random
    keep no state between trials beyond their random stream; the history is read from the study.
    """

    def __init__(self, build: Callable[[int], optuna.samplers.BaseSampler], seed: int, study_name: str) -> None:
        self._build, self._seed, self._study_name = build, seed, study_name
        self._inner = build(sampler_seed(seed, study_name))

    @property
    def inner(self) -> optuna.samplers.BaseSampler:
        return self._inner

    def before_trial(self, study: optuna.Study, trial: FrozenTrial) -> None:
        self._inner = self._build(sampler_seed(self._seed, self._study_name, trial.number))
        self._inner.before_trial(study, trial)

    def infer_relative_search_space(self, study: optuna.Study, trial: FrozenTrial) -> dict[str, Any]:
        return self._inner.infer_relative_search_space(study, trial)

    def sample_relative(self, study: optuna.Study, trial: FrozenTrial, search_space: dict[str, Any]) -> dict[str, Any]:
        return self._inner.sample_relative(study, trial, search_space)

    def sample_independent(
        self, study: optuna.Study, trial: FrozenTrial, param_name: str, param_distribution: Any
    ) -> Any:
        return self._inner.sample_independent(study, trial, param_name, param_distribution)

    def after_trial(
        self, study: optuna.Study, trial: FrozenTrial, state: TrialState, values: Sequence[float] | None
    ) -> None:
        self._inner.after_trial(study, trial, state, values)

    def reseed_rng(self) -> None:
        self._inner.reseed_rng()


def make_sampler(cfg: Any, study_name: str = "") -> PerTrialSeeded:
    """TPE (constrained when ``study.min_speedup`` is set) or random, seeded per trial (``PerTrialSeeded``)."""
    if cfg.study.sampler == "random":
        return PerTrialSeeded(lambda seed: optuna.samplers.RandomSampler(seed=seed), int(cfg.seed), study_name)
    constraints = constraint_values if min_speedup(cfg) else None

    def tpe(seed: int) -> optuna.samplers.BaseSampler:
        return optuna.samplers.TPESampler(seed=seed, n_startup_trials=4, constraints_func=constraints)

    return PerTrialSeeded(tpe, int(cfg.seed), study_name)


def make_pruner(cfg: Any) -> optuna.pruners.BasePruner:
    """``median`` (default), ``hyperband`` (successive halving over epochs) or ``none``."""
    kind = cfg.study.pruner
    if kind == "none":
        return optuna.pruners.NopPruner()
    if kind == "hyperband":
        # steps are epochs (students report once per epoch); max_resource "auto" = the longest seen
        return optuna.pruners.HyperbandPruner(min_resource=1, max_resource="auto", reduction_factor=3)
    return optuna.pruners.MedianPruner(n_startup_trials=2, n_warmup_steps=1)


def min_speedup(cfg: Any) -> float | None:
    value = cfg.study.get("min_speedup")
    return float(value) if value else None


def constraint_values(trial: FrozenTrial) -> Sequence[float]:
    """Optuna's constraint callback: what the objective stored (a trial without one is infeasible)."""
    return tuple(trial.user_attrs.get(CONSTRAINT_ATTR, (math.inf,)))


def record_constraint(trial: optuna.Trial, speedup: float, required: float | None) -> None:
    """Store ``required − speedup`` (≤ 0 = fast enough) for the sampler and for choosing the best trial."""
    if required:
        trial.set_user_attr(CONSTRAINT_ATTR, (required - speedup,))


def feasible(trial: FrozenTrial) -> bool:
    """True unless the trial recorded a violated constraint (studies without one: every trial)."""
    return all(v <= 0 for v in trial.user_attrs.get(CONSTRAINT_ATTR, ()))


def best_feasible(trials: Sequence[FrozenTrial]) -> FrozenTrial | None:
    """The complete trial with the highest value among those meeting the constraint (first of equals)."""
    complete = [t for t in trials if t.state == TrialState.COMPLETE and t.value is not None and feasible(t)]
    return max(complete, key=lambda t: t.value) if complete else None


def enqueue_defaults(study: optuna.Study, student_cls: Any, fixed: dict[str, Any], extras: Sequence[str]) -> bool:
    """On a study with no trial yet, queue one with the student's defaults for every searched value in range.

    Values outside the declared range (or not among the choices) are left to the sampler.
    Returns whether a trial was queued.
    """
    if study.get_trials(deepcopy=False):
        return False
    params = _in_space(student_cls.searched_defaults(fixed), recorded_space(student_cls, extras, fixed))
    if not params:
        return False
    study.enqueue_trial(params, user_attrs={"enqueued": "defaults"}, skip_if_exists=True)
    return True


def _in_space(values: dict[str, Any], space: dict[str, Any]) -> dict[str, Any]:
    """The searched parameters whose ``values`` lie in the space (in range, or among the choices)."""
    params: dict[str, Any] = {}
    for name, spec in space.items():
        if name not in values:
            continue
        value = values[name]
        if spec.kind == "categorical":
            if value in spec.choices:
                params[name] = value
        elif isinstance(value, (int, float)) and not isinstance(value, bool) and spec.low <= value <= spec.high:
            params[name] = value
    return params


def enqueue_earlier_best(
    study: optuna.Study,
    storage: Any,
    student_cls: Any,
    cache_key: str,
    fixed: dict[str, Any],
    extras: Sequence[str],
    k: int,
) -> list[str]:
    """Queue the ``k`` best complete trials (on dev) of this student's other studies on ``cache_key``,
    or against the same teacher (the ``teacher_key`` ``open_study`` records) on any transfer set:
    a 4× search seeds the 8× one.

    Done once per study (``warm_started`` records what was queued, so a resumed study does not
    queue again). A trial's values come from its full hyper-parameters, so a value another study
    fixed (e.g. ``hidden_size``) comes along where this study searches it; values this study fixes
    or cannot represent are left to it. Returns ``"<study>#<trial>"`` for each queued trial.
    """
    if k <= 0 or study.user_attrs.get("warm_started") is not None:
        return []
    space = recorded_space(student_cls, extras, fixed)
    teacher_key = study.user_attrs.get("teacher_key") or ""
    candidates: list[tuple[float, str, FrozenTrial]] = []
    for summary in optuna.get_all_study_summaries(storage, include_best_trial=False):
        attrs = dict(summary.user_attrs)
        same_student = (attrs.get("setup") or {}).get("student") == student_cls.name
        same_teacher = bool(teacher_key) and attrs.get("teacher_key") == teacher_key
        if summary.study_name == study.study_name or not same_student:
            continue
        if attrs.get("cache_key") != cache_key and not same_teacher:
            continue
        other = optuna.load_study(study_name=summary.study_name, storage=storage)
        for trial in other.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
            if trial.value is not None:
                candidates.append((float(trial.value), summary.study_name, trial))
    queued: list[str] = []
    for _, name, trial in sorted(candidates, key=lambda c: -c[0]):
        if len(queued) >= k:
            break
        hparams = trial.user_attrs.get("hparams")
        params = _in_space({**(hparams if isinstance(hparams, dict) else {}), **trial.params}, space)
        if params:
            origin = f"{name}#{trial.number}"
            study.enqueue_trial(params, user_attrs={"enqueued": origin}, skip_if_exists=True)
            queued.append(origin)
    study.set_user_attr("warm_started", queued)
    return queued
