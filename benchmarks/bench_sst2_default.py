"""Benchmark 3: the SST-2 default run — teacher vs best BiLSTM, accuracy share and batch-1 speed-up.

    python -m studies.run student=bilstm          # the default run (first, once)
    python -m benchmarks.bench_sst2_default       # this report

Reads the default study from Optuna, loads the best BiLSTM from its MLflow artifact (no
retraining), re-scores both models on SST-2 dev and times them at batch 1 side by side, in one
process, interleaved. Targets (issue 2): BiLSTM >= 97 % of the teacher's accuracy, >= 10x faster.
"""

from __future__ import annotations

import sys
import tempfile

import mlflow

from benchmarks._common import side_by_side_latency
from students.base import Student
from studies.best import find_studied
from studies.cli import quiet_libraries
from studies.config import compose
from studies.pipeline import prepare
from studies.tracking import default_storage, setup_mlflow


def main(argv: list[str]) -> None:
    quiet_libraries()
    cfg = compose(["student=bilstm", *argv])
    setup_mlflow(cfg.tracking.uri, cfg.tracking.experiment or f"kd-{cfg.task.name}")
    prep = prepare(cfg)  # cached teacher and transfer set: nothing is retrained here
    studied = find_studied(cfg.study.storage or default_storage(), str(cfg.task.name), prep.cache.key, ["bilstm"])
    if not studied.best:
        raise SystemExit("no BiLSTM study on this cache yet: run `python -m studies.run student=bilstm` first")
    best = studied.best[0]
    with tempfile.TemporaryDirectory() as tmp:
        path = mlflow.artifacts.download_artifacts(run_id=best.trial_run_id, artifact_path="student", dst_path=tmp)
        student = Student.load(path)
    task, metric = prep.task, prep.task.metric
    teacher_score = task.score(task.dev.labels, prep.teacher.predict_logits(task.dev.texts).argmax(1))[metric]
    student_score = task.score(task.dev.labels, student.predict(task.dev.texts))[metric]
    latency = side_by_side_latency(
        {"teacher": prep.teacher.predict_logits, "bilstm": student.predict_logits}, task.dev.texts
    )
    total, non_embedding = student.n_params()
    t_total, t_non_embedding = prep.teacher.n_params()
    print(f"study {best.study_name}, best trial #{best.trial_number}")
    print(
        f"dev {metric}: teacher {teacher_score:.4f}, BiLSTM {student_score:.4f} "
        f"-> BiLSTM keeps {100 * student_score / teacher_score:.1f}% of the teacher (target >= 97%)"
    )
    print(
        f"batch-1 CPU latency, interleaved: teacher {latency['teacher']:.2f} ms, BiLSTM {latency['bilstm']:.2f} ms "
        f"-> BiLSTM is {latency['teacher'] / latency['bilstm']:.1f}x faster (target >= 10x)"
    )
    print(
        f"params: teacher {t_total:,} ({t_non_embedding:,} non-embedding), "
        f"BiLSTM {total:,} ({non_embedding:,} non-embedding)"
    )


if __name__ == "__main__":
    main(sys.argv[1:])
