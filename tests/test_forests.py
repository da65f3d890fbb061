"""Forest students (lgbm, forest, tree) on a tiny cache labelled by a rule-based fake teacher."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import optuna
import pytest

from students.base import DevSet, Student
from students.forests import ForestStudent, LGBMStudent
from students.registry import available_students, build_student
from transfer.cache import TransferCache, TransferSet, get_or_build_cache
from transfer.tasks import Split

STUDENTS = ("lgbm", "forest", "tree")
# Small and single-threaded: the test machine is shared.
FAST: dict[str, dict[str, Any]] = {
    "lgbm": {"n_estimators": 60, "eval_every": 20, "min_child_samples": 3, "colsample_bytree": 1.0},
    "forest": {"n_estimators": 10, "max_features": 0.5, "min_samples_leaf": 1},
    "tree": {"max_depth": 4, "min_samples_leaf": 2},
}
COMMON = {"n_jobs": 1, "word_max_features": 300, "char_max_features": 300, "min_df": 1}

# Distractors share character n-grams with "good" ("goofy", "gold", "food", "mood"), so only
# n-grams that contain "good" itself separate the teacher's classes.
ADJECTIVES = ["good", "bad", "odd", "plain", "goofy", "golden"]
NOUNS = ["film", "plot", "food", "mood", "gold", "story"]


class RuleTeacher:
    """Logits from word content: class 1 for "good", class 2 (3-class) for "bad", else class 0."""

    def __init__(self, num_labels: int) -> None:
        self.num_labels = num_labels

    @property
    def fingerprint(self) -> str:
        return f"rule-teacher-{self.num_labels}"

    def text_lengths(self, texts: Sequence[str]) -> np.ndarray:
        return np.array([len(t) for t in texts])

    def label_batch(self, texts: Sequence[str]) -> tuple[np.ndarray, None]:
        z = np.zeros((len(texts), self.num_labels), dtype=np.float32)
        for i, text in enumerate(texts):
            words = text.split()
            z[i, 0] = 0.5
            z[i, 1] = 2.0 if "good" in words else -1.0
            if self.num_labels > 2:
                z[i, 2] = 2.5 if "bad" in words else -1.0
            z[i] += 0.1 * (len(words) % 3)  # a per-row shift: argmax and softmax ignore it
        return z, None

    def write_assets(self, directory: Path) -> None:
        directory.mkdir(parents=True, exist_ok=True)


def sentences(n: int, seed: int) -> list[str]:
    rng = np.random.default_rng(seed)
    return [
        f"the {rng.choice(NOUNS)} was {rng.choice(ADJECTIVES)}" + (f" and {rng.choice(NOUNS)}" if i % 2 else "")
        for i in range(n)
    ]


@pytest.fixture(scope="module", params=[2, 3], ids=["2-class", "3-class"])
def cache(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> TransferCache:
    c = request.param
    texts, dev = sentences(160, 0), sentences(40, 1)
    transfer = TransferSet(
        texts=texts,
        labels=np.full(len(texts), -1),
        dev_texts=dev,
        dev_labels=np.zeros(len(dev), dtype=np.int64),
        label_names=["neg", "pos", "bad"][:c],
        task=f"toy{c}",
    )
    return get_or_build_cache(RuleTeacher(c), transfer, tmp_path_factory.mktemp("cache"))


def dev_set(cache: TransferCache) -> DevSet:
    """Dev labels = the teacher's decisions, so the dev score is agreement with the teacher."""
    split = Split(cache.dev_texts, np.asarray(cache.dev_logits).argmax(1))
    return DevSet(split, lambda y, p: float((np.asarray(y) == np.asarray(p)).mean()))


def fitted(name: str, cache: TransferCache, **hparams: Any) -> tuple[ForestStudent, list[tuple[int, float]]]:
    reports: list[tuple[int, float]] = []
    student = build_student(name, **{**COMMON, **FAST[name], **hparams})
    student.fit(cache, dev_set(cache), lambda step, score: reports.append((step, score)))
    assert isinstance(student, ForestStudent)
    return student, reports


def test_registered() -> None:
    assert set(STUDENTS) <= set(available_students())


