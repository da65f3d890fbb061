"""Benchmark (issue 3): every student type on SST-2 dev with the default teacher.

    python -m benchmarks.bench_students [students=bilstm,cnn,lgbm,tree,bert,chain] [trials=3]

Runs a small Optuna search per student type (a study already in the default storage is only
topped up), then loads each type's best model from its MLflow artifact — no retraining — and
measures everything side by side in this one process: dev accuracy, % of the teacher,
agreement, parameters, and batch-1 latency in alternating blocks with the teacher's.
``python -m studies.compare`` gives the same table over several seeds when time allows.
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
from studies.evaluate import agreement
from studies.pipeline import prepare
from studies.run import run_study
from studies.tracking import default_storage

# Per-student settings that keep a CPU search affordable on 67k sentences.
STUDENT_OVERRIDES: dict[str, list[str]] = {
    "bilstm": [],
    "cnn": ["student.hparams.epochs=3"],
    "bert": ["student.hparams.epochs=1", "student.hparams.init=teacher", "student.hparams.num_layers=2"],
    "lgbm": [],
    "forest": [],
    "tree": [],
    "chain": ["student.links=[cnn,bilstm]", "student.hparams.epochs=2"],
}

# Trials per student type where the default (trials=) would cost too much CPU time.
TRIALS: dict[str, int] = {"bert": 1, "chain": 2}


def main(argv: list[str]) -> None:
    quiet_libraries()
    keys = ("students", "trials")
    args = dict(a.split("=", 1) for a in argv if a.split("=", 1)[0] in keys)
    overrides = [a for a in argv if a.split("=", 1)[0] not in keys]
    students = args.get("students", "bilstm,cnn,lgbm,tree,chain,bert").split(",")
    for name in students:
        cfg = compose(
            [
                f"student={name}",
                f"study.n_trials={TRIALS.get(name, int(args.get('trials', 3)))}",
                "progress=false",
                *STUDENT_OVERRIDES.get(name, []),
                *overrides,
            ]
        )
        result = run_study(cfg)
        print(f"{name}: best {result.metric}={result.best_value} after {result.n_finished} trials", flush=True)
    cfg = compose(["progress=false", *overrides])
    prep = prepare(cfg)
    task, metric = prep.task, prep.task.metric
    studied = find_studied(cfg.study.storage or default_storage(), str(cfg.task.name), prep.cache.key, students)
    models, rows = {"teacher": prep.teacher.predict_logits}, {}
    teacher_logits = prep.teacher.predict_logits(task.dev.texts)
    t_score = task.score(task.dev.labels, teacher_logits.argmax(1))[metric]
    t_total, t_non_emb = prep.teacher.n_params()
    rows["teacher"] = (t_score, 1.0, t_total, t_non_emb)
    tmp = tempfile.mkdtemp()
    for best in studied.best:
        path = mlflow.artifacts.download_artifacts(run_id=best.trial_run_id, artifact_path="student", dst_path=tmp)
        student = Student.load(path)
        logits = student.predict_logits(task.dev.texts)
        total, non_emb = student.n_params()
        rows[best.student] = (
            task.score(task.dev.labels, logits.argmax(1))[metric],
            agreement(logits, teacher_logits),
            total,
            non_emb,
        )
        models[best.student] = student.predict_logits
    latency = side_by_side_latency(models, task.dev.texts)
    print(f"\n| model | dev {metric} | % of teacher | agreement | params | non-embedding | batch-1 ms | speed-up |")
    print("|---|---|---|---|---|---|---|---|")
    for name, (score, agree, total, non_emb) in rows.items():
        print(
            f"| {name} | {score:.4f} | {100 * score / t_score:.1f} | {agree:.3f} | {total:,} | {non_emb:,} | "
            f"{latency[name]:.2f} | {latency['teacher'] / latency[name]:.1f}x |"
        )
    if studied.missing:
        print("not studied: " + ", ".join(f"{k} ({v})" for k, v in studied.missing.items()))
    targets = {
        "bert >= 99% of teacher with <= 1/4 of its non-embedding params": (
            "bert",
            lambda r, n: r[0] >= 0.99 * t_score and r[3] <= t_non_emb / 4,
        ),
        "cnn >= 97% of teacher": ("cnn", lambda r, n: r[0] >= 0.97 * t_score),
        "lgbm >= 92% of teacher and >= 50x faster": (
            "lgbm",
            lambda r, n: r[0] >= 0.92 * t_score and latency["teacher"] / latency[n] >= 50,
        ),
    }
    for label, (name, check) in targets.items():
        state = "not run" if name not in rows else ("met" if check(rows[name], name) else "NOT met")
        print(f"target {label}: {state}")


if __name__ == "__main__":
    main(sys.argv[1:])
