"""Benchmark (issue 4): does the framework reproduce the literature's ordering for a BiLSTM on SST-2?

    python -m benchmarks.bench_literature [train_limit=5000] [n_aug=8] [seeds=3] [epochs=4] [extra overrides]

(a) hard labels only (no teacher signal); (b) KD on the training sentences; (c) KD on the
Tang et al. (2019) augmented transfer set; (d) (c) plus the best extra objective (chosen on
seed 0 among hidden matching, NST, activation boundary, noisy teacher). Expected: a < b < c.
The teacher is the default one (fine-tuned on all of SST-2, cached); the students see only
the first ``train_limit`` training sentences (plus their augmentations), the low-data regime
where the transfer set matters most. Prints mean ± sd of dev accuracy over the seeds.
"""

from __future__ import annotations

import statistics
import sys
from typing import Any

from students.bilstm import BiLSTMStudent
from studies.cli import quiet_libraries
from studies.config import compose
from studies.pipeline import Prepared, prepare

BILSTM = {
    "hidden_size": 128,
    "num_layers": 1,
    "pooling": "max",
    "mlp_dim": 256,
    "dropout": 0.2,
    "lr": 2e-3,
    "batch_size": 64,
    "progress": False,
}
HARD = {"kd_weight": 0.0, "mse_weight": 0.0, "ce_weight": 1.0}
KD = {"kd_weight": 0.0, "mse_weight": 1.0, "ce_weight": 0.0}  # Tang et al. distil with MSE on the logits
EXTRAS: dict[str, dict[str, Any]] = {
    "hidden": {"hidden_weight": 0.5, "hidden_loss": "cosine"},
    "nst": {"nst_weight": 10.0},
    "ab": {"ab_weight": 0.1},
    "noise": {"noise_prob": 0.5, "noise_scale": 0.1},
}


def scores(prep: Prepared, hparams: dict[str, Any], seeds: list[int]) -> list[float]:
    out = []
    for seed in seeds:
        student = BiLSTMStudent(**{**BILSTM, **hparams, "seed": seed})
        student.fit(prep.cache, prep.dev_set())
        out.append(prep.dev_set().evaluate(student.predict_logits(prep.task.dev.texts)))
    return out


def fmt(values: list[float]) -> str:
    sd = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{100 * statistics.mean(values):.2f} ± {100 * sd:.2f}"


def main(argv: list[str]) -> None:
    quiet_libraries()
    args = {k: v for k, v in (a.split("=", 1) for a in argv) if k in ("train_limit", "n_aug", "seeds", "epochs")}
    overrides = [a for a in argv if a.split("=", 1)[0] not in args]
    limit, n_aug = int(args.get("train_limit", 5000)), int(args.get("n_aug", 8))
    seeds = list(range(int(args.get("seeds", 3))))
    BILSTM["epochs"] = int(args.get("epochs", 4))
    base = ["progress=false", f"transfer.train_limit={limit}", *overrides]
    plain = prepare(compose(base))
    augmented = prepare(compose([*base, f"transfer.augment.n={n_aug}"]))
    rows: list[tuple[str, str, list[float]]] = []
    rows.append(("(a) hard labels only, no teacher", f"{limit} sentences", scores(plain, HARD, seeds)))
    rows.append(("(b) KD, training sentences", f"{len(plain.cache)} texts", scores(plain, KD, seeds)))
    rows.append(("(c) KD, augmented transfer set", f"{len(augmented.cache)} texts", scores(augmented, KD, seeds)))
    trial = {name: scores(augmented, {**KD, **extra}, seeds[:1])[0] for name, extra in EXTRAS.items()}
    best = max(trial, key=trial.__getitem__)
    rows.append(
        (
            f"(d) (c) + {best} ({EXTRAS[best]})",
            f"{len(augmented.cache)} texts",
            scores(augmented, {**KD, **EXTRAS[best]}, seeds),
        )
    )
    teacher = plain.teacher_metrics[plain.metric]
    print(f"teacher dev accuracy {100 * teacher:.2f}; BiLSTM dev accuracy over seeds {seeds} (mean ± sd):")
    print("| setting | transfer set | dev accuracy % |\n|---|---|---|")
    for name, size, values in rows:
        print(f"| {name} | {size} | {fmt(values)} |")
    print("extra objectives on seed 0 (c + term): " + ", ".join(f"{k} {100 * v:.2f}" for k, v in trial.items()))
    means = [statistics.mean(v) for _, _, v in rows]
    print(
        f"ordering a < b < c: {means[0] < means[1] < means[2]} (a {100 * means[0]:.2f}, b {100 * means[1]:.2f}, "
        f"c {100 * means[2]:.2f}, d {100 * means[3]:.2f})"
    )


if __name__ == "__main__":
    main(sys.argv[1:])
