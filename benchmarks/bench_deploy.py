"""Deployable students against an optimised teacher (issue 11): SST-2 test, side by side, one process.

    python -m studies.run student=bilstm          # the studies it reads (first, once each)
    python -m studies.run student=lgbm
    python -m benchmarks.bench_deploy             # -> benchmarks/results/deploy.md and deploy.csv

Loads the best BiLSTM and the best LightGBM of their studies (chosen on dev) from their MLflow
artifacts — no retraining — and builds their inference exports: the BiLSTM in int8 (dynamic
quantisation of its LSTM and Linear layers), folded (embedding × LSTM input projection as one
lookup table, float32, every row) and folded lean (float16, only the rows of tokens in the
transfer set); LightGBM with the fast featuriser. The teacher runs fp32 and int8 (its Linear
layers quantised the same way). Every model is scored on test (reported only, never chosen
on) and timed at batch 1 on one thread, raw text in (tokenisation included), in alternating
blocks over the dev sentences; size is the bytes of its saved folder.

Targets: BiLSTM >= 97 % of the teacher at >= 10x the fp32 teacher and >= 5x the int8 teacher;
LightGBM >= 50x the fp32 teacher; int8 students lose <= 0.5 points of test accuracy.

Extra arguments: ``out=<folder>`` (default benchmarks/results), then any studies.run override
(``teacher=tiny data.limit=300 cache_dir=... study.storage=... tracking.uri=...`` for a quick check).
"""

from __future__ import annotations

import copy
import csv
import sys
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import torch

from benchmarks._common import REPO, side_by_side_latency
from students.base import Student
from students.export import FoldedBiLSTM, file_bytes, quantize_int8, reachable_ids
from studies.best import find_studied
from studies.cli import quiet_libraries
from studies.config import compose
from studies.pipeline import prepare
from studies.tracking import default_storage, setup_mlflow

OUT = REPO / "benchmarks" / "results"


@dataclass
class Entry:
    """One deployable model: how it predicts, what it weighs, what it is derived from."""

    name: str
    predict: Callable[[Sequence[str]], np.ndarray]
    size_bytes: int
    family: str  # "teacher", "bilstm", "lgbm": the fp32 row of a family is its reference


def saved_bytes(save: Callable[[Path], Any]) -> int:
    with tempfile.TemporaryDirectory() as tmp:
        save(Path(tmp) / "model")
        return file_bytes(Path(tmp) / "model")


def teacher_int8_bytes(teacher: Any, model: torch.nn.Module) -> int:
    """Config, tokenizer and the int8 state dict: what an int8 teacher ships."""

    def save(path: Path) -> None:
        path.mkdir(parents=True)
        teacher.tokenizer.save_pretrained(str(path))
        teacher.model.config.save_pretrained(str(path))
        torch.save(model.state_dict(), path / "model_int8.pt")

    return saved_bytes(save)


def load_best(cfg: Any, prep: Any, student: str, tmp: str) -> Student | None:
    studied = find_studied(cfg.study.storage or default_storage(), str(cfg.task.name), prep.cache.key, [student])
    if not studied.best or not studied.best[0].trial_run_id:
        return None
    path = mlflow.artifacts.download_artifacts(
        run_id=studied.best[0].trial_run_id, artifact_path="student", dst_path=f"{tmp}/{student}"
    )
    return Student.load(path).with_runtime("cpu")


def entries(prep: Any, bilstm: Student, lgbm: Student | None) -> list[Entry]:
    teacher = prep.teacher
    teacher_q = copy.copy(teacher)
    teacher_q.model = quantize_int8(teacher.model)
    bilstm_q = bilstm.quantized()  # type: ignore[attr-defined]
    folded = FoldedBiLSTM.from_student(bilstm)
    keep = reachable_ids(bilstm.tokenizer, prep.cache.texts, int(bilstm.hparams["max_length"]))  # type: ignore[attr-defined]
    lean = FoldedBiLSTM.from_student(bilstm, keep_ids=keep, dtype="float16")
    rows = [
        Entry("teacher fp32", teacher.predict_logits, file_bytes(teacher.path), "teacher"),
        Entry("teacher int8", teacher_q.predict_logits, teacher_int8_bytes(teacher, teacher_q.model), "teacher"),
        Entry("bilstm fp32", bilstm.predict_logits, saved_bytes(bilstm.save), "bilstm"),
        Entry("bilstm int8", bilstm_q.predict_logits, saved_bytes(bilstm_q.save), "bilstm"),
        Entry("bilstm folded fp32", folded.predict_logits, saved_bytes(folded.save), "bilstm"),
        Entry(f"bilstm folded fp16, {len(keep):,} rows", lean.predict_logits, saved_bytes(lean.save), "bilstm"),
    ]
    if lgbm is not None:
        rows.append(Entry("lgbm, fast featuriser", lgbm.predict_logits, saved_bytes(lgbm.save), "lgbm"))
    return rows


def verdict(ok: bool) -> str:
    return "met" if ok else "not met"


