"""Faults a long distributed study meets, each provoked for real and each recovered from.

kill -9 of a worker mid-trial and mid-labelling, a corrupted cache, a diverging trial, two
workers racing for the same new cache, workers racing on a fresh database, and a trial
orphaned before its first heartbeat (docs/distributed.md lists how each is handled). The
study-level tests reuse the session's tiny teacher (conftest) so no test fine-tunes again.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import optuna
import pytest
from fault_helpers import BATCH_SIZE, RecordingLabeler, fault_transfer_set
from mlflow.tracking import MlflowClient

from studies import search, workers
from studies.config import compose
from studies.pipeline import prepare
from studies.run import main, run_study
from transfer.cache import STATS, TransferCache, cache_key, get_or_build_cache
from transfer.errors import KDError

HELPER = Path(__file__).with_name("fault_helpers.py")
REPO = Path(__file__).resolve().parents[1]
FAST = [
    "student.hparams.hidden_size=16",
    "student.hparams.mlp_dim=16",
    "tracking.latency_samples=3",
    "tracking.log_models=none",
]


def child_env(**extra: str) -> dict[str, str]:
    """The environment of a child process: this one's, with the repository and tests/ importable."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), str(HELPER.parent), env.get("PYTHONPATH")) if p)
    env.update(extra)
    return env


def wait_for(condition: Callable[[], bool], timeout: float, proc: subprocess.Popen | None = None) -> None:
    """Poll ``condition`` every 20 ms; fail (showing the child's output) if it exits or time runs out."""
    deadline = time.monotonic() + timeout
    while not condition():
        if proc is not None and proc.poll() is not None:
            out = proc.stdout.read() if proc.stdout else ""
            pytest.fail(f"child exited with {proc.returncode} before the fault could be injected:\n{out[-3000:]}")
        if time.monotonic() > deadline:
            if proc is not None:
                proc.kill()
            pytest.fail(f"condition not met within {timeout}s")
        time.sleep(0.02)


def kill_9(proc: subprocess.Popen) -> None:
    """SIGKILL the child's whole process group: no handler, no cleanup, like an OOM kill."""
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(30)
    assert proc.returncode == -signal.SIGKILL


# -- the transfer cache, across processes --------------------------------------------------------


