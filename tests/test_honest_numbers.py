"""Regression tests for "honest numbers": select on dev, report on test, and the defects that skewed comparisons.

Each test names the defect it guards against; each failed on the code before the fix.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import optuna
import pytest
import torch
from mlflow.tracking import MlflowClient

from students.bilstm import BiLSTMModule
from students.objectives import DistillationObjective, ObjectiveConfig
from students.registry import get_student_class
from studies.config import compose
from transfer.cache import CacheCorrupted, TransferCache, get_or_build_cache
from transfer.errors import KDError
from transfer.fingerprint import hash_texts
from transfer.transfer_set import make_transfer_set

# -- device= is obeyed -----------------------------------------------------------------------------


def test_neural_student_obeys_device_cpu_even_when_a_gpu_is_present(
    tiny_cache, monkeypatch: pytest.MonkeyPatch
) -> None:
    """device=cpu on a GPU machine used to move neural students to CUDA anyway."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    student = get_student_class("bilstm")(hidden_size=8, mlp_dim=8, epochs=1, max_length=16).with_runtime("cpu")
    assert student.device == torch.device("cpu")
    student.fit(tiny_cache)  # would fail trying to reach a GPU that is not there
    assert next(student.module.parameters()).device.type == "cpu"
    auto = get_student_class("cnn")().with_runtime(None)
    assert auto.device.type == "cuda"  # auto still means "a GPU when present"


def test_runtime_settings_are_not_hyper_parameters(tmp_path: Path) -> None:
    """progress= used to enter student.json, hence a chain link's fingerprint and cache key."""
    student = get_student_class("bilstm")(progress=True, device="cpu", hidden_size=8)
    assert "progress" not in student.hparams and "device" not in student.hparams


# -- learned projections, always -------------------------------------------------------------------


@pytest.mark.parametrize("term", ["hidden", "nst", "ab"])
def test_projection_is_learned_even_when_widths_match(term: str) -> None:
    """Equal widths (BiLSTM 2×192 = MiniLM 384) used to get an identity: unit i had to copy teacher unit i."""
    objective = DistillationObjective(ObjectiveConfig(**{f"{term}_weight": 1.0}), student_dim=8, teacher_dim=8)
    projection = getattr(objective, f"{term}_proj")
    assert isinstance(projection, torch.nn.Linear) and projection.weight.requires_grad


def test_ab_margin_can_be_met_by_bounded_student_activations() -> None:
    """A BiLSTM's outputs lie in (-1, 1): the hinge at μ=1 is only reachable through the learned projection."""
    torch.manual_seed(0)
    student = torch.tanh(torch.randn(32, 6))  # bounded, like LSTM outputs
    teacher = student @ torch.randn(6, 6) * 3  # a teacher the student's features can express
    objective = DistillationObjective(ObjectiveConfig(kd_weight=0.0, ab_weight=1.0, ab_margin=1.0), 6, 6)
    batch = {
        "teacher_logits": torch.zeros(32, 2),
        "labels": torch.full((32,), -1),
        "teacher_activations": teacher[:, None, :],
    }
    from students.objectives import StudentOutput

    out = StudentOutput(logits=torch.zeros(32, 2), sentence=student)
    first, _ = objective(out, batch)
    optimiser = torch.optim.Adam(objective.parameters(), lr=0.05)
    for _ in range(1000):
        loss, _ = objective(out, batch)
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
    assert float(loss) < 0.1 * float(first)
    with pytest.raises(ValueError, match="ab_margin"):
        DistillationObjective(ObjectiveConfig(ab_weight=1.0, ab_margin=0.0), 6, 6)


# -- BiLSTM 'last' pooling --------------------------------------------------------------------------


def test_bilstm_last_pooling_takes_each_directions_own_final_state() -> None:
    """'last' used to read the backward direction at the last token: its state after [SEP] alone, a constant."""
    torch.manual_seed(0)
    module = BiLSTMModule(20, 2, 8, 0, hidden_size=4, num_layers=1, pooling="last", mlp_dim=4, dropout=0.0).eval()
    # two sentences that differ only in their first real token, padded to different lengths
    ids = torch.tensor([[5, 7, 9, 3, 0, 0], [6, 7, 9, 3, 0, 0], [5, 7, 9, 3, 11, 3]])
    mask = (ids != 0).long()
    with torch.no_grad():
        sentence = module(ids, mask).sentence
        forward_half, backward_half = sentence[:, :4], sentence[:, 4:]
        assert not torch.allclose(backward_half[0], backward_half[1])  # the backward state saw the first token
        # the same computation by hand on the unpadded sentence
        x = module.embedding(ids[:1, :4])
        states, _ = module.lstm(x)
        assert torch.allclose(forward_half[0], states[0, -1, :4], atol=1e-6)
        assert torch.allclose(backward_half[0], states[0, 0, 4:], atol=1e-6)