def main(argv: list[str]) -> Path:
    quiet_libraries()
    args = dict(a.split("=", 1) for a in argv if a.startswith("out="))
    out = Path(args.get("out", str(OUT)))
    cfg = compose(["progress=false", "device=cpu", *[a for a in argv if not a.startswith("out=")]])
    setup_mlflow(cfg.tracking.uri, cfg.tracking.experiment or f"kd-{cfg.task.name}")
    prep = prepare(cfg)  # cached teacher and transfer set: nothing is retrained here
    task, metric = prep.task, prep.task.metric
    with tempfile.TemporaryDirectory() as tmp:
        bilstm = load_best(cfg, prep, "bilstm", tmp)
        if bilstm is None:
            raise SystemExit("no BiLSTM study on this cache yet: run `python -m studies.run student=bilstm` first")
        lgbm = load_best(cfg, prep, "lgbm", tmp)
        models = entries(prep, bilstm, lgbm)
    teacher_test = prep.cache.test_logits.argmax(1)
    scores, agree = {}, {}
    for m in models:
        predicted = m.predict(task.test.texts).argmax(1)
        scores[m.name] = task.score(task.test.labels, predicted)[metric]
        agree[m.name] = float((predicted == teacher_test).mean())
    latency = side_by_side_latency({m.name: m.predict for m in models}, task.dev.texts)
    fp32, int8 = latency["teacher fp32"], latency["teacher int8"]
    reference = {m.family: m.name for m in reversed(models)}  # the first row of each family
    rows = []
    for m in models:
        rows.append(
            {
                "model": m.name,
                f"test_{metric}": scores[m.name],
                "pct_of_teacher": 100 * scores[m.name] / scores["teacher fp32"],
                "points_vs_fp32": 100 * (scores[m.name] - scores[reference[m.family]]),
                "test_agreement": agree[m.name],
                "latency_ms_b1": latency[m.name],
                "speedup_vs_teacher_fp32": fp32 / latency[m.name],
                "speedup_vs_teacher_int8": int8 / latency[m.name],
                "size_mb": m.size_bytes / 1e6,
            }
        )
    out.mkdir(parents=True, exist_ok=True)
    with (out / "deploy.csv").open("w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    lines = [
        f"SST-2 **test** ({len(task.test)} sentences), teacher `{cfg.teacher.name}` (epoch chosen on dev), best "
        "BiLSTM and best LightGBM of their studies (chosen on dev). Batch-1 latency: median per sentence, raw "
        "text in (tokenisation included), one thread, all models timed side by side in alternating blocks.",
        "",
        f"| model | test {metric} | % of teacher | points vs fp32 | agreement | batch-1 ms | "
        "speed-up vs teacher fp32 | vs teacher int8 | size MB |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['model']} | {r[f'test_{metric}']:.4f} | {r['pct_of_teacher']:.1f} | {r['points_vs_fp32']:+.2f} | "
            f"{r['test_agreement']:.3f} | {r['latency_ms_b1']:.3f} | {r['speedup_vs_teacher_fp32']:.1f}x | "
            f"{r['speedup_vs_teacher_int8']:.1f}x | {r['size_mb']:.1f} |"
        )
    by_name = {r["model"]: r for r in rows}
    bilstms = [r for r in rows if r["model"].startswith("bilstm")]
    fastest = min(bilstms, key=lambda r: r["latency_ms_b1"])
    lines += [
        "",
        "Targets:",
        f"- fastest BiLSTM export ({fastest['model']}): {fastest['pct_of_teacher']:.1f} % of the teacher "
        f"(≥ 97 %: {verdict(fastest['pct_of_teacher'] >= 97)}), {fastest['speedup_vs_teacher_fp32']:.1f}x the fp32 "
        f"teacher (≥ 10x: {verdict(fastest['speedup_vs_teacher_fp32'] >= 10)}), "
        f"{fastest['speedup_vs_teacher_int8']:.1f}x the int8 teacher (≥ 5x: "
        f"{verdict(fastest['speedup_vs_teacher_int8'] >= 5)})",
        f"- bilstm int8 vs fp32: {by_name['bilstm int8']['points_vs_fp32']:+.2f} points of test {metric} "
        f"(a loss of at most 0.5: {verdict(by_name['bilstm int8']['points_vs_fp32'] >= -0.5)})",
    ]
    if "lgbm, fast featuriser" in by_name:
        speed = by_name["lgbm, fast featuriser"]["speedup_vs_teacher_fp32"]
        lines.append(f"- lgbm: {speed:.1f}x the fp32 teacher (≥ 50x: {verdict(speed >= 50)})")
    else:
        lines.append("- lgbm: no LightGBM study on this cache (`python -m studies.run student=lgbm`): not measured")
    (out / "deploy.md").write_text("\n".join(lines) + "\n", encoding="utf-8")
    print("\n".join(lines))
    print(f"\nwritten to {out / 'deploy.md'} and {out / 'deploy.csv'}")
    return out / "deploy.md"


if __name__ == "__main__":
    main(sys.argv[1:])
