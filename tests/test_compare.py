"""``studies.compare`` on a tiny 2-trial BiLSTM study: rows, ratios, reuse of seed runs, report files."""

from __future__ import annotations

import csv
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import mlflow
import pytest
from mlflow.tracking import MlflowClient

from students.bilstm import BiLSTMStudent
from students.registry import available_students
from studies.compare import Comparison, compare, main
from studies.config import compose
from studies.report import Stat
from studies.run import run_study
from transfer.errors import KDError

SMALL = ["student.hparams.hidden_size=16", "student.hparams.mlp_dim=16", "tracking.latency_samples=3"]


@dataclass
class Compared:
    root: Path
    overrides: list[str]
    first: Comparison
    second: Comparison
    fits_second: int  # BiLSTM fits during the second comparison


def _runs(root: Path, role: str) -> list[Any]:
    client = MlflowClient(tracking_uri=f"sqlite:///{root / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("kd-sst2")
    return client.search_runs([experiment.experiment_id], filter_string=f"tags.role = '{role}'", max_results=1000)


@pytest.fixture(scope="module")
def compared(make_tiny_overrides, tmp_path_factory: pytest.TempPathFactory) -> Compared:
    """A 2-trial study, then the same comparison twice (the second one must train nothing)."""
    root = tmp_path_factory.mktemp("compare")
    overrides = [*make_tiny_overrides(root), *SMALL, f"compare.out_dir={root / 'reports'}", "compare.seeds=2"]
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(root)
        run_study(compose([*overrides, "student=bilstm", "study.n_trials=2"]))
        first = compare(compose(overrides))
        assert mlflow.active_run() is None
        fits = []
        original = BiLSTMStudent.fit

        def counting_fit(self: BiLSTMStudent, *args: Any, **kwargs: Any) -> Any:
            fits.append(1)
            return original(self, *args, **kwargs)

        mp.setattr(BiLSTMStudent, "fit", counting_fit)
        second = compare(compose(overrides))
    return Compared(root, overrides, first, second, len(fits))


def test_rows_are_teacher_then_studied_students(compared: Compared) -> None:
    result = compared.first
    assert [row["model"] for row in result.rows] == ["teacher (tiny)", "bilstm"]
    assert result.rows[1]["n"] == 2
    assert set(result.missing) == set(available_students()) - {"bilstm"}
    assert all(why == "no study" for why in result.missing.values())
    assert result.metric == "test_accuracy"  # chosen on dev, reported on test
    for key in ("test_accuracy", "test_agreement", "latency_ms_b1", "latency_ms_b64", "size_mb", "train_seconds"):
        stat = result.rows[1][key]
        assert isinstance(stat, Stat) and stat.n == 2 and math.isfinite(stat.mean), key
    assert result.rows[1]["size_mb"].mean > 0


def test_ratios_follow_from_the_rows(compared: Compared) -> None:
    teacher, student = compared.first.rows
    metric = compared.first.metric
    assert student["pct_of_teacher"].mean == pytest.approx(100 * student[metric].mean / teacher[metric].mean)
    assert student["pct_of_teacher"].sd == pytest.approx(100 * student[metric].sd / teacher[metric].mean)
    # speed-ups are the mean of each seed's ratio, teacher and student timed side by side
    seeds = [s.metrics for r in compared.first.results for s in r.seeds]
    for batch, key in (("b1", "latency_ratio_teacher"), ("b64", "latency_ratio_teacher_b64")):
        ratios = [m[key] for m in seeds]
        assert student[f"speedup_{batch}"] == pytest.approx(sum(ratios) / len(ratios))
        for m in seeds:  # each seed's: the median of its per-round ratios, its quartiles beside it
            assert m[f"{key}_q25"] <= m[key] <= m[f"{key}_q75"]
        assert teacher[f"speedup_{batch}"] == 1.0
    assert teacher["latency_ms_b1"].mean == compared.first.teacher["latency_ms_b1"]


def test_second_call_reuses_the_seed_runs(compared: Compared) -> None:
    assert compared.fits_second == 0
    first = {s.seed: s for r in compared.first.results for s in r.seeds}
    second = {s.seed: s for r in compared.second.results for s in r.seeds}
    assert sorted(first) == sorted(second) == [1000, 1001]  # seeds the search (seed 0) never used
    assert not any(s.reused for s in first.values())
    assert all(s.reused and s.remeasured for s in second.values())
    assert all(first[k].run_id == second[k].run_id for k in first)
    assert all(first[k].metrics["test_accuracy"] == second[k].metrics["test_accuracy"] for k in first)
    seed_runs = _runs(compared.root, "seed_run")
    assert len(seed_runs) == 2
    assert {r.data.tags["seed"] for r in seed_runs} == {"1000", "1001"}
    assert {r.data.tags["student"] for r in seed_runs} == {"bilstm"}
    assert len({r.data.tags["config_hash"] for r in seed_runs}) == 1
    assert len(_runs(compared.root, "comparison")) == 2


def test_report_files_and_artifacts(compared: Compared) -> None:
    files = compared.second.files
    assert {"markdown", "csv", "png", "html"} <= set(files)
    for path in files.values():
        assert path.is_file() and path.stat().st_size > 0
    assert files["png"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "plotly" in files["html"].read_text(encoding="utf-8")[:200_000].lower()
    markdown = files["markdown"].read_text(encoding="utf-8")
    assert "| teacher (tiny) |" in markdown and "| bilstm |" in markdown and "Not compared" in markdown
    assert all(f"`{name}`: no study" in markdown for name in compared.second.missing)
    with files["csv"].open(encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    assert [r["model"] for r in rows] == ["teacher (tiny)", "bilstm"]
    assert float(rows[1]["pct_of_teacher_mean"]) == pytest.approx(compared.second.rows[1]["pct_of_teacher"].mean)
    client = MlflowClient(tracking_uri=f"sqlite:///{compared.root / 'mlflow.db'}")
    artifacts = {a.path for a in client.list_artifacts(compared.second.run_id)}
    assert {"comparison.md", "comparison.csv", "pareto.png", "pareto.html"} <= artifacts


def test_no_study_says_which_command_to_run(compared: Compared, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(compared.root)
    empty = [*compared.overrides, f"study.storage=sqlite:///{compared.root / 'empty.db'}"]
    with pytest.raises(KDError, match=r"python -m studies\.run task=sst2 student=bilstm"):
        compare(compose(empty))
    assert main([*empty]) == 2


def test_pruned_variants_show_score_against_sparsity_and_latency(compared: Compared) -> None:
    """compare.sparsities retrains the best config structurally pruned; rows, plot and MLflow metrics show it."""
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(compared.root)
        result = compare(compose([*compared.overrides, "compare.sparsities=[0.5]"]))
    rows = {row["model"]: row for row in result.rows}
    assert set(rows) == {"teacher (tiny)", "bilstm", "bilstm-pruned50"}
    dense, pruned = rows["bilstm"], rows["bilstm-pruned50"]
    assert dense["sparsity"].mean == 0.0 and pruned["sparsity"].mean > 0.2
    assert pruned["params_non_embedding"].mean < dense["params_non_embedding"].mean
    assert math.isfinite(pruned["latency_ms_b1"].mean) and "| sparsity |" in result.markdown
    assert result.files["sparsity_png"].stat().st_size > 0
    run = MlflowClient(tracking_uri=f"sqlite:///{compared.root / 'mlflow.db'}").get_run(result.run_id)
    assert run.data.metrics["bilstm-pruned50.sparsity"] > 0.2
    assert "bilstm-pruned50.latency_ms_b1" in run.data.metrics


def test_seed_runs_are_mlflow_models(compared: Compared) -> None:
    """Every retrained seed keeps its student as an MLflow Model (python_function), as a study's best does."""
    runs = _runs(compared.root, "seed_run")
    assert runs and all(r.data.tags.get("has_pyfunc") == "true" for r in runs)
    mlflow.set_tracking_uri(f"sqlite:///{compared.root / 'mlflow.db'}")
    frame = mlflow.pyfunc.load_model(f"runs:/{runs[0].info.run_id}/model").predict(["the film was great"])
    assert list(frame.columns) == ["label", "p_negative", "p_positive"]


def test_near_equal_students_get_their_names_apart_on_the_pareto_plot() -> None:
    from studies.report import LABEL_ABOVE as above
    from studies.report import LABEL_BELOW as below
    from studies.report import Point, label_offsets

    points = [
        Point("teacher", 1.0, 0.95, teacher=True),
        Point("bilstm", 0.16, 0.895),
        Point("chain", 0.15, 0.894),  # as on TREC: same score, near-same latency as the BiLSTM
        Point("tree", 0.02, 0.68),
    ]
    assert label_offsets(points) == [above, above, below, above]
