"""Kept models as MLflow Models: a study's best student and the teacher load as pyfunc, in a fresh process,
through the registry, and behind the real ``mlflow models serve`` scoring server."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import pandas as pd
import pytest
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from students.base import Student
from studies.config import compose
from studies.deploy import deploy
from studies.models import input_texts, predictions_frame, softmax
from studies.run import StudyResult, register_best, run_study
from transfer.errors import KDError

SMALL = ["student=bilstm", "study.n_trials=1", "student.hparams.hidden_size=8", "student.hparams.mlp_dim=8"]
TEXTS = ["the film was great", "this plot was awful and dull", "a", "the music was lovely and the cast superb"]
SERVER_START_S = 180  # a cold `mlflow models serve` on a busy 2-core machine


@dataclass
class Studied:
    root: Path
    uri: str
    overrides: list[str]
    result: StudyResult
    student: Student  # the best trial's plain "student" artifact, loaded the project's way


@pytest.fixture(scope="module")
def studied(make_tiny_overrides, tmp_path_factory: pytest.TempPathFactory) -> Studied:
    root = tmp_path_factory.mktemp("models")
    overrides = [*make_tiny_overrides(root), *SMALL, "tracking.register=kd-tiny-bilstm"]
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(root)
        result = run_study(compose(overrides))
        local = mlflow.artifacts.download_artifacts(
            run_id=result.best_run_id, artifact_path="student", dst_path=str(root / "best")
        )
    student = Student.load(local).with_runtime("cpu")
    return Studied(root, f"sqlite:///{root / 'mlflow.db'}", overrides, result, student)


def expected_frame(studied: Studied, texts: list[str]) -> pd.DataFrame:
    return predictions_frame(studied.student.predict_logits(texts), ["negative", "positive"])


def test_best_student_is_registered_and_loads_as_pyfunc(studied: Studied) -> None:
    assert studied.result.registered == "models:/kd-tiny-bilstm/1"
    mlflow.set_tracking_uri(studied.uri)
    for uri in (f"runs:/{studied.result.best_run_id}/model", studied.result.registered):
        model = mlflow.pyfunc.load_model(uri)
        got = model.predict(pd.DataFrame({"text": TEXTS}))
        pd.testing.assert_frame_equal(got, expected_frame(studied, TEXTS), atol=1e-6)
        assert list(got.columns) == ["label", "p_negative", "p_positive"]
        np.testing.assert_allclose(got[["p_negative", "p_positive"]].sum(axis=1), 1.0)
    info = mlflow.models.get_model_info(f"runs:/{studied.result.best_run_id}/model")
    assert info.signature.inputs.input_types() == [mlflow.types.DataType.string]
    assert info.signature.outputs.input_names() == ["label", "p_negative", "p_positive"]
    assert info.saved_input_example_info is not None


def test_registering_a_best_trial_logged_before_mlflow_models(studied: Studied, monkeypatch) -> None:
    """A study's best trial from before this feature has only its ``student`` folder: it is logged as a Model first."""
    monkeypatch.chdir(studied.root)
    mlflow.set_tracking_uri(studied.uri)
    client = MlflowClient(tracking_uri=studied.uri)
    run_id = str(studied.result.best_run_id)
    client.delete_tag(run_id, "has_pyfunc")
    uri = register_best(run_id, "kd-tiny-older", ["negative", "positive"], TEXTS[:2])
    assert uri == "models:/kd-tiny-older/1"
    assert client.get_run(run_id).data.tags["has_pyfunc"] == "true"
    got = mlflow.pyfunc.load_model(uri).predict(TEXTS)
    pd.testing.assert_frame_equal(got, expected_frame(studied, TEXTS), atol=1e-6)


