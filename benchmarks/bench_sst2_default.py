"""The SST-2 default run: teacher vs best BiLSTM, on test, side by side; writes the README's table.

    python -m studies.run student=bilstm          # the default run (first, once)
    python -m benchmarks.bench_sst2_default       # this report -> benchmarks/results/sst2_default.md

Reads the default study from Optuna (its best trial was chosen on dev), loads that BiLSTM from
its MLflow artifact (no retraining), scores both models on the test split (GLUE's SST-2 dev set,
never used for a choice) and times them at batch 1 side by side, in one process, in alternating
blocks; the BiLSTM is timed in its serving form (``studies.measure.serving_form``, checked
against its own logits), as the results table times it.
Targets (issue 2): BiLSTM >= 97 % of the teacher's test accuracy, >= 10x faster.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import mlflow

from benchmarks._common import REPO, side_by_side_latency
from students.base import Student
from studies.best import find_studied
from studies.cli import quiet_libraries
from studies.config import compose
from studies.measure import serving_form
from studies.pipeline import prepare
from studies.tracking import default_storage, setup_mlflow

OUT = REPO / "benchmarks" / "results" / "sst2_default.md"


def verdict(value: float, target: float) -> str:
    return "met" if value >= target else "not met"


def main(argv: list[str]) -> Path:
    quiet_libraries()
    cfg = compose(["student=bilstm", "progress=false", *argv])
    setup_mlflow(cfg.tracking.uri, cfg.tracking.experiment or f"kd-{cfg.task.name}")
    prep = prepare(cfg)  # cached teacher and transfer set: nothing is retrained here
    studied = find_studied(cfg.study.storage or default_storage(), str(cfg.task.name), prep.cache.key, ["bilstm"])
    if not studied.best:
        raise SystemExit("no BiLSTM study on this cache yet: run `python -m studies.run student=bilstm` first")
    best = studied.best[0]
    with tempfile.TemporaryDirectory() as tmp:
        path = mlflow.artifacts.download_artifacts(run_id=best.trial_run_id, artifact_path="student", dst_path=tmp)
        student = Student.load(path).with_runtime("cpu")
    task, metric = prep.task, prep.task.metric
    teacher_test = prep.teacher_metrics[f"test_{metric}"]
    teacher_dev = prep.teacher_metrics[f"dev_{metric}"]
    test_predictions = student.predict(task.test.texts)  # once: scored and compared with the teacher's
    student_test = task.score(task.test.labels, test_predictions)[metric]
    student_dev = task.score(task.dev.labels, student.predict(task.dev.texts))[metric]
    agreement = float((test_predictions == prep.cache.test_logits.argmax(1)).mean())
    form, serving = serving_form(student, task.dev.texts)  # the form the results table times, checked
    latency = side_by_side_latency({"teacher": prep.teacher.predict_logits, "bilstm": serving}, task.dev.texts)
    total, non_embedding = student.n_params()
    t_total, t_non_embedding = prep.teacher.n_params()
    share = 100 * student_test / teacher_test
    speedup = latency["teacher"] / latency["bilstm"]
    record = prep.teacher.record
    epochs = ", ".join(f"{e['epoch']:.0f}: {e['dev_score']:.4f}" for e in record.get("epochs_scored") or [])
    import optuna
    from optuna.trial import TrialState

    study = optuna.load_study(study_name=best.study_name, storage=cfg.study.storage or default_storage())
    finished = len(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED)))
    lines = [
        f"Study `{best.study_name}` ({finished} of `study.n_trials={cfg.study.n_trials}` trials finished), "
        f"best of its trials chosen on dev (trial #{best.trial_number}); "
        f"teacher epoch chosen on dev: {record.get('chosen_epoch')} (dev {metric} per epoch: {epochs}).",
        "",
        "| | teacher (MiniLM-L6, fine-tuned) | best BiLSTM | ratio |",
        "|---|---|---|---|",
        f"| SST-2 **test** {metric} | {teacher_test:.4f} | {student_test:.4f} | BiLSTM keeps **{share:.1f} %** "
        f"(target ≥ 97 %: {verdict(share, 97)}) |",
        f"| SST-2 dev {metric} (the split choices were made on) | {teacher_dev:.4f} | {student_dev:.4f} | "
        f"{100 * student_dev / teacher_dev:.1f} % |",
        f"| test agreement with the teacher | 1.000 | {agreement:.3f} | |",
        f"| batch-1 CPU latency, side by side (1 thread; the BiLSTM as its {form} form) | "
        f"{latency['teacher']:.2f} ms | {latency['bilstm']:.2f} ms | "
        f"BiLSTM **{speedup:.1f}× faster** (target ≥ 10×: {verdict(speedup, 10)}) |",
        f"| parameters (non-embedding) | {t_total / 1e6:.1f} M ({t_non_embedding / 1e6:.1f} M) | "
        f"{total / 1e6:.1f} M ({non_embedding / 1e6:.2f} M) | |",
        "",
        f"Best hyper-parameters: `{ {k: v for k, v in best.hparams.items() if k != 'seed'} }`.",
    ]
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text("\n".join(lines) + "\n", encoding="utf-8")
    print("\n".join(lines))
    print(f"\nwritten to {OUT}")
    return OUT


if __name__ == "__main__":
    main(sys.argv[1:])