# -- the cache: held-out sentences, manifest coverage, key hashing ----------------------------------


def test_text_hash_cannot_collide_on_separator_characters() -> None:
    """Separator-delimited hashing made ["a", "b"] and ["a\\x00\\x01b"] hash alike."""
    assert hash_texts(["a", "b"]) != hash_texts(["a\x00\x01b"])
    assert hash_texts(["a", "b"], [0, 1]) != hash_texts(["a\x000\x01b"], [1])
    assert hash_texts(["ab"]) != hash_texts(["a", "b"]) and hash_texts([]) != hash_texts([""])


@pytest.mark.parametrize("victim", ["assets/embeddings.npy", "assets/tokenizer/tokenizer.json", "test_logits.npy"])
def test_manifest_covers_every_file_assets_included(tiny_cache, tmp_path: Path, victim: str) -> None:
    """The manifest used to skip the tokenizer, embeddings.npy and the teacher model folder."""
    import shutil

    copy = tmp_path / tiny_cache.path.name
    shutil.copytree(tiny_cache.path, copy)
    assert any(name.startswith("assets/teacher_model/") for name in TransferCache(copy).manifest["checksums"])
    target = copy / victim
    data = bytearray(target.read_bytes())
    data[len(data) // 2] ^= 0xFF
    target.write_bytes(bytes(data))
    with pytest.raises(CacheCorrupted, match=victim.split("/")[-1]):
        TransferCache(copy)


def test_cache_labels_test_once_for_reporting(tiny_cache, tiny_task) -> None:
    assert tiny_cache.test_texts == tiny_task.test.texts
    assert tiny_cache.test_logits is not None and tiny_cache.test_logits.shape == (len(tiny_task.test), 2)


def test_teacher_seed_is_its_own(make_tiny_overrides, tmp_path: Path) -> None:
    """seed= (the students') used to re-fine-tune the teacher: a new cache and a new study for every seed."""
    from studies.pipeline import planned_teacher

    base = make_tiny_overrides(tmp_path)
    assert planned_teacher(compose([*base, "seed=0"])) == planned_teacher(compose([*base, "seed=7"]))
    assert planned_teacher(compose([*base, "teacher.seed=7"])) != planned_teacher(compose(base))


# -- settings checked before any work -------------------------------------------------------------


def _no_work_done(root: Path) -> bool:
    return not (root / "cache" / "teachers").exists() or not any((root / "cache" / "teachers").iterdir())


@pytest.mark.parametrize(
    ("override", "expected"),
    [
        ("study.n_trials=-1", "study.n_trials"),
        ("student.hparams.hidden_size=abc", "hidden_size: expected an integer"),
        ("student.hparams.hiden_size=64", "valid names: "),
        ("study.search_objectives=[hiden]", "search_objectives"),
        ("device=gpu", "device"),
    ],
)
def test_bad_settings_fail_before_the_teacher_is_touched(
    tiny_overrides: list[str], tmp_path: Path, override: str, expected: str
) -> None:
    """n_trials=-1 used to start fine-tuning; a misspelt fixed value was silently ignored."""
    from studies.run import run_study

    with pytest.raises(KDError, match=expected.replace("[", r"\[")):
        run_study(compose([*tiny_overrides, override]))
    assert _no_work_done(tmp_path)


def test_misspelt_fixed_name_lists_the_valid_ones(tiny_overrides: list[str]) -> None:
    from studies.run import run_study

    with pytest.raises(KDError) as info:
        run_study(compose([*tiny_overrides, "student.hparams.hiden_size=64"]))
    message = str(info.value)
    assert "'hiden_size'" in message and "hidden_size" in message.split("valid names:")[1]


def test_compare_without_a_matching_study_says_so_first(tiny_overrides: list[str], tmp_path: Path) -> None:
    """studies.compare used to fine-tune a teacher and label a cache before saying "no Optuna study"."""
    from studies.compare import compare

    with pytest.raises(KDError, match="no Optuna study"):
        compare(compose(tiny_overrides))
    assert _no_work_done(tmp_path)


def test_compare_retrains_on_seeds_the_search_never_used() -> None:
    """The trial's own seed is the lucky draw it was selected for."""
    from studies.compare import seeds_of

    cfg = compose(["compare.seeds=3"])
    assert seeds_of(cfg, used=[0]) == [1000, 1001, 1002]
    assert seeds_of(cfg, used=[1000, 0]) == [1001, 1002, 1003]
    with pytest.raises(KDError, match="already trained with"):
        seeds_of(compose(["compare.seeds=[0,5]"]), used=[0])


# -- the study: identity, pruning, per-epoch curves, dead workers -----------------------------------


def _cfg(tiny_overrides: list[str], *extra: str) -> Any:
    return compose([*tiny_overrides, *extra])


def test_changed_fixed_settings_get_their_own_study(tiny_overrides: list[str]) -> None:
    """Changing student.hparams / search_objectives used to top up the same study, mixing set-ups."""
    from studies.run import default_study_name, fixed_hparams
    from studies.search import study_setup

    def name(*extra: str) -> str:
        cfg = _cfg(tiny_overrides, *extra)
        setup = study_setup("bilstm", fixed_hparams(cfg.student), list(cfg.study.search_objectives))
        return default_study_name(cfg, "tiny", "abcdef123", setup)

    names = {name(), name("student.hparams.hidden_size=8"), name("study.search_objectives=[hidden]")}
    assert len(names) == 3


def test_study_refuses_another_setup_under_the_same_name(tiny_overrides: list[str], tmp_path: Path) -> None:
    from studies.search import open_study, study_setup

    cfg = _cfg(tiny_overrides)
    storage = optuna.storages.RDBStorage(f"sqlite:///{tmp_path / 's.db'}")
    open_study("s", storage, cfg, "key", study_setup("bilstm", {"epochs": 1}, []), "dev_accuracy")
    with pytest.raises(KDError, match="mix set-ups"):
        open_study("s", storage, cfg, "key", study_setup("bilstm", {"epochs": 2}, []), "dev_accuracy")
    study = optuna.load_study(study_name="s", storage=storage)
    assert study.metric_names == ["dev_accuracy"]  # the dashboard names the metric, not "Objective 0"


class _AlwaysPrune:
    """A trial stand-in whose pruner always says prune."""

    def __init__(self) -> None:
        self.reports: list[tuple[int, float]] = []

    def report(self, value: float, step: int) -> None:
        self.reports.append((step, value))

    def should_prune(self) -> bool:
        return True


def test_one_shot_students_are_never_pruned_after_their_work(tmp_path: Path, monkeypatch) -> None:
    """Forests and trees report once, after all trees are grown: pruning then threw their result away."""
    from studies.search import pruning_reporter

    monkeypatch.chdir(tmp_path)
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'm.db'}")
    mlflow.set_experiment("prune")
    assert not get_student_class("tree").reports_while_training
    assert not get_student_class("forest").reports_while_training
    assert get_student_class("lgbm").reports_while_training and get_student_class("bilstm").reports_while_training
    with mlflow.start_run():
        trial = _AlwaysPrune()
        pruning_reporter(trial, "dev_accuracy", prunable=False)(1, 0.5)  # no exception
        assert trial.reports == [(1, 0.5)]
        with pytest.raises(optuna.TrialPruned):
            pruning_reporter(trial, "dev_accuracy", prunable=True)(1, 0.5)


