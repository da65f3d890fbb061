"""Transfer-set size: smaller sets are row subsets of the largest (labelled once), and the benchmark runs."""

from __future__ import annotations

import csv
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from benchmarks import bench_transfer_size
from transfer.errors import KDError
from transfer.subset import TransferSubset, rows_of


def test_a_subset_reads_like_the_cache_restricted_to_its_rows(tiny_cache) -> None:
    rows = [5, 1, 3]
    subset = TransferSubset(tiny_cache, rows)
    assert len(subset) == 3 and subset.texts == [tiny_cache.texts[i] for i in (1, 3, 5)]
    np.testing.assert_array_equal(subset.logits, tiny_cache.logits[[1, 3, 5]])
    np.testing.assert_array_equal(subset.labels, tiny_cache.labels[[1, 3, 5]])
    assert subset.dev_texts == tiny_cache.dev_texts and subset.key != tiny_cache.key
    assert subset.manifest["subset_of"] == tiny_cache.key
    assert rows_of(tiny_cache, [tiny_cache.texts[4]]) == [4]
    with pytest.raises(KDError, match="not in transfer cache"):
        rows_of(tiny_cache, ["a sentence the teacher never saw"])


def test_the_benchmark_labels_once_and_writes_its_table(tiny_overrides: list[str], tmp_path: Path) -> None:
    from studies import pipeline
    from transfer import cache as cache_module

    built = []
    original = cache_module.get_or_build_cache

    def counting(labeler, transfer, *args, **kwargs):
        built.append(len(transfer.texts))
        return original(labeler, transfer, *args, **kwargs)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(pipeline, "get_or_build_cache", counting)
        argv = ["--tasks", "sst2", "--sizes", "1,2", "--seeds", "1", "--epochs", "1"]
        argv += ["--hparams", '{"hidden_size": 16, "mlp_dim": 16}', "--out-dir", str(tmp_path / "out")]
        files = bench_transfer_size.main([*argv, "--", *tiny_overrides])
    assert len(built) == 1  # one labelled set: the 2x one; the 1x set is its rows
    rows = list(csv.DictReader(files["csv"].open(encoding="utf-8")))
    assert [r["size"] for r in rows] == ["1", "2"]
    assert int(rows[1]["sentences"]) > int(rows[0]["sentences"])
    assert files["png"].stat().st_size > 0
    again = bench_transfer_size.main([*argv, "--", *tiny_overrides])  # everything done: nothing retrained
    assert again["md"].read_text() == files["md"].read_text()


def test_size_one_is_exactly_the_training_split(tiny_overrides: list[str]) -> None:
    from studies.config import compose
    from studies.pipeline import prepare

    prep = prepare(compose([*tiny_overrides, "transfer.augment.n=1"]))
    rows = bench_transfer_size.subset_rows(prep, 1)
    assert [prep.cache.texts[i] for i in rows] == list(prep.task.train.texts)
    two = bench_transfer_size.subset_rows(replace(prep), 2)
    assert len(two) == len(prep.cache)


def test_the_trend_line_names_the_size_dev_prefers_not_test() -> None:
    def row(size: int, test: float, dev: float) -> dict:
        return {"task": "cola", "size": size, "share_mean": test, "share_sd": 0.5, "dev_share_mean": dev}

    table = [row(4, 40.0, 60.0), row(1, 28.0, 39.0), row(8, 45.0, 55.0)]
    (line,) = bench_transfer_size.trend_lines(table)
    assert "28.0 ± 0.5 % of the teacher on test at 1×, 45.0 ± 0.5 % at 8×" in line
    assert line.endswith("the size with the best dev share: 4× (60.0 %).")  # not 8×, the best on test
