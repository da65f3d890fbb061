"""Configuration: Hydra overrides, clear errors for unknown options, --help, fixed hyper-parameters."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import optuna
import pytest

from students.registry import available_students, get_student_class
from students.search_space import sample_hparams
from studies.config import compose, group_options, to_dict
from transfer.errors import KDError

REPO_ROOT = Path(__file__).resolve().parents[1]


def test_defaults() -> None:
    cfg = compose()
    assert cfg.task.name == "sst2" and cfg.teacher.name == "minilm" and cfg.student.name == "bilstm"
    assert cfg.study.n_trials == 8 and cfg.study.name is None and cfg.data.limit is None


def test_overrides_are_applied(tmp_path: Path) -> None:
    cfg = compose(
        [
            "task=trec",
            "student=bilstm",
            "teacher=tiny",
            "teacher.name=some-org/some-bert",
            "teacher.epochs=0.5",
            "study.n_trials=3",
            "study.name=my-study",
            f"study.storage=sqlite:///{tmp_path / 'o.db'}",
            f"data.dir={tmp_path}",
            "data.limit=100",
            "seed=7",
            "student.hparams.hidden_size=64",
            "student.hparams.pooling=mean",
        ]
    )
    assert cfg.task.name == "trec"
    assert cfg.student.name == "bilstm"
    assert cfg.teacher.name == "some-org/some-bert"
    assert cfg.teacher.epochs == 0.5
    assert cfg.teacher.tiny.hidden == 32  # the rest of the tiny teacher group came along
    assert cfg.study.n_trials == 3 and cfg.study.name == "my-study"
    assert cfg.study.storage == f"sqlite:///{tmp_path / 'o.db'}"
    assert cfg.data.dir == str(tmp_path) and cfg.data.limit == 100
    assert cfg.seed == 7
    # new keys under student.hparams need no '+' prefix, and the group's own hparams stay
    assert to_dict(cfg.student)["hparams"] == {"hidden_size": 64, "pooling": "mean"}


def test_existing_hparam_is_overridden_and_plus_prefix_still_works() -> None:
    assert compose(["student.hparams.epochs=1"]).student.hparams.epochs == 1
    assert compose(["++student.hparams.dropout=0.1"]).student.hparams.dropout == 0.1
    assert compose(["+student.hparams.mlp_dim=32"]).student.hparams.mlp_dim == 32


def test_env_defaults_for_data_and_cache(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("KD_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("KD_CACHE_DIR", str(tmp_path / "cache"))
    cfg = compose()
    assert cfg.data.dir == str(tmp_path / "data") and cfg.cache_dir == str(tmp_path / "cache")
    assert compose([f"data.dir={tmp_path}"]).data.dir == str(tmp_path)


@pytest.mark.parametrize(
    ("override", "choices"),
    [
        ("student=transformer-xl", available_students()),
        ("task=imdb", group_options("task")),
        ("teacher=gpt", group_options("teacher")),
    ],
)
def test_unknown_group_option_lists_choices(override: str, choices: list[str]) -> None:
    group, value = override.split("=")
    with pytest.raises(KDError) as info:
        compose([override])
    message = str(info.value)
    assert f"unknown {group} {value!r}" in message and "\n" not in message
    assert choices and all(choice in message for choice in choices)


def test_unknown_key_and_unparsable_argument_are_kderrors() -> None:
    with pytest.raises(KDError, match="bad configuration override"):
        compose(["study.n_trails=3"])
    with pytest.raises(KDError, match="expected key=value"):
        compose(["bilstm"])


def test_help_lists_students_and_tasks() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "studies.run", "--help"],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("usage: python -m studies.run")
    students_line = next(line for line in out.stdout.splitlines() if line.startswith("students:"))
    assert all(name in students_line for name in available_students())
    assert "sst2" in out.stdout and "tiny" in out.stdout


def test_fixed_hparams_are_not_sampled() -> None:
    student_cls = get_student_class("bilstm")
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    trial = study.ask()
    hparams = sample_hparams(student_cls, trial, {"hidden_size": 64, "lr": 0.01, "epochs": 1})
    assert "hidden_size" not in trial.params and "lr" not in trial.params
    assert hparams["hidden_size"] == 64 and hparams["lr"] == 0.01 and hparams["epochs"] == 1
    # everything else is still searched
    assert {"pooling", "mlp_dim", "dropout", "batch_size", "kd_weight"} <= set(trial.params)
    assert all(hparams[name] == value for name, value in trial.params.items())

    free = study.ask()
    sampled = sample_hparams(student_cls, free, {})
    assert "hidden_size" in free.params and sampled["hidden_size"] == free.params["hidden_size"]


def test_search_objectives_add_extra_terms_to_neural_search_spaces() -> None:
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    plain = study.ask()
    sample_hparams(get_student_class("bilstm"), plain, {})
    assert "nst_weight" not in plain.params and "ab_weight" not in plain.params
    extended = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0)).ask()
    hparams = sample_hparams(get_student_class("cnn"), extended, {}, ("nst", "ab"))
    assert {"nst_weight", "ab_weight"} <= set(extended.params)
    assert hparams["nst_weight"] == extended.params["nst_weight"] > 0
    assert compose(["study.search_objectives=[hidden,noise]"]).study.search_objectives == ["hidden", "noise"]


def test_every_student_config_yields_its_fixed_hyper_parameters() -> None:
    from studies.run import fixed_hparams

    for name in group_options("student"):
        fixed = fixed_hparams(compose([f"student={name}"]).student)
        assert isinstance(fixed, dict) and "name" not in fixed and "hparams" not in fixed
    assert fixed_hparams(compose(["student=lgbm", "student.hparams.n_estimators=100"]).student) == {"n_estimators": 100}
    assert fixed_hparams(compose(["student=chain"]).student)["links"] == ["bert", "bilstm"]


def test_a_comparison_speed_floor_must_be_student_speed_up_pairs() -> None:
    from studies.validate import check_settings

    assert check_settings(compose(["compare.min_speedup={bilstm:10}"])) == []
    (bad,) = check_settings(compose(["compare.min_speedup=10"]))
    assert bad.startswith("compare.min_speedup=10:") and "{bilstm:10}" in bad
    (negative,) = check_settings(compose(["compare.min_speedup={bilstm:0}"]))
    assert "positive" in negative
    (misspelt,) = check_settings(compose(["compare.min_speedup={bilstn:10}"]))
    assert "unknown student(s) bilstn" in misspelt and "bilstm" in misspelt