def test_without_progress_bars_each_report_is_one_line(tmp_path: Path, monkeypatch, capsys) -> None:
    """Benchmarks run with progress=false into a log: a 9-minute trial used to print nothing until it ended."""
    from studies.search import pruning_reporter

    monkeypatch.chdir(tmp_path)
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'm.db'}")
    mlflow.set_experiment("echo")
    with mlflow.start_run():
        trial = _AlwaysPrune()
        trial.number = 3
        pruning_reporter(trial, "dev_accuracy", prunable=False)(1, 0.5)
        assert capsys.readouterr().out == ""  # progress bars on: no extra lines
        pruning_reporter(trial, "dev_accuracy", prunable=False, echo=True)(2, 0.75)
        assert capsys.readouterr().out == "  trial 3 step 2: dev_accuracy=0.7500\n"


def test_pruned_trial_run_is_finished_and_says_pruned(tmp_path: Path, monkeypatch) -> None:
    """Pruned trials used to be listed as FAILED in MLflow."""
    from studies.search import trial_run

    monkeypatch.chdir(tmp_path)
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'm.db'}")
    mlflow.set_experiment("pruned")
    study = optuna.create_study()
    trial = study.ask()
    with mlflow.start_run(), pytest.raises(optuna.TrialPruned), trial_run(trial, "bilstm", {}):
        raise optuna.TrialPruned("pruned at step 1")
    run = MlflowClient().get_run(trial.user_attrs["mlflow_run_id"])
    assert run.info.status == "FINISHED" and run.data.tags["state"] == "pruned"
    assert run.data.tags["mlflow.runName"] == "bilstm-trial-0 (pruned)"
    failing = study.ask()
    with mlflow.start_run(), pytest.raises(RuntimeError), trial_run(failing, "bilstm", {}):
        raise RuntimeError("boom")
    assert MlflowClient().get_run(failing.user_attrs["mlflow_run_id"]).info.status == "FAILED"


