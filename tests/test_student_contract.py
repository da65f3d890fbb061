"""One contract every registered student must meet, like scikit-learn's ``parametrize_with_checks``.

Adding a student type touches its own file, one registry line and one YAML file, plus one entry
in ``CONFIGS`` below: forgetting that entry fails ``test_every_registered_student_has_a_config``.
The checks: ``fit`` returns the student, logits have the right shape and are finite, save → load
gives the same predictions and parameter counts, the counts are consistent, and every name the
search space samples is a hyper-parameter the student understands (so it can also be fixed).
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import numpy as np
import optuna
import pytest

from students.base import Student
from students.registry import available_students, get_student_class
from students.search_space import recorded_space, sample_hparams
from transfer.cache import TransferCache

# Tiny, fast configurations: one per registered student type (the contract's test configuration).
CONFIGS: dict[str, dict[str, Any]] = {
    "bilstm": {"hidden_size": 8, "mlp_dim": 8, "epochs": 1, "max_length": 16},
    "cnn": {"n_filters": 4, "mlp_dim": 8, "widths": "2,3", "epochs": 1, "max_length": 16},
    "bert": {"init": "random", "num_layers": 1, "hidden_size": 16, "num_heads": 2, "intermediate_size": 32,
             "epochs": 1, "max_length": 16},
    "chain": {"links": ["cnn", "bilstm"], "epochs": 1, "max_length": 16, "link0.n_filters": 4,
              "link0.widths": "2,3", "link1.hidden_size": 8},
    "lgbm": {"n_estimators": 5, "word_max_features": 200, "num_leaves": 4},
    "forest": {"n_estimators": 3, "word_max_features": 200, "char_max_features": 0, "max_depth": 4},
    "tree": {"word_max_features": 200, "char_max_features": 0, "max_depth": 3},
}  # fmt: skip


def test_every_registered_student_has_a_config() -> None:
    missing = sorted(set(available_students()) - set(CONFIGS))
    assert not missing, f"registered students without a contract-test configuration: {missing}"
    unknown = sorted(set(CONFIGS) - set(available_students()))
    assert not unknown, f"configurations for students that are not registered: {unknown}"


@pytest.fixture(scope="module")
def contract_cache(tiny_cache, tmp_path_factory: pytest.TempPathFactory) -> TransferCache:
    """A private copy of the tiny cache (a chain writes its assistants' caches beside it)."""
    root = tmp_path_factory.mktemp("contract")
    shutil.copytree(tiny_cache.path, root / tiny_cache.path.name)
    return TransferCache(root / tiny_cache.path.name)


@pytest.fixture(scope="module", params=sorted(CONFIGS))
def fitted(request: pytest.FixtureRequest, contract_cache: TransferCache) -> tuple[str, Student, Student]:
    name = request.param
    student = get_student_class(name)(**CONFIGS[name]).with_runtime("cpu")
    returned = student.fit(contract_cache)
    return name, student, returned


def test_fit_returns_the_student(fitted: tuple[str, Student, Student]) -> None:
    _, student, returned = fitted
    assert returned is student


def test_logits_shape_and_finite(fitted: tuple[str, Student, Student], tiny_task) -> None:
    _, student, _ = fitted
    texts = [*tiny_task.test.texts[:5], "great", ""]
    logits = student.predict_logits(texts)
    assert logits.shape == (len(texts), tiny_task.num_labels) and np.isfinite(logits).all()
    assert (student.predict(texts) == logits.argmax(1)).all()


def test_save_load_gives_equal_predictions(fitted: tuple[str, Student, Student], tiny_task, tmp_path: Path) -> None:
    name, student, _ = fitted
    loaded = Student.load(student.save(tmp_path / name))
    assert type(loaded) is type(student)
    texts = tiny_task.test.texts
    assert np.allclose(loaded.predict_logits(texts), student.predict_logits(texts), atol=1e-5)
    assert loaded.n_params() == student.n_params()
    assert "progress" not in loaded.hparams and "device" not in loaded.hparams


def test_parameter_counts(fitted: tuple[str, Student, Student]) -> None:
    _, student, _ = fitted
    count = student.n_params()
    assert 0 < count.non_embedding <= count.total


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_search_space_keys_are_hyper_parameters(name: str) -> None:
    student_cls = get_student_class(name)
    for extras in ((), ("hidden", "nst", "ab", "noise")):
        assert not student_cls.unknown_hparams(list(recorded_space(student_cls, extras)))
        study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=1))
        sampled = sample_hparams(student_cls, study.ask(), {}, extras)
        assert not student_cls.unknown_hparams(list(sampled))


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_test_configuration_uses_only_known_names(name: str) -> None:
    assert not get_student_class(name).unknown_hparams(list(CONFIGS[name]))
