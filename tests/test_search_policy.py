"""How a study spends its trials: known-good first trial, successive halving, and the speed constraint."""

from __future__ import annotations

import math
from pathlib import Path

import optuna
import pytest
from mlflow.tracking import MlflowClient
from omegaconf import OmegaConf
from optuna.distributions import CategoricalDistribution, FloatDistribution
from optuna.trial import TrialState, create_trial

from students.registry import get_student_class
from studies import search_policy
from studies.config import compose
from studies.run import describe, run_study


def _cfg(**study: object) -> object:
    return OmegaConf.create({"seed": 0, "study": {"sampler": "tpe", "pruner": "median", **study}})


def test_first_trial_of_a_new_study_is_the_students_defaults() -> None:
    bilstm = get_student_class("bilstm")
    study = optuna.create_study(direction="maximize")
    assert search_policy.enqueue_defaults(study, bilstm, fixed={}, extras=())
    trial = study.ask()
    sampled = bilstm.search_space(trial, ())
    defaults = bilstm.default_hparams()
    queued = {k for k in trial.params if k in defaults}
    assert queued, "no default value was inside the search space"
    assert all(sampled[k] == defaults[k] for k in queued)
    # a study that already has trials is never given another queued one
    assert not search_policy.enqueue_defaults(study, bilstm, fixed={}, extras=())


def test_a_chains_first_trial_is_each_links_defaults() -> None:
    """The chain's space names parameters link0.*, link1.*: its first trial still gets every link's defaults."""
    from students.search_space import sample_hparams

    chain = get_student_class("chain")
    fixed = {"links": ["bert", "bilstm"], "link0": {"epochs": 2}}
    study = optuna.create_study(direction="maximize")
    assert search_policy.enqueue_defaults(study, chain, fixed=fixed, extras=())
    hparams = sample_hparams(chain, study.ask(), fixed, ())
    for i, link in enumerate(["bert", "bilstm"]):
        defaults = get_student_class(link).default_hparams()
        searched = {k.removeprefix(f"link{i}."): v for k, v in hparams.items() if k.startswith(f"link{i}.")}
        assert searched and all(searched[k] == defaults[k] for k in searched), link
    assert hparams["link0.init"] == "teacher" and hparams["link0"] == {"epochs": 2}


def test_hyperband_stops_poor_configurations_early() -> None:
    """Successive halving over epochs: bad configurations get fewer epochs than good ones."""
    study = optuna.create_study(
        study_name="hyperband-check",  # Hyperband assigns brackets from the name: a random one made this flaky
        direction="maximize",
        sampler=optuna.samplers.RandomSampler(seed=0),
        pruner=search_policy.make_pruner(_cfg(pruner="hyperband")),
    )
    epochs = 9

    def objective(trial: optuna.Trial) -> float:
        quality = trial.suggest_float("quality", 0.0, 1.0)
        score = 0.0
        for epoch in range(1, epochs + 1):
            score = quality * (1 - 0.5**epoch)
            trial.report(score, epoch)
            if trial.should_prune():
                raise optuna.TrialPruned()
        return score

    study.optimize(objective, n_trials=30)
    pruned = study.get_trials(states=(TrialState.PRUNED,))
    complete = study.get_trials(states=(TrialState.COMPLETE,))
    assert pruned and complete
    spent = sum(len(t.intermediate_values) for t in study.trials)
    assert spent < 0.7 * len(study.trials) * epochs  # most configurations stopped well before the end
    mean = lambda trials: sum(t.params["quality"] for t in trials) / len(trials)  # noqa: E731
    assert mean(complete) > mean(pruned)


def _trial(value: float, constraint: float | None) -> optuna.trial.FrozenTrial:
    attrs = {} if constraint is None else {search_policy.CONSTRAINT_ATTR: (constraint,)}
    return create_trial(value=value, params={"x": 0.5}, distributions={"x": FloatDistribution(0, 1)}, user_attrs=attrs)


def test_the_best_trial_is_the_best_one_fast_enough() -> None:
    slow_but_best, fast = _trial(0.95, constraint=3.0), _trial(0.90, constraint=-1.0)
    assert search_policy.best_feasible([slow_but_best, fast]) is fast
    assert search_policy.best_feasible([slow_but_best]) is None
    assert search_policy.best_feasible([_trial(0.8, None), _trial(0.7, None)]).value == 0.8  # unconstrained study
    assert search_policy.constraint_values(_trial(0.5, None)) == (math.inf,)  # nothing recorded: infeasible
    sampler = search_policy.make_sampler(_cfg(min_speedup=10)).inner
    assert isinstance(sampler, optuna.samplers.TPESampler)
    assert sampler._constraints_func is search_policy.constraint_values  # the speed floor reaches the sampler


@pytest.mark.parametrize(
    "bad", ["study.pruner=sha", "study.min_speedup=-2", "study.enqueue_defaults=maybe", "study.warm_start=-1"]
)
def test_bad_policy_settings_are_refused_before_any_work(tiny_overrides: list[str], bad: str) -> None:
    from transfer.errors import KDError

    with pytest.raises(KDError, match=bad.split("=")[0]):
        run_study(compose([*_tree(tiny_overrides), bad]))