def test_two_workers_deciding_together_do_not_overshoot(tmp_path: Path) -> None:
    """Two workers that both saw "one trial left" used to run one trial more than study.n_trials."""
    from studies.workers import OverTarget, check_under_target

    study = optuna.create_study(storage=f"sqlite:///{tmp_path / 'o.db'}")
    done = study.ask()
    study.tell(done, 0.5)
    first, second = study.ask(), study.ask()  # both started when one trial was left
    check_under_target(first, target=2)  # the earlier-numbered one goes on
    with pytest.raises(OverTarget):
        check_under_target(second, target=2)
    assert "skipped" in second.user_attrs["fail_reason"]


def test_dead_workers_study_run_is_closed(tmp_path: Path, monkeypatch) -> None:
    """A killed worker's study run used to stay RUNNING forever."""
    from studies.workers import close_dead_study_runs

    monkeypatch.chdir(tmp_path)
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'm.db'}")
    experiment = mlflow.set_experiment("dead")
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    client = MlflowClient()
    tags = {"role": "study", "study_name": "s", "worker": f"{socket.gethostname()}:{dead.pid}"}
    run = client.create_run(experiment.experiment_id, tags=tags)
    me = f"{socket.gethostname()}:{os.getpid()}"
    alive = client.create_run(experiment.experiment_id, tags={**tags, "worker": me})
    close_dead_study_runs(experiment.experiment_id, "s")
    assert client.get_run(run.info.run_id).info.status == "KILLED"
    assert client.get_run(alive.info.run_id).info.status == "RUNNING"


def test_stale_trial_handler_closes_the_dead_workers_study_run(tmp_path: Path, monkeypatch) -> None:
    from studies.workers import StaleTrialHandler

    monkeypatch.chdir(tmp_path)
    uri = f"sqlite:///{tmp_path / 'm.db'}"
    mlflow.set_tracking_uri(uri)
    mlflow.set_experiment("stale")
    with mlflow.start_run() as parent, mlflow.start_run(nested=True) as child:
        parent_id, child_id = parent.info.run_id, child.info.run_id
    client = MlflowClient()
    for run_id in (parent_id, child_id):  # as a killed worker leaves them
        client.update_run(run_id, status="RUNNING")
    study = optuna.create_study(storage=f"sqlite:///{tmp_path / 'o.db'}")
    trial = study.ask()
    trial.set_user_attr("mlflow_run_id", child_id)
    study._storage.set_trial_state_values(trial._trial_id, state=optuna.trial.TrialState.FAIL)
    StaleTrialHandler(1, uri)(study, study.trials[0])
    assert client.get_run(child_id).info.status == "FAILED"
    assert client.get_run(parent_id).info.status == "KILLED"


# -- a real tiny study: the headline metric, test figures and the closing line ----------------------


