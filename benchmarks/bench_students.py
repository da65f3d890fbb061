"""Benchmark (issue 3): every student type on SST-2 dev with the default teacher.

    python -m benchmarks.bench_students [students=bilstm,cnn,bert,lgbm,tree,chain] [trials=3] [seeds=1]

Runs a small Optuna search per student type (reusing any trials already in the default
storage: a study is only topped up) and then ``studies.compare`` with ``seeds`` seeds, which
measures every model's batch-1 latency against the teacher's in the same process. Prints the
comparison table plus the issue's targets checked against it.
"""

from __future__ import annotations

import sys

from studies.compare import compare
from studies.config import compose
from studies.report import Stat, terminal_table
from studies.run import quiet_libraries, run_study

# Per-student settings that keep a CPU search affordable on 67k sentences.
STUDENT_OVERRIDES: dict[str, list[str]] = {
    "bilstm": ["student.hparams.epochs=3"],
    "cnn": ["student.hparams.epochs=3"],
    "bert": ["student.hparams.epochs=2", "student.hparams.init=teacher", "student.hparams.num_layers=2"],
    "lgbm": [],
    "forest": ["student.hparams.n_estimators=100"],
    "tree": [],
    "chain": ["student.links=[cnn,bilstm]", "student.hparams.epochs=2"],
}


def mean(row: dict, key: str) -> float:
    value = row.get(key)
    return value.mean if isinstance(value, Stat) else float("nan")


def main(argv: list[str]) -> None:
    quiet_libraries()
    args = dict(a.split("=", 1) for a in argv if a.split("=", 1)[0] in ("students", "trials", "seeds"))
    overrides = [a for a in argv if a.split("=", 1)[0] not in ("students", "trials", "seeds")]
    students = args.get("students", "bilstm,cnn,bert,lgbm,tree,chain").split(",")
    for name in students:
        cfg = compose(
            [
                f"student={name}",
                f"study.n_trials={int(args.get('trials', 3))}",
                "progress=false",
                *STUDENT_OVERRIDES.get(name, []),
                *overrides,
            ]
        )
        result = run_study(cfg)
        print(f"{name}: best {result.metric}={result.best_value} after {result.n_finished} trials", flush=True)
    report = compare(compose([f"compare.seeds={int(args.get('seeds', 1))}", "progress=false", *overrides]))
    print(terminal_table(report.columns, report.rows))
    teacher = report.teacher
    metric = report.metric
    by_name = {str(r["model"]): r for r in report.rows[1:]}
    t_score, t_lat = teacher[metric], teacher["latency_ms_b1"]
    t_non_emb = teacher["params_non_embedding"]
    checks = {
        "bert >= 99% of teacher, <= 1/4 non-embedding params": (
            "bert",
            lambda r: mean(r, metric) >= 0.99 * t_score and mean(r, "params_non_embedding") <= t_non_emb / 4,
        ),
        "cnn >= 97% of teacher": ("cnn", lambda r: mean(r, metric) >= 0.97 * t_score),
        "lgbm >= 92% of teacher and >= 50x faster at batch 1": (
            "lgbm",
            lambda r: mean(r, metric) >= 0.92 * t_score and t_lat / mean(r, "latency_ms_b1") >= 50,
        ),
    }
    for label, (name, check) in checks.items():
        row = by_name.get(name)
        print(f"target {label}: {'not run' if row is None else ('met' if check(row) else 'NOT met')}")
    for name in ("bilstm", "chain"):
        if name in by_name:
            row = by_name[name]
            print(f"{name}: {metric} {mean(row, metric):.4f} ({100 * mean(row, metric) / t_score:.1f}% of teacher)")
    print(f"report: {report.files['markdown']}")


if __name__ == "__main__":
    main(sys.argv[1:])
