"""Teacher recipes for one task: fine-tune each (epochs, lr), keep the best on dev, report its test score.

Why: a weak teacher makes every student's share meaningless, and "more epochs" is a guess until
measured. Each recipe's teacher lands in the shared teacher cache under its own key, so a recipe
that wins can be named in ``bench_tasks`` (``-- task:teacher.epochs=… task:teacher.lr=…``) without
fine-tuning again. The choice among recipes and of each recipe's epoch is made on dev; test is
scored for the dev-chosen teacher only and reported, never compared across recipes here.

    python -m benchmarks.bench_teacher_recipes --task sst2 --recipes 5:5e-5,5:3e-5
    python -m benchmarks.bench_teacher_recipes --task sst2 --recipes 3:1e-4,3:1e-4:embeddings

A third field, ``embeddings``, trains the word-embedding table too (frozen by default: it is half
of MiniLM's weights and freezing it halves the step time), so the two can be compared on dev.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any, NamedTuple

from benchmarks._common import DATA_DIR, REPO, split_overrides

OUT = REPO / "benchmarks" / "results" / "teacher_recipes.md"


class Recipe(NamedTuple):
    """One way to fine-tune the teacher: epochs (at most; the best on dev is kept), lr, and
    whether the word-embedding table trains too."""

    epochs: float
    lr: float
    train_embeddings: bool = False

    def overrides(self) -> list[str]:
        return [
            f"teacher.epochs={self.epochs}",
            f"teacher.lr={self.lr}",
            f"teacher.freeze_embeddings={str(not self.train_embeddings).lower()}",
        ]

    @property
    def embeddings(self) -> str:
        return "trained" if self.train_embeddings else "frozen"

    def describe(self) -> str:
        return f"{self.epochs:g} epochs at lr {self.lr:g}, embeddings {self.embeddings}"


def parse_recipes(spec: str) -> list[Recipe]:
    """``"5:5e-5,3:1e-4:embeddings"`` → 5 epochs at 5e-5 (embeddings frozen), 3 at 1e-4 training them."""
    recipes = []
    expected = "is not EPOCHS:LR or EPOCHS:LR:embeddings (expected e.g. 5:5e-5 or 3:1e-4:embeddings)"
    for item in filter(None, (part.strip() for part in spec.split(","))):
        fields = item.split(":")
        try:
            if len(fields) not in (2, 3) or (len(fields) == 3 and fields[2] != "embeddings"):
                raise ValueError
            recipes.append(Recipe(float(fields[0]), float(fields[1]), len(fields) == 3))
        except ValueError:
            raise SystemExit(f"--recipes {spec!r}: {item!r} {expected}") from None
    if not recipes:
        raise SystemExit(f"--recipes {spec!r}: no recipe given (expected e.g. 5:5e-5,3:1e-4)")
    return recipes


def fit_recipe(task: str, recipe: Recipe, extra: list[str]) -> tuple[Any, dict[str, Any]]:
    """The teacher of one recipe (fine-tuned once, cached) and what its record says about dev."""
    from studies.config import compose
    from studies.pipeline import fine_tuned_teacher

    cfg = compose(
        [
            f"task={task}",
            f"data.dir={DATA_DIR}",
            "progress=false",
            *extra,
            *recipe.overrides(),
        ]
    )
    teacher, dev = fine_tuned_teacher(cfg)
    return teacher, {
        "recipe": recipe,
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
        "| epochs (at most) | lr | embeddings | dev per epoch | best dev | train s |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        train = f"{r['train_s']:.0f}" if isinstance(r["train_s"], int | float) else "–"
        per_epoch = ", ".join(f"{s:.4f}" for s in r["per_epoch"])
        recipe: Recipe = r["recipe"]
        lines.append(
            f"| {recipe.epochs:g} | {recipe.lr:g} | {recipe.embeddings} | {per_epoch} | {r['dev']:.4f} | {train} |"
        )
    lines += [
        "",
        f"Kept on dev: {best['recipe'].describe()} (teacher `{best['key']}`), test {test:.4f}.",
        "",
        f"Made by `{command}`.",
    ]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    own, extra = split_overrides(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--task", default="sst2")
    parser.add_argument(
        "--recipes",
        default="5:5e-5,5:3e-5",
        help="EPOCHS:LR[:embeddings],… (epochs at most; best on dev kept; ':embeddings' trains the embedding table)",
    )
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args(own)
    rows, teachers = [], []
    for recipe in parse_recipes(args.recipes):
        teacher, row = fit_recipe(args.task, recipe, extra)
        rows.append(row)
        teachers.append(teacher)
        print(json.dumps({**row, "recipe": recipe._asdict()}), flush=True)
    best_index = max(range(len(rows)), key=lambda i: rows[i]["dev"])
    test = test_score(teachers[best_index], args.task, extra)
    command = "python -m benchmarks.bench_teacher_recipes " + " ".join(sys.argv[1:] if argv is None else argv)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(render(args.task, rows, rows[best_index], test, command.strip()))
    print(f"written to {args.out}")


if __name__ == "__main__":
    main()
