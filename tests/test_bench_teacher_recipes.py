"""The teacher-recipe benchmark on the tiny teacher: the pick is on dev, reruns read the cache."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from benchmarks import bench_teacher_recipes
from teachers import finetune


def test_recipes_parse_and_bad_ones_say_what_was_expected() -> None:
    assert bench_teacher_recipes.parse_recipes("5:5e-5, 3:1e-4") == [(5.0, 5e-5), (3.0, 1e-4)]
    with pytest.raises(SystemExit, match=r"'5' is not EPOCHS:LR"):
        bench_teacher_recipes.parse_recipes("5")
    with pytest.raises(SystemExit, match=r"'x:1e-4' is not EPOCHS:LR"):
        bench_teacher_recipes.parse_recipes("3:1e-4,x:1e-4")
    with pytest.raises(SystemExit, match="no recipe given"):
        bench_teacher_recipes.parse_recipes(" , ")


def test_the_dev_best_recipe_is_kept_and_a_rerun_fine_tunes_nothing(
    tiny_overrides: list[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / "recipes.md"
    argv = ["--task", "sst2", "--recipes", "1:0.001,2:0.01", "--out", str(out), "--", *tiny_overrides]
    bench_teacher_recipes.main(argv)
    text = out.read_text(encoding="utf-8")
    rows = re.findall(r"^\| (\d+) \| ([\d.e-]+) \| [^|]+ \| ([\d.]+) \|", text, flags=re.M)
    assert [(epochs, lr) for epochs, lr, _ in rows] == [("1", "0.001"), ("2", "0.01")]
    best = max(rows, key=lambda r: float(r[2]))
    kept = re.search(r"Kept on dev: (\d+) epochs at lr ([\d.e-]+) \(teacher `\w+`\), test ([\d.]+)\.", text)
    assert kept and kept.group(1, 2) == best[:2]
    assert 0.0 <= float(kept.group(3)) <= 1.0

    def no_training(*args, **kwargs):
        raise AssertionError("a cached recipe was fine-tuned again")

    monkeypatch.setattr(finetune, "_train", no_training)
    bench_teacher_recipes.main(argv)
    assert out.read_text(encoding="utf-8") == text