@pytest.fixture(scope="module")
def tiny_study(make_tiny_overrides, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    from studies.run import describe, run_study

    root = tmp_path_factory.mktemp("honest_study")
    overrides = [
        *make_tiny_overrides(root),
        "study.n_trials=2",
        "student.hparams.hidden_size=8",
        "student.hparams.mlp_dim=8",
        "student.hparams.epochs=3",
        "student.hparams.patience=3",
        "study.pruner=none",
    ]
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(root)
        result = run_study(compose(overrides))
        text = describe(result)
    client = MlflowClient(tracking_uri=f"sqlite:///{root / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("kd-sst2")
    runs = client.search_runs([experiment.experiment_id], max_results=100)
    return {"result": result, "text": text, "runs": runs, "client": client, "root": root}


def test_headline_metric_is_the_final_models_not_the_last_epochs(tiny_study: dict[str, Any]) -> None:
    """The final dev_accuracy used to be logged at step 0 below per-epoch values at steps 1..n,
    so the UI's column showed the last epoch's value instead of the model's."""
    client = tiny_study["client"]
    study = optuna.load_study(
        study_name=tiny_study["result"].study_name, storage=f"sqlite:///{tiny_study['root'] / 'optuna.db'}"
    )
    for trial in study.get_trials(states=(optuna.trial.TrialState.COMPLETE,)):
        run_id = trial.user_attrs["mlflow_run_id"]
        history = client.get_metric_history(run_id, "dev_accuracy")
        assert len(history) == 1 and history[0].value == pytest.approx(trial.value)
        assert len(client.get_metric_history(run_id, "epoch_dev_accuracy")) >= 1


def test_every_model_logs_dev_and_test_figures(tiny_study: dict[str, Any]) -> None:
    wanted = {"dev_accuracy", "dev_agreement", "test_accuracy", "test_agreement", "share_of_teacher"}
    for run in tiny_study["runs"]:
        if run.data.tags.get("role") in ("teacher", "trial") and run.data.tags.get("state") != "pruned":
            assert wanted <= set(run.data.metrics), run.data.tags.get("mlflow.runName")


def test_trial_latency_ratio_is_measured_beside_the_teacher(tiny_study: dict[str, Any]) -> None:
    """latency_ratio_teacher used to divide by a teacher figure taken minutes earlier under other load."""
    for run in tiny_study["runs"]:
        if run.data.tags.get("role") == "trial":
            m = run.data.metrics  # the median of per-round ratios (teacher and student timed in each round)
            assert m["latency_ratio_teacher_q25"] <= m["latency_ratio_teacher"] <= m["latency_ratio_teacher_q75"]
            assert m["teacher_latency_ms_b1"] > 0 and m["latency_ms_b1"] > 0


def test_closing_line_reports_test_beside_the_teachers_test(tiny_study: dict[str, Any]) -> None:
    text = tiny_study["text"]
    assert "chosen on dev_accuracy=" in text
    assert "test_accuracy=" in text and "vs the teacher's test_accuracy=" in text


# -- students learn, objective terms pull toward the teacher ----------------------------------------


@pytest.mark.parametrize(
    ("name", "hparams"),
    [
        ("bilstm", {"hidden_size": 16, "mlp_dim": 16}),
        ("cnn", {"n_filters": 16, "mlp_dim": 16, "widths": "2,3"}),
        ("bert", {"init": "random", "num_layers": 1, "hidden_size": 32, "num_heads": 2, "intermediate_size": 64}),
    ],
)
def test_each_neural_student_learns_a_separable_task(name: str, hparams: dict[str, Any], tiny_cache, tiny_task):
    """Shape checks alone pass for a student that learns nothing: this one needs it well above chance."""
    student = get_student_class(name)(
        **hparams, epochs=8, batch_size=16, lr=5e-3, patience=8, ce_weight=0.5, max_length=16, seed=0
    )
    student.fit(tiny_cache)
    predictions = student.predict(tiny_task.test.texts)
    accuracy = float((predictions == tiny_task.test.labels).mean())
    assert accuracy >= 0.8, f"{name} reached only {accuracy:.2f} on a task a bag of words separates"


@pytest.mark.parametrize("term", ["kd", "mse", "hidden", "nst", "ab"])
def test_each_objective_term_moves_the_student_toward_the_teacher(term: str, tiny_cache) -> None:
    """Training on one term alone must bring the student's logits closer to the teacher's than at start."""
    weights = {"kd_weight": 0.0, f"{term}_weight": 1.0} if term != "kd" else {"kd_weight": 1.0}
    student = get_student_class("bilstm")(
        hidden_size=16, mlp_dim=16, epochs=5, patience=5, batch_size=16, lr=5e-3, max_length=16, seed=0, **weights
    )
    untrained = get_student_class("bilstm")(
        hidden_size=16, mlp_dim=16, epochs=0, batch_size=16, max_length=16, seed=0, **weights
    )
    untrained.fit(tiny_cache)
    student.with_runtime("cpu").fit(tiny_cache)
    teacher = np.asarray(tiny_cache.logits, dtype=np.float32)
    texts = tiny_cache.texts
    if term in ("hidden", "nst", "ab"):
        # Representation terms act through a learned projection onto the teacher's layer. On a tiny
        # *random* teacher, no similarity index (linear CKA, a cross-validated linear probe) rises
        # reliably with them: it fell for some seeds and rose for others when this data changed.
        # What holds for any teacher: the term alone is what is optimised (its loss falls epoch
        # over epoch) and it moves the encoder, not only the projection.
        losses = [e["train_loss"] for e in student.history.epochs]
        assert losses[-1] < losses[0] and losses == sorted(losses, reverse=True), losses
        assert not np.allclose(student.sentence_representations(texts), untrained.sentence_representations(texts))
        return
    before = float(np.mean((untrained.predict_logits(texts) - teacher) ** 2))
    after = float(np.mean((student.predict_logits(texts) - teacher) ** 2))
    agree_before = float((untrained.predict(texts) == teacher.argmax(1)).mean())
    agree_after = float((student.predict(texts) == teacher.argmax(1)).mean())
    assert after < before or agree_after > agree_before


def test_make_transfer_set_keeps_test_out_of_training(tiny_task) -> None:
    ts = make_transfer_set(tiny_task)
    assert not set(ts.texts) & set(tiny_task.test.texts)
    assert ts.test_texts == tiny_task.test.texts


def test_rebuilt_cache_has_test_split(tiny_teacher, tiny_task, tmp_path: Path) -> None:
    cache = get_or_build_cache(tiny_teacher, make_transfer_set(tiny_task), tmp_path)
    assert len(cache.test_texts) == len(tiny_task.test)


def test_the_chains_own_config_passes_validation() -> None:
    """``student=chain`` fixes ``links`` as a list (its YAML); the search space names "a,b" strings: both are valid."""
    from studies.config import compose
    from studies.run import fixed_hparams
    from studies.validate import validate

    cfg = compose(["student=chain", "student.hparams.epochs=2"])
    validate(cfg, fixed_hparams(cfg.student))  # raised "links: expected a string" before
    cfg = compose(["student=chain", "student.links=[cnn,bilstm]"])
    validate(cfg, fixed_hparams(cfg.student))


def test_a_skipped_racer_is_one_log_line_without_a_traceback(tmp_path: Path) -> None:
    """Optuna logs a caught OverTarget as a failure with a traceback; the user sees one line that says why."""
    import logging

    from studies.workers import OverTarget, quiet_skipped_trials

    records: list[logging.LogRecord] = []
    handler = logging.Handler()
    handler.emit = records.append  # type: ignore[method-assign]
    optuna_log = logging.getLogger("optuna")
    optuna_log.addHandler(handler)
    try:
        quiet_skipped_trials()
        quiet_skipped_trials()  # idempotent: one filter, not two

        def objective(trial: optuna.Trial) -> float:
            raise OverTarget(trial.number, f"trial {trial.number} skipped: 1 earlier trial covers study.n_trials=1")

        optuna.create_study().optimize(objective, n_trials=1, catch=(OverTarget,))
    finally:
        optuna_log.removeHandler(handler)
    messages = [r.getMessage() for r in records if r.name == "optuna.study._optimize"]
    assert messages == ["trial 0 skipped: 1 earlier trial covers study.n_trials=1 (not a failure)"]
    assert all(r.exc_info is None and r.levelname == "INFO" for r in records)
    filters = logging.getLogger("optuna.study._optimize").filters
    assert sum(type(f).__name__ == "OneLineForSkippedTrials" for f in filters) == 1
