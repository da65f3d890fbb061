"""The teacher-recipe benchmark on the tiny teacher: the pick is on dev, reruns read the cache."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from benchmarks import bench_teacher_recipes
from teachers import finetune


def test_recipes_parse_and_bad_ones_say_what_was_expected() -> None:
    Recipe = bench_teacher_recipes.Recipe
    assert bench_teacher_recipes.parse_recipes("5:5e-5, 3:1e-4:embeddings") == [
        Recipe(5.0, 5e-5, train_embeddings=False),
        Recipe(3.0, 1e-4, train_embeddings=True),
    ]
    assert Recipe(3.0, 1e-4, True).overrides()[-1] == "teacher.freeze_embeddings=false"
    assert Recipe(3.0, 1e-4).overrides()[-1] == "teacher.freeze_embeddings=true"
    with pytest.raises(SystemExit, match=r"'5' is not EPOCHS:LR"):
        bench_teacher_recipes.parse_recipes("5")
    with pytest.raises(SystemExit, match=r"'x:1e-4' is not EPOCHS:LR"):
        bench_teacher_recipes.parse_recipes("3:1e-4,x:1e-4")
    with pytest.raises(SystemExit, match=r"'3:1e-4:embedding' is not EPOCHS:LR or EPOCHS:LR:embeddings"):
        bench_teacher_recipes.parse_recipes("3:1e-4:embedding")
    with pytest.raises(SystemExit, match="no recipe given"):
        bench_teacher_recipes.parse_recipes(" , ")


def test_the_dev_best_recipe_is_kept_and_a_rerun_fine_tunes_nothing(
    tiny_overrides: list[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "recipes.md"
    argv = [
        "--task",
        "sst2",
        "--recipes",
        "1:0.001,2:0.01,1:0.001:embeddings",
        "--out",
        str(out),
        "--",
        *tiny_overrides,
    ]
    bench_teacher_recipes.main(argv)
    text = out.read_text(encoding="utf-8")
    rows = re.findall(r"^\| (\d+) \| ([\d.e-]+) \| (\w+) \| [^|]+ \| ([\d.]+) \|", text, flags=re.M)
    assert [row[:3] for row in rows] == [("1", "0.001", "frozen"), ("2", "0.01", "frozen"), ("1", "0.001", "trained")]
    printed = [json.loads(line) for line in capsys.readouterr().out.splitlines() if line.startswith("{")]
    # the tiny teacher trains its embeddings by default, so "frozen" must come from the recipe: three teachers
    assert len({row["key"] for row in printed}) == 3
    assert [row["recipe"]["train_embeddings"] for row in printed] == [False, False, True]
    best = max(rows, key=lambda r: float(r[3]))
    kept = re.search(
        r"Kept on dev: (\d+) epochs at lr ([\d.e-]+), embeddings (\w+) \(teacher `\w+`\), test ([\d.]+)\.", text
    )
    assert kept and kept.group(1, 2, 3) == best[:3]
    assert 0.0 <= float(kept.group(4)) <= 1.0

    def no_training(*args, **kwargs):
        raise AssertionError("a cached recipe was fine-tuned again")

    monkeypatch.setattr(finetune, "_train", no_training)
    bench_teacher_recipes.main(argv)
    assert out.read_text(encoding="utf-8") == text