def test_pyfunc_predicts_in_a_fresh_process(studied: Studied) -> None:
    script = (
        "import json, sys, mlflow\n"
        "model = mlflow.pyfunc.load_model(sys.argv[1])\n"
        "print(json.dumps(model.predict(json.loads(sys.argv[2])).to_dict(orient='list')))\n"
    )
    env = {**os.environ, "MLFLOW_TRACKING_URI": studied.uri}
    out = subprocess.run(
        [sys.executable, "-c", script, f"runs:/{studied.result.best_run_id}/model", json.dumps(TEXTS)],
        capture_output=True, text=True, timeout=240, env=env, cwd=studied.root,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr[-3000:]
    got = pd.DataFrame(json.loads(out.stdout.strip().splitlines()[-1]))
    pd.testing.assert_frame_equal(got, expected_frame(studied, TEXTS), atol=1e-6)


def test_teacher_run_holds_the_teacher_as_pyfunc(studied: Studied, tiny_task) -> None:
    client = MlflowClient(tracking_uri=studied.uri)
    experiment = client.get_experiment_by_name("kd-sst2")
    (teacher_run,) = client.search_runs([experiment.experiment_id], filter_string="tags.role = 'teacher'")
    assert teacher_run.data.tags.get("has_pyfunc") == "true"
    mlflow.set_tracking_uri(studied.uri)
    model = mlflow.pyfunc.load_model(f"runs:/{teacher_run.info.run_id}/model")
    got = model.predict(TEXTS)  # a plain list of strings works too
    assert list(got.columns) == ["label", "p_negative", "p_positive"] and len(got) == len(TEXTS)
    from teachers.model import Teacher

    teacher_dir = next((studied.root / "cache" / "teachers").glob("*/kd_teacher.json")).parent
    logits = Teacher(teacher_dir, max_length=int(compose(["teacher=tiny"]).teacher.max_length)).predict_logits(TEXTS)
    np.testing.assert_allclose(got[["p_negative", "p_positive"]].to_numpy(), softmax(logits), atol=1e-5)


def test_deploy_logs_lean_exports_as_servable_models(studied: Studied, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(studied.root)
    expected = studied.student.predict_logits(TEXTS)
    for export, tolerance in (("folded", 1e-4), ("int8", 0.1)):
        options = [f"deploy.export={export}", "deploy.vocab=all", "deploy.dtype=float32"]
        done = deploy(compose([*studied.overrides, *options]))  # the best trial of the study, found by itself
        assert done.run_id == studied.result.best_run_id and done.model_uri.endswith(f"/model_{export}")
        assert done.size_bytes > 0
        mlflow.set_tracking_uri(studied.uri)
        got = mlflow.pyfunc.load_model(done.model_uri).predict(TEXTS)
        np.testing.assert_allclose(got[["p_negative", "p_positive"]].to_numpy(), softmax(expected), atol=tolerance)
        metrics = MlflowClient(tracking_uri=studied.uri).get_run(done.run_id).data.metrics
        assert metrics[f"size_bytes_{export}"] == done.size_bytes
    with pytest.raises(KDError, match=r"deploy\.export="):
        deploy(compose([*studied.overrides, "deploy.export=onnx"]))


def test_a_teacher_run_from_before_mlflow_models_gets_its_model(studied: Studied, monkeypatch) -> None:
    from studies.pipeline import prepare
    from studies.run import log_teacher_run

    monkeypatch.chdir(studied.root)
    mlflow.set_tracking_uri(studied.uri)
    client = MlflowClient(tracking_uri=studied.uri)
    experiment = client.get_experiment_by_name("kd-sst2")
    (teacher_run,) = client.search_runs([experiment.experiment_id], filter_string="tags.role = 'teacher'")
    client.delete_tag(teacher_run.info.run_id, "has_pyfunc")
    prep = prepare(compose(studied.overrides))
    assert log_teacher_run(prep, "kd-sst2") == teacher_run.info.run_id  # the same run, not a second one
    assert client.get_run(teacher_run.info.run_id).data.tags["has_pyfunc"] == "true"
    assert len(mlflow.pyfunc.load_model(f"runs:/{teacher_run.info.run_id}/model").predict(TEXTS)) == len(TEXTS)


def test_input_texts_accepts_raw_text_and_refuses_the_rest() -> None:
    assert input_texts(pd.DataFrame({"text": ["a", "b"]})) == ["a", "b"]
    assert input_texts(["a", "b"]) == ["a", "b"] == input_texts(pd.Series(["a", "b"]))
    assert input_texts(pd.DataFrame(["a", "b"])) == ["a", "b"]  # a list after MLflow's schema check
    assert input_texts("one") == ["one"]
    with pytest.raises(MlflowException, match=r"expected a column 'text'.*sentence"):
        input_texts(pd.DataFrame({"sentence": ["a"]}))
    with pytest.raises(MlflowException, match=r"expected a string for every text.*row 1"):
        input_texts(["a", 3])
    with pytest.raises(MlflowException, match="expected raw texts"):
        input_texts({"text": "a"})
    frame = predictions_frame(np.array([[0.0, 2.0], [1.0, -1.0]]), ["neg", "pos"])
    assert frame["label"].tolist() == ["pos", "neg"]


def test_register_setting_is_checked_first(tiny_overrides: list[str]) -> None:
    with pytest.raises(KDError, match=r"tracking\.register="):
        run_study(compose([*tiny_overrides, *SMALL, "tracking.register=no spaces allowed"]))


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def post(url: str, body: Any) -> tuple[int, Any]:
    data = body.encode() if isinstance(body, str) else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read() or b"{}")


@pytest.fixture(scope="module")
def server(studied: Studied) -> Any:
    """The real ``mlflow models serve`` on a free loopback port, for the best student; stopped afterwards."""
    port = free_port()
    bin_dir = Path(sys.executable).parent  # the server execs `uvicorn` from PATH: this environment's
    env = {**os.environ, "MLFLOW_TRACKING_URI": studied.uri, "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}"}
    mlflow_cli = bin_dir / "mlflow"
    command = [str(mlflow_cli), "models", "serve", "-m", f"runs:/{studied.result.best_run_id}/model",
               "--env-manager", "local", "-h", "127.0.0.1", "-p", str(port), "-w", "1"]  # fmt: skip
    log = open(studied.root / "serve.log", "wb")  # noqa: SIM115 - closed below
    proc = subprocess.Popen(command, env=env, cwd=studied.root, stdout=log, stderr=subprocess.STDOUT,
                            start_new_session=True)  # fmt: skip
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + SERVER_START_S
    try:
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                with urllib.request.urlopen(f"{base}/ping", timeout=2) as response:
                    if response.status == 200:
                        break
            except OSError:
                time.sleep(0.5)
        else:  # the server died or never answered: a failure, with what it said
            tail = (studied.root / "serve.log").read_text(errors="replace")[-2000:]
            state = f"exited with {proc.returncode}" if proc.poll() is not None else f"silent for {SERVER_START_S} s"
            pytest.fail(f"mlflow models serve {state}: {tail}")
        yield base
    finally:
        stop(proc)
        log.close()


def stop(proc: subprocess.Popen) -> None:
    """End the server and the workers it started (its own session), and nothing else."""
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def test_served_answers_equal_in_process_predictions(server: str, studied: Studied) -> None:
    status, body = post(f"{server}/invocations", {"dataframe_records": [{"text": t} for t in TEXTS]})
    assert status == 200, body
    got = pd.DataFrame(body["predictions"])
    pd.testing.assert_frame_equal(got, expected_frame(studied, TEXTS), atol=1e-6)
    status, body = post(f"{server}/invocations", {"inputs": TEXTS[:2]})  # a plain list of texts
    assert status == 200, body
    assert [row["label"] for row in body["predictions"]] == expected_frame(studied, TEXTS[:2])["label"].tolist()


@pytest.mark.parametrize(
    "body",
    [
        "{not json",
        {"dataframe_records": [{"sentence": "a column the model does not know"}]},
        {"dataframe_records": [{"text": 3}]},
        {"something": "else"},
    ],
    ids=["not-json", "wrong-column", "not-a-string", "unknown-format"],
)
def test_malformed_requests_get_a_clear_4xx(server: str, body: Any) -> None:
    status, answer = post(f"{server}/invocations", body)
    assert 400 <= status < 500, (status, answer)
    assert answer.get("message"), answer
    assert urllib.request.urlopen(f"{server}/ping", timeout=5).status == 200  # still serving


def test_logging_a_model_keeps_mlflows_pickling_advice_off_the_terminal(
    studied: Studied, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Every trial logs a model: MLflow's advice against pickling would repeat per trial, and does not apply."""
    import logging

    from studies.models import log_text_model

    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'hints.db'}")
    mlflow.set_experiment("hints")
    with caplog.at_level("WARNING"), mlflow.start_run():
        info = log_text_model(studied.root / "best" / "student", ["negative", "positive"], TEXTS)
    assert info.model_uri
    assert not [r for r in caplog.records if "Passing a Python object" in r.getMessage()]
    assert not logging.getLogger("mlflow.pyfunc").filters  # the filter was only for that call