def _tree(overrides: list[str]) -> list[str]:
    """The fast study overrides for a tree student (which has no epochs)."""
    return [*(o for o in overrides if not o.startswith("student.hparams.epochs")), "student=tree"]


def test_an_impossible_speed_constraint_leaves_no_best_trial(tiny_overrides: list[str], tmp_path: Path) -> None:
    """min_speedup is part of the study's identity and no trial slower than it can be called best."""
    common = [*_tree(tiny_overrides), "study.n_trials=2"]
    result = run_study(compose([*common, "study.min_speedup=1000000"]))
    assert result.study_name.split("-")[-1].startswith("s")  # its own study, not the plain one's
    assert result.best_trial is None and result.n_finished == 2
    assert "min_speedup" in describe(result)
    study = optuna.load_study(study_name=result.study_name, storage=f"sqlite:///{tmp_path / 'optuna.db'}")
    assert all(not search_policy.feasible(t) for t in study.trials)
    assert study.user_attrs["setup"]["min_speedup"] == 1000000.0
    assert study.user_attrs["setup"]["latency_form"] == "serving"  # not a study timed on the module
    # the parent run holds the trials' score/latency plot
    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")
    files = {a.path for a in client.list_artifacts(result.parent_run_id)}
    assert {"trials_pareto.png", "trials_pareto.html"} <= files


def test_a_comparison_with_a_speed_floor_takes_the_best_fast_enough_trial_over_all_studies() -> None:
    """An unconstrained study's better but slower trial must not stand in for a constrained search's pick."""
    from studies.best import find_studied

    storage = optuna.storages.InMemoryStorage()

    def study(name: str, trials: list[tuple[float, float]]) -> None:
        made = optuna.create_study(study_name=name, storage=storage, direction="maximize")
        made.set_user_attr("cache_key", "c")
        made.set_user_attr("student", "bilstm")
        for value, speedup in trials:
            attrs = {"latency_ratio_teacher": speedup, "hparams": {"hidden": int(100 * value), "seed": 0}}
            made.add_trial(optuna.trial.create_trial(value=value, user_attrs=attrs))

    study("sst2-minilm-bilstm-free", [(0.93, 9.8), (0.90, 12.0)])
    study("sst2-minilm-bilstm-fast", [(0.92, 10.4), (0.91, 11.0)])
    (unconstrained,) = find_studied(storage, "sst2", "c", ["bilstm"]).best
    assert (unconstrained.study_name, unconstrained.value) == ("sst2-minilm-bilstm-free", 0.93)
    (floored,) = find_studied(storage, "sst2", "c", ["bilstm"], {"bilstm": 10}).best
    assert (floored.study_name, floored.value) == ("sst2-minilm-bilstm-fast", 0.92)
    too_fast = find_studied(storage, "sst2", "c", ["bilstm"], {"bilstm": 20})
    assert too_fast.best == [] and "≥ 20× the teacher" in too_fast.missing["bilstm"]


def test_an_ablation_compares_only_the_studies_it_names() -> None:
    """A fixed configuration's row must be that configuration, not another study's better trial."""
    from studies.best import find_studied

    storage = optuna.storages.InMemoryStorage()
    for name, value in (("sara-minilm-cnn-searched", 0.86), ("sara-minilm-cnn-ablated", 0.84)):
        made = optuna.create_study(study_name=name, storage=storage, direction="maximize")
        made.set_user_attr("cache_key", "c")
        made.set_user_attr("student", "cnn")
        made.add_trial(optuna.trial.create_trial(value=value, user_attrs={"hparams": {"hidden_weight": value}}))
    (every,) = find_studied(storage, "sara", "c", ["cnn"]).best
    assert every.study_name == "sara-minilm-cnn-searched"
    (ablated,) = find_studied(storage, "sara", "c", ["cnn"], only=["sara-minilm-cnn-ablated"]).best
    assert (ablated.study_name, ablated.value) == ("sara-minilm-cnn-ablated", 0.84)
    none = find_studied(storage, "sara", "c", ["cnn"], only=["sara-minilm-cnn-elsewhere"])
    assert none.best == [] and none.missing == {"cnn": "no study among compare.studies"}


def _finished(study: optuna.Study, value: float, params: dict, hparams: dict) -> None:
    spaces = {
        "pooling": CategoricalDistribution(["max", "mean", "last"]),
        "lr": FloatDistribution(3e-4, 5e-3, log=True),
    }
    study.add_trial(
        create_trial(
            params=params,
            distributions={k: spaces[k] for k in params},
            value=value,
            user_attrs={"hparams": {**hparams, **params}},
        )
    )