@pytest.mark.parametrize("name", STUDENTS)
def test_fit_predict_save_load_explain(name: str, cache: TransferCache, tmp_path: Path) -> None:
    student, reports = fitted(name, cache)
    teacher = np.asarray(cache.logits, dtype=np.float32)

    logits = student.predict_logits(cache.texts)
    assert logits.shape == (len(cache), cache.num_labels) and logits.dtype == np.float32
    assert (logits.argmax(1) == teacher.argmax(1)).mean() > 0.9
    assert reports and all(0.0 <= s <= 1.0 for _, s in reports)
    if name == "lgbm":
        assert [s for s, _ in reports] == [20, 40, 60]

    params = student.n_params()
    assert 0 < params.non_embedding < params.total

    loaded = Student.load(student.save(tmp_path / "s"))
    assert type(loaded) is type(student)
    np.testing.assert_array_equal(loaded.predict_logits(cache.dev_texts), student.predict_logits(cache.dev_texts))
    assert loaded.n_params() == params

    # Contributions are additive: bias + sum of per-feature credits = the trees' outputs.
    x = student.features(cache.dev_texts)
    parts, bias = student.contributions(x)
    summed = bias + np.column_stack([np.asarray(p.sum(axis=1)).ravel() for p in parts])
    np.testing.assert_allclose(summed, student.predict_outputs(x), rtol=1e-4, atol=1e-4)
    if name != "lgbm":  # the forest's own predict agrees with our fixed-order mean of its trees
        native = np.asarray(student.models[0].predict(x)).reshape(len(summed), -1)
        np.testing.assert_allclose(student.predict_outputs(x), native, rtol=1e-6, atol=1e-9)

    files = loaded.artifacts(cache.dev_texts)  # type: ignore[attr-defined]
    assert {"top_features.md", "sentences.md"} <= set(files)
    top = files["top_features.md"].split("# Model importances")[0]
    assert "good" in top.split("\n## ")[1][:800]  # among the first rows of the first output's table
    assert "w:" in files["sentences.md"] or "c:" in files["sentences.md"]
    if name == "tree":
        rules = files["tree_rules.txt"]
        assert "|--- " in rules and ("w:good" in rules or "c:good" in rules)


@pytest.mark.parametrize("name", STUDENTS)
def test_search_space_gives_trainable_hparams(name: str, cache: TransferCache) -> None:
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    trial = study.ask()
    hparams = build_student(name).search_space(trial)
    assert hparams and set(hparams) <= set(build_student(name).hparams)
    # The sampled sizes are meant for 67k sentences; shrink the slow ones for a 160-text test.
    shrink = {"n_estimators": 20, "eval_every": 10} if name != "tree" else {}
    student, _ = fitted(name, cache, **{**hparams, **shrink, "n_jobs": 1})
    assert student.predict_logits(cache.dev_texts[:5]).shape == (5, cache.num_labels)


def test_binary_logits_are_symmetric_margins(cache: TransferCache) -> None:
    if cache.num_labels != 2:
        pytest.skip("binary only")
    student, _ = fitted("tree", cache)
    logits = student.predict_logits(cache.dev_texts)
    np.testing.assert_allclose(logits[:, 0], -logits[:, 1])


def test_tree_study_end_to_end_logs_its_explanations(tiny_overrides: list[str]) -> None:
    """A forest student through the real study runner: empty ``hparams`` config, explanations in MLflow."""
    import mlflow

    from studies.config import compose
    from studies.run import run_study

    overrides = [o for o in tiny_overrides if not o.startswith("student.hparams.epochs")]
    result = run_study(compose([*overrides, "student=tree", "study.n_trials=1"]))
    assert result.n_finished == 1 and result.best_run_id
    artifacts = {a.path for a in mlflow.MlflowClient().list_artifacts(result.best_run_id, "explanations")}
    assert {"explanations/top_features.md", "explanations/tree_rules.txt"} <= artifacts


def test_explanations_cost_at_most_a_budget_of_text_output_pairs(cache: TransferCache) -> None:
    """Many outputs (Sara's 56 intents) get fewer explained texts, so explaining never dwarfs training."""
    from students.explain import explain

    student, _ = fitted("lgbm", cache)
    seen: list[int] = []
    original = student.contributions
    student.contributions = lambda x: (seen.append(x.shape[0]), original(x))[1]  # type: ignore[method-assign]
    n_outputs = len(student.output_names())
    explain(student, cache.dev_texts * 10, sample=5, max_texts=200, budget=60)
    assert seen == [max(5, 60 // n_outputs)]
    explain(student, cache.dev_texts * 10, sample=5, max_texts=200, budget=10_000)
    assert seen[-1] == 200  # a large budget leaves max_texts in charge


def test_lgbm_stops_once_dev_stops_improving_and_keeps_its_best_round(cache: TransferCache) -> None:
    student, reports = fitted("lgbm", cache, n_estimators=1000, eval_every=10, early_stop_rounds=30)
    assert isinstance(student, LGBMStudent)
    best_score = max(v for _, v in reports)
    best_step = min(s for s, v in reports if v == best_score)  # ties go to fewer rounds
    last_step = reports[-1][0]
    assert last_step < 1000 and last_step - best_step == 30  # stopped 30 rounds after the best
    assert student.num_iteration == best_step
    assert student.models[-1].booster_.current_iteration() == best_step  # LightGBM keeps trees up to the best