def test_kill_9_while_labelling_never_exposes_a_half_cache_and_resumes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fresh_stats: Any
) -> None:
    root = tmp_path / "transfer"
    transfer = fault_transfer_set()
    key = cache_key(RecordingLabeler.fingerprint, transfer)
    partial = root / f"{key}.partial"

    def done_chunks() -> list[Path]:
        return sorted(partial.glob("train_chunk?????.npz"))  # not *.tmp.npz: those are half-written

    env = child_env(KD_CACHE_CHUNK_SIZE="16", FAULT_LABELER_SLEEP="0.05")
    proc = subprocess.Popen(
        [sys.executable, str(HELPER), "build", str(root)],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    wait_for(lambda: len(done_chunks()) >= 2, timeout=60, proc=proc)
    kill_9(proc)

    kept = len(done_chunks())
    assert 2 <= kept < 8  # 120 training texts = 8 chunks of 16: killed part-way
    assert not (root / key).exists()  # nothing that looks like a cache
    assert not list(root.rglob("manifest.json"))
    with pytest.raises(KDError, match="no manifest"):
        TransferCache(partial)

    monkeypatch.setenv("KD_CACHE_CHUNK_SIZE", "16")
    labeler = RecordingLabeler()
    cache = get_or_build_cache(labeler, transfer, root, batch_size=BATCH_SIZE)
    assert STATS.passes == 1
    assert STATS.examples == len(transfer.texts) + len(transfer.dev_texts) - 16 * kept  # kept chunks reused
    assert not partial.exists() and cache.path == root / key

    clean = get_or_build_cache(RecordingLabeler(), transfer, tmp_path / "clean", batch_size=BATCH_SIZE)
    for name in ("labels", "logits", "activations", "dev_labels", "dev_logits", "dev_activations"):
        np.testing.assert_array_equal(getattr(cache, name), getattr(clean, name), err_msg=name)
    assert cache.manifest["checksums"] == clean.manifest["checksums"]


def test_two_workers_on_a_new_cache_make_one_teacher_pass(tmp_path: Path) -> None:
    root = tmp_path / "transfer"
    calls = tmp_path / "label_batch_calls.log"
    go = tmp_path / "go"
    script = (
        "import json, sys, time, pathlib\n"
        "from fault_helpers import build\n"
        "print('ready', flush=True)\n"
        f"while not pathlib.Path({str(go)!r}).exists(): time.sleep(0.001)\n"
        f"print(json.dumps(build({str(root)!r})), flush=True)\n"
    )
    env = child_env(FAULT_LABELER_LOG=str(calls), FAULT_LABELER_SLEEP="0.01")
    procs = [
        subprocess.Popen([sys.executable, "-c", script], cwd=tmp_path, env=env, stdout=subprocess.PIPE, text=True)
        for _ in range(2)
    ]
    for proc in procs:  # both imported and waiting: release them at the same moment
        assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
    go.touch()
    results = []
    for proc in procs:
        out, _ = proc.communicate(timeout=120)
        assert proc.returncode == 0, out
        results.append(json.loads(out.strip().splitlines()[-1]))

    assert {r["path"] for r in results} == {str(root / cache_key(RecordingLabeler.fingerprint, fault_transfer_set()))}
    assert sorted(r["passes"] for r in results) == [0, 1]  # one labelled, the other waited and read
    lines = calls.read_text().split()
    pids, sizes = set(lines[0::2]), [int(n) for n in lines[1::2]]
    transfer = fault_transfer_set()
    assert len(pids) == 1
    assert sum(sizes) == len(transfer.texts) + len(transfer.dev_texts)  # every text labelled exactly once


# -- the study pipeline, with the session's tiny teacher ------------------------------------------


def teacher_overrides(finetune_config: Any) -> list[str]:
    """Overrides that make ``teacher=tiny`` resolve to the session's tiny teacher (same cache key)."""
    fields = finetune_config.key_fields()
    tiny = fields.pop("tiny")
    seed = fields.pop("seed")

    def value(v: Any) -> str:
        return str(v).lower() if isinstance(v, bool) else str(v)

    return [
        f"seed={seed}",
        *(f"teacher.{k}={value(v)}" for k, v in fields.items()),
        *(f"teacher.tiny.{k}={value(v)}" for k, v in tiny.items()),
    ]


@pytest.fixture(scope="module")
def pipeline_root(
    tmp_path_factory: pytest.TempPathFactory, tiny_teacher: Any, tiny_teacher_root: Path, tiny_finetune_config: Any
) -> tuple[Path, list[str]]:
    """A cache folder whose teachers/ is the session's (linked, only read) and whose transfer/ is built here.

    Returns the cache folder and the overrides that make ``teacher=tiny`` the session's teacher.
    """
    cache_dir = tmp_path_factory.mktemp("fault_pipeline") / "cache"
    cache_dir.mkdir()
    (cache_dir / "teachers").symlink_to(tiny_teacher_root / "teachers", target_is_directory=True)
    return cache_dir, teacher_overrides(tiny_finetune_config)


def study_overrides(root: Path, data_dir: Path, cache_dir: Path, teacher: list[str], *extra: str) -> list[str]:
    """A fast, isolated study: Optuna and MLflow under ``root``, the session's teacher, caches in ``cache_dir``."""
    return [
        "teacher=tiny",
        f"data.dir={data_dir}",
        f"cache_dir={cache_dir}",
        f"study.storage=sqlite:///{root / 'optuna.db'}",
        f"tracking.uri=sqlite:///{root / 'mlflow.db'}",
        "progress=false",
        "student.hparams.epochs=1",
        *FAST,
        *teacher,
        *extra,
    ]


def flip_bytes(path: Path) -> None:
    data = bytearray(path.read_bytes())
    middle = len(data) // 2
    data[middle : middle + 4] = bytes(b ^ 0xFF for b in data[middle : middle + 4])
    path.write_bytes(bytes(data))


def truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


@pytest.mark.parametrize(
    ("file", "damage"),
    [("train_logits.npy", flip_bytes), ("dev_activations.npy", truncate), ("manifest.json", truncate)],
    ids=["flipped-logits", "truncated-activations", "truncated-manifest"],
)
def test_corrupted_cache_is_detected_logged_and_rebuilt_by_the_pipeline(
    file: str,
    damage: Callable[[Path], None],
    tmp_path: Path,
    tiny_data_dir: Path,
    pipeline_root: tuple[Path, list[str]],
    mlflow_template_db: Path,
    caplog: pytest.LogCaptureFixture,
    fresh_stats: Any,
) -> None:
    shared, teacher = pipeline_root
    pristine = prepare(compose(study_overrides(tmp_path, tiny_data_dir, shared, teacher))).cache  # built once
    # damage a private copy, never the shared cache
    root = tmp_path / "cache"
    (root / "transfer").mkdir(parents=True)
    (root / "teachers").symlink_to(shared / "teachers", target_is_directory=True)
    shutil.copytree(pristine.path, root / "transfer" / pristine.key)
    damage(root / "transfer" / pristine.key / file)
    passes = STATS.passes

    with caplog.at_level("WARNING", logger="transfer.cache"):
        rebuilt = prepare(compose(study_overrides(tmp_path, tiny_data_dir, root, teacher))).cache
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert any(file in message for message in warnings), warnings
    assert STATS.passes == passes + 1  # labelled again, once
    assert rebuilt.path == root / "transfer" / pristine.key
    TransferCache(rebuilt.path)  # verifies every checksum
    assert len(list((root / "transfer").glob(f"{pristine.key}.corrupt-*"))) == 1  # kept aside for a post-mortem
    for name in ("logits", "activations", "dev_logits", "dev_activations"):
        np.testing.assert_array_equal(getattr(rebuilt, name), getattr(pristine, name), err_msg=name)


def test_non_finite_loss_prunes_the_trial_with_its_reason_and_the_study_goes_on(
    tmp_path: Path,
    tiny_data_dir: Path,
    pipeline_root: tuple[Path, list[str]],
    mlflow_template_db: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.chdir(tmp_path)
    shutil.copyfile(mlflow_template_db, tmp_path / "mlflow.db")
    # every trial distils the logits (kd/mse weights fixed), and trial 1 gets NaN teacher logits
    overrides = study_overrides(
        tmp_path,
        tiny_data_dir,
        *pipeline_root,
        "study.n_trials=3",
        "study.name=faults-nan",
        "study.pruner=none",
        "student.hparams.kd_weight=1.0",
        "student.hparams.mse_weight=1.0",
    )
    real_make_objective = search.make_objective

    def poisoned_make_objective(prep: Any, *args: Any, **kwargs: Any) -> Callable[[optuna.Trial], float]:
        objective = real_make_objective(prep, *args, **kwargs)

        def run(trial: optuna.Trial) -> float:
            if trial.number != 1:
                return objective(trial)
            with monkeypatch.context() as m:
                nan = np.full(np.shape(prep.cache.logits), np.nan, dtype=np.float32)
                m.setattr(TransferCache, "logits", property(lambda self: nan))
                return objective(trial)

        return run

    monkeypatch.setattr(search, "make_objective", poisoned_make_objective)
    result = run_study(compose(overrides))

    study = optuna.load_study(study_name="faults-nan", storage=f"sqlite:///{tmp_path / 'optuna.db'}")
    trials = {t.number: t for t in study.get_trials()}
    assert trials[1].state == optuna.trial.TrialState.PRUNED
    assert "non-finite loss" in trials[1].user_attrs["fail_reason"]
    assert trials[0].state == trials[2].state == optuna.trial.TrialState.COMPLETE  # the study went on
    assert result.n_finished == 3 and result.best_trial in (0, 2)
    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")
    run = client.get_run(trials[1].user_attrs["mlflow_run_id"])
    assert "non-finite loss" in run.data.tags["prune_reason"]
    assert run.data.tags["state"] == "pruned" and run.info.status == "FINISHED"  # pruned, not failed


def query(db: Path, sql: str) -> list[tuple[Any, ...]]:
    """Rows of ``sql`` on the Optuna SQLite file, read-only (no lock held on the worker's database)."""
    if not db.exists():
        return []
    try:
        with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5) as conn:
            return conn.execute(sql).fetchall()
    except sqlite3.OperationalError:  # tables not created yet
        return []


def trial_states(db: Path) -> dict[int, str]:
    """number → state of every trial."""
    return dict(query(db, "SELECT number, state FROM trials"))


def training_trials(db: Path) -> list[int]:
    """RUNNING trials already inside the objective (sampled, with an MLflow run): killing now is mid-training."""
    sql = (
        "SELECT t.number FROM trials t JOIN trial_user_attributes a ON a.trial_id = t.trial_id "
        "WHERE t.state = 'RUNNING' AND a.key = 'mlflow_run_id'"
    )
    return [row[0] for row in query(db, sql)]


def test_kill_9_mid_trial_then_the_same_command_resumes_and_retries(
    tmp_path: Path,
    tiny_data_dir: Path,
    pipeline_root: tuple[Path, list[str]],
    mlflow_template_db: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    shutil.copyfile(mlflow_template_db, tmp_path / "mlflow.db")
    arguments = [
        *study_overrides(
            tmp_path,
            tiny_data_dir,
            *pipeline_root,
            "study.n_trials=3",
            "study.name=faults-kill",
            "study.heartbeat_interval=1",
            "study.sampler=random",
            "study.pruner=none",
        ),
    ]
    db = tmp_path / "optuna.db"
    with open(tmp_path / "first.log", "w") as log:
        first = subprocess.Popen(
            [sys.executable, "-m", "studies.run", *arguments],
            cwd=tmp_path,
            env=child_env(),
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def one_complete_one_training() -> bool:
        return "COMPLETE" in trial_states(db).values() and bool(training_trials(db))

    try:
        wait_for(one_complete_one_training, timeout=240, proc=first)
    except BaseException:
        print((tmp_path / "first.log").read_text()[-3000:])
        raise
    kill_9(first)
    before = trial_states(db)
    killed = next(n for n, s in before.items() if s == "RUNNING")
    completed = {n for n, s in before.items() if s == "COMPLETE"}
    study = optuna.load_study(study_name="faults-kill", storage=f"sqlite:///{db}")
    kept = {t.number: (t.value, t.datetime_complete) for t in study.get_trials() if t.number in completed}

    # the same command again (in this process: its imports are paid already); its heartbeat check
    # finds the dead worker's trial stale, fails it and re-queues it
    monkeypatch.chdir(tmp_path)
    assert main(arguments) == 0

    trials = {t.number: t for t in optuna.load_study(study_name="faults-kill", storage=f"sqlite:///{db}").get_trials()}
    done = optuna.trial.TrialState
    assert {n: (trials[n].value, trials[n].datetime_complete) for n in completed} == kept  # completed work kept
    assert trials[killed].state == done.FAIL  # the dead worker's trial, failed once its heartbeat went stale
    retries = [t for t in trials.values() if t.system_attrs.get("failed_trial") == killed]
    assert len(retries) == 1 and retries[0].state == done.COMPLETE
    assert retries[0].params == trials[killed].params  # the same hyper-parameters, tried again
    assert sum(t.state in (done.COMPLETE, done.PRUNED) for t in trials.values()) == 3
    assert not [t for t in trials.values() if t.state == done.RUNNING]
    dead_run = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}").get_run(
        trials[killed].user_attrs["mlflow_run_id"]
    )
    assert dead_run.info.status == "FAILED" and "worker died" in dead_run.data.tags["fail_reason"]


def test_trial_orphaned_before_its_first_heartbeat_is_failed_and_requeued(tmp_path: Path) -> None:
    storage = workers.make_storage(f"sqlite:///{tmp_path / 'optuna.db'}", heartbeat_interval=1)
    study = optuna.create_study(study_name="orphan", storage=storage, direction="maximize")
    study.tell(study.ask({"x": optuna.distributions.FloatDistribution(0, 1)}), 0.5)
    orphan = study.ask({"x": optuna.distributions.FloatDistribution(0, 1)})  # RUNNING, never a heartbeat
    assert workers.trial_counts(study) == (1, 1)
    assert not workers.needs_more_trials(study, target=2, poll=0.2, deadline=time.monotonic() + 0.5)  # others' trial

    time.sleep(2.2)  # past the grace period (2 × heartbeat_interval)
    assert workers.needs_more_trials(study, target=2, poll=0.2)
    trials = study.get_trials()
    assert trials[orphan.number].state == optuna.trial.TrialState.FAIL
    retry = trials[-1]
    assert retry.state == optuna.trial.TrialState.WAITING and retry.system_attrs["failed_trial"] == orphan.number
    assert retry.params == trials[orphan.number].params


def _open_in_child(url: str, key: str, start_at: float, results: Any) -> None:
    """A worker's first steps on the shared database: open the storage, create/load the study, claim its cache key."""
    from omegaconf import OmegaConf

    cfg = OmegaConf.create({"seed": 0, "study": {"sampler": "random", "pruner": "none"}, "task": {"name": "t"}})
    while time.time() < start_at:
        time.sleep(0.0005)
    try:
        setup = search.study_setup("bilstm", {}, [])
        search.open_study("race", workers.make_storage(url, heartbeat_interval=5), cfg, key, setup, "dev_accuracy")
        results.put((key, "ok"))
    except KDError as err:
        results.put((key, f"refused: {err}"))
    except Exception as err:  # a crash: the race this test is about
        results.put((key, f"crashed: {err!r}"))


def test_workers_starting_together_on_a_fresh_database_meet_in_one_study(tmp_path: Path) -> None:
    import multiprocessing

    url = f"sqlite:///{tmp_path / 'fresh.db'}"
    context = multiprocessing.get_context("fork")  # the imports are paid already
    results = context.Queue()
    keys = ["key-a", "key-a", "key-b"]  # the last worker was started with another configuration
    start_at = time.time() + 1.0
    children = [context.Process(target=_open_in_child, args=(url, key, start_at, results)) for key in keys]
    for child in children:
        child.start()
    outcomes = [results.get(timeout=120) for _ in children]
    for child in children:
        child.join(30)

    assert not [o for o in outcomes if o[1].startswith("crashed")], outcomes
    recorded = optuna.load_study(study_name="race", storage=url).user_attrs["cache_key"]
    assert sorted(k for k, o in outcomes if o == "ok") == sorted(k for k in keys if k == recorded)
    assert all("was run on transfer cache" in o for k, o in outcomes if k != recorded)