def test_a_new_study_can_start_from_the_best_trials_of_earlier_ones_on_its_cache() -> None:
    """``study.warm_start=K``: the K best (on dev) of the student's other studies on the same cache, once."""
    bilstm = get_student_class("bilstm")
    storage = optuna.storages.InMemoryStorage()

    def study(name: str, cache: str, student: str = "bilstm") -> optuna.Study:
        s = optuna.create_study(study_name=name, storage=storage, direction="maximize")
        s.set_user_attr("cache_key", cache)
        s.set_user_attr("setup", {"student": student})
        return s

    wide = study("wide", "c1")
    _finished(wide, 0.86, {"pooling": "last", "lr": 0.0027}, {"hidden_size": 128})
    _finished(wide, 0.80, {"pooling": "max", "lr": 0.001}, {"hidden_size": 128})
    narrow = study("narrow", "c1")  # hidden_size fixed at 64 there: it comes from the trial's hparams
    _finished(narrow, 0.85, {"pooling": "mean", "lr": 0.002}, {"hidden_size": 64})
    _finished(study("elsewhere", "c2"), 0.99, {"pooling": "max", "lr": 0.002}, {"hidden_size": 192})
    _finished(study("a cnn", "c1", "cnn"), 0.98, {"lr": 0.002}, {})
    new = study("constrained", "c1")
    queued = search_policy.enqueue_earlier_best(new, storage, bilstm, "c1", fixed={}, extras=(), k=2)
    assert queued == ["wide#0", "narrow#0"]  # best on dev first; other caches and students never
    first, second = new.ask(), new.ask()
    one, two = bilstm.search_space(first, ()), bilstm.search_space(second, ())  # the queued values, as sampled
    assert (one["pooling"], one["hidden_size"], one["lr"]) == ("last", 128, 0.0027)
    assert (two["pooling"], two["hidden_size"]) == ("mean", 64)
    assert first.user_attrs["enqueued"] == "wide#0"
    # once per study: a resumed study does not queue them again
    assert search_policy.enqueue_earlier_best(new, storage, bilstm, "c1", fixed={}, extras=(), k=2) == []
    # a value this study fixes is left to it
    fixed = study("fixed", "c1")
    search_policy.enqueue_earlier_best(fixed, storage, bilstm, "c1", fixed={"hidden_size": 64}, extras=(), k=1)
    trial = fixed.ask()
    assert fixed.trials[0].system_attrs["fixed_params"] == {"pooling": "last", "lr": 0.0027}
    assert trial.user_attrs["enqueued"] == "wide#0"


def test_a_study_on_a_larger_transfer_set_starts_from_the_best_of_the_same_teacher() -> None:
    """Another cache of the same teacher (one task, one dev split) counts; another teacher's never does."""
    bilstm = get_student_class("bilstm")
    storage = optuna.storages.InMemoryStorage()

    def study(name: str, cache: str, teacher: str) -> optuna.Study:
        s = optuna.create_study(study_name=name, storage=storage, direction="maximize")
        s.set_user_attr("cache_key", cache)
        s.set_user_attr("teacher_key", teacher)
        s.set_user_attr("setup", {"student": "bilstm"})
        return s

    _finished(study("4x", "c4", "t1"), 0.87, {"pooling": "last", "lr": 0.0027}, {"hidden_size": 128})
    _finished(study("other teacher", "c9", "t2"), 0.95, {"pooling": "max", "lr": 0.002}, {"hidden_size": 192})
    new = study("8x", "c8", "t1")
    assert search_policy.enqueue_earlier_best(new, storage, bilstm, "c8", {}, (), k=2) == ["4x#0"]
    assert bilstm.search_space(new.ask(), ())["pooling"] == "last"
    # a study that recorded no teacher counts only its own cache's studies, as before
    alone = study("8x, no key", "c8", "")
    assert search_policy.enqueue_earlier_best(alone, storage, bilstm, "c8", {}, (), k=2) == []


def test_each_study_sitting_and_worker_draws_its_own_start_up_configurations() -> None:
    """One seed for every study made a warm-started study re-run its queued trial, and a resumed one repeat itself;
    one seed per opening made workers that open a study together run the same configurations."""
    from studies.search import open_study, study_setup

    cfg = OmegaConf.create({"seed": 0, "task": {"name": "t"}, "study": {"sampler": "tpe", "pruner": "median"}})
    storage = optuna.storages.InMemoryStorage()
    setup = study_setup("bilstm", {}, [])

    def first_draws(name: str, n: int = 2, where: optuna.storages.BaseStorage = storage) -> list[float]:
        study = open_study(name, where, cfg, "key", setup, "dev_accuracy")
        draws = []
        for _ in range(n):
            trial = study.ask()
            draws.append(trial.suggest_float("x", 0.0, 1.0))
            study.tell(trial, 0.5)
        return draws

    four_x = first_draws("4x")
    assert four_x[0] not in first_draws("8x")  # another study: other points
    assert not set(first_draws("4x")) & set(four_x)  # resumed: new points, not the first sitting's again
    assert first_draws("4x", where=optuna.storages.InMemoryStorage()) == four_x  # reproducible: same study, same draws

    # two workers open one study before either asks, then take turns: each trial its own point
    shared = optuna.storages.InMemoryStorage()
    workers = [open_study("w", shared, cfg, "key", setup, "dev_accuracy") for _ in range(2)]
    trials = [worker.ask() for worker in workers]
    points = [trial.suggest_float("x", 0.0, 1.0) for trial in trials]
    assert points[0] != points[1]
