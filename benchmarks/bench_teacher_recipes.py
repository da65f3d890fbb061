"""Teacher recipes for one task: fine-tune each (epochs, lr), keep the best on dev, report its test score.

Why: a weak teacher makes every student's share meaningless, and "more epochs" is a guess until
measured. Each recipe's teacher lands in the shared teacher cache under its own key, so a recipe
that wins can be named in ``bench_tasks`` (``-- task:teacher.epochs=… task:teacher.lr=…``) without
fine-tuning again. The choice among recipes and of each recipe's epoch is made on dev; test is
scored for the dev-chosen teacher only and reported, never compared across recipes here.

    python -m benchmarks.bench_teacher_recipes --task sst2 --recipes 5:5e-5,5:3e-5
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from benchmarks._common import DATA_DIR, REPO, split_overrides

OUT = REPO / "benchmarks" / "results" / "teacher_recipes.md"


def parse_recipes(spec: str) -> list[tuple[float, float]]:
    """``"5:5e-5,3:1e-4"`` → ``[(5.0, 5e-5), (3.0, 1e-4)]``: epochs (at most; best on dev kept) and lr."""
    recipes = []
    for item in filter(None, (part.strip() for part in spec.split(","))):
        epochs, sep, lr = item.partition(":")
        try:
            if not sep:
                raise ValueError
            recipes.append((float(epochs), float(lr)))
        except ValueError:
            raise SystemExit(f"--recipes {spec!r}: {item!r} is not EPOCHS:LR (expected e.g. 5:5e-5)") from None
    if not recipes:
        raise SystemExit(f"--recipes {spec!r}: no recipe given (expected e.g. 5:5e-5,3:1e-4)")
    return recipes


def fit_recipe(task: str, epochs: float, lr: float, extra: list[str]) -> tuple[Any, dict[str, Any]]:
    """The teacher of one recipe (fine-tuned once, cached) and what its record says about dev."""
    from studies.config import compose
    from studies.pipeline import fine_tuned_teacher

    cfg = compose(
        [
            f"task={task}",
            f"data.dir={DATA_DIR}",
            "progress=false",
            *extra,
            f"teacher.epochs={epochs}",
            f"teacher.lr={lr}",
        ]
    )
    teacher, dev = fine_tuned_teacher(cfg)
    return teacher, {
        "epochs": epochs,
        "lr": lr,
        "dev": dev,
        "key": teacher.record.get("key"),
        "per_epoch": [round(e["dev_score"], 4) for e in teacher.record.get("epochs_scored", [])],
        "train_s": teacher.record.get("train_seconds"),
    }


def test_score(teacher: Any, task_name: str, extra: list[str]) -> float:
    """The kept teacher's test score (reported only)."""
    from studies.config import compose
    from studies.pipeline import load_configured_task

    task = load_configured_task(compose([f"task={task_name}", f"data.dir={DATA_DIR}", *extra]))
    predictions = teacher.predict_logits(task.test.texts).argmax(axis=1)
    return float(task.score(task.test.labels, predictions)[task.metric])


def render(task: str, rows: list[dict[str, Any]], best: dict[str, Any], test: float, command: str) -> str:
    lines = [
        f"Teacher recipes on {task}: every recipe's epoch and the recipe itself chosen on dev; "
        "test scored for the chosen teacher only.",
        "",
        "| epochs (at most) | lr | dev per epoch | best dev | train s |",
        "|---|---|---|---|---|",
    ]
    for r in rows:
        train = f"{r['train_s']:.0f}" if isinstance(r["train_s"], int | float) else "–"
        per_epoch = ", ".join(f"{s:.4f}" for s in r["per_epoch"])
        lines.append(f"| {r['epochs']:g} | {r['lr']:g} | {per_epoch} | {r['dev']:.4f} | {train} |")
    lines += [
        "",
        f"Kept on dev: {best['epochs']:g} epochs at lr {best['lr']:g} (teacher `{best['key']}`), test {test:.4f}.",
        "",
        f"Made by `{command}`.",
    ]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    own, extra = split_overrides(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--task", default="sst2")
    parser.add_argument("--recipes", default="5:5e-5,5:3e-5", help="EPOCHS:LR,… (epochs at most; best on dev kept)")
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args(own)
    rows, teachers = [], []
    for epochs, lr in parse_recipes(args.recipes):
        teacher, row = fit_recipe(args.task, epochs, lr, extra)
        rows.append(row)
        teachers.append(teacher)
        print(json.dumps(row), flush=True)
    best_index = max(range(len(rows)), key=lambda i: rows[i]["dev"])
    test = test_score(teachers[best_index], args.task, extra)
    command = "python -m benchmarks.bench_teacher_recipes " + " ".join(sys.argv[1:] if argv is None else argv)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(render(args.task, rows, rows[best_index], test, command.strip()))
    print(f"written to {args.out}")


if __name__ == "__main__":
    main()
