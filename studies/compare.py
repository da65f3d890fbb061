"""Compare every studied student type with the teacher: ``python -m studies.compare task=sst2``.

For each student type that has an Optuna study on this task and this transfer cache, the best
complete trial's configuration is retrained with ``compare.seeds`` seeds, because one trial's
score is one draw of the seed lottery and the search picked the luckiest draw. Each seed's
retrain is an MLflow run (role=seed_run) keyed by its configuration hash, so a rerun reuses it
instead of training again. The report (terminal, Markdown, CSV, Pareto plot as PNG and HTML)
is logged as the artifacts of one MLflow run tagged role=comparison.
"""

from __future__ import annotations

import logging
import math
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import DictConfig
from tqdm.auto import tqdm

from students.base import Student
from studies.best import BestConfig, as_names, find_studied, no_study_error
from studies.cli import run_cli
from studies.report import (
    Cell,
    Column,
    Point,
    Stat,
    curves_png,
    markdown_table,
    pareto_html,
    pareto_png,
    terminal_table,
    write_csv,
)
from transfer.errors import KDError

log = logging.getLogger("studies.compare")


@dataclass
class SeedResult:
    seed: int
    run_id: str
    metrics: dict[str, float]
    reused: bool  # found in MLflow instead of trained now
    remeasured: bool  # latencies measured in this process (trained now, or reused with its saved model)


@dataclass
class StudentResult:
    best: BestConfig
    config_hash: str
    seeds: list[SeedResult] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)  # one line per seed that could not be trained
    label: str = ""  # the row's name: the student type, or e.g. "bilstm-pruned50" for a pruned variant

    def __post_init__(self) -> None:
        self.label = self.label or self.best.student


def pruned_variants(best: BestConfig, sparsities: Sequence[float]) -> list[tuple[str, BestConfig]]:
    """The best configuration structurally pruned to each sparsity (neural students only), with its row label.

    Each variant is retrained like the best config itself (same seeds, its own config hash), so
    the report shows, per student, score against sparsity and against latency.
    """
    from dataclasses import replace

    from students.registry import get_student_class

    if "sparsity" not in get_student_class(best.student).hparam_names():
        return []
    return [
        (
            f"{best.student}-pruned{round(100 * s)}",
            replace(best, hparams={**best.hparams, "sparsity": float(s), "prune_structure": "structured"}),
        )
        for s in sparsities
    ]


@dataclass
class Comparison:
    """Everything the report shows, for callers (and tests) that want the numbers rather than the files."""

    columns: list[Column]
    rows: list[dict[str, Cell]]
    missing: dict[str, str]
    results: list[StudentResult]
    teacher: dict[str, float]
    files: dict[str, Path]
    run_id: str
    metric: str
    markdown: str


FRESH_SEED_START = 1000  # retrain seeds count up from here, skipping any seed a search trained with


def seeds_of(cfg: DictConfig, used: Sequence[int] = ()) -> list[int]:
    """``compare.seeds``: a count K (the first K seeds from 1000 that the search never used) or an explicit list.

    A trial's own seed is the lucky draw it was selected for: retraining with it would report the
    selection's luck again. An explicit list that contains a search seed is refused.
    """
    value = cfg.compare.seeds
    taken = set(int(u) for u in used)
    if isinstance(value, int):
        if value < 1:
            raise KDError(f"compare.seeds must be at least 1, got {value}")
        seeds: list[int] = []
        candidate = FRESH_SEED_START
        while len(seeds) < value:
            if candidate not in taken:
                seeds.append(candidate)
            candidate += 1
        return seeds
    seeds = [int(s) for s in value]
    reused = sorted(taken & set(seeds))
    if reused:
        raise KDError(
            f"compare.seeds={seeds} contains seed(s) {reused} that the search already trained with; "
            "retrain on seeds the search never used (e.g. compare.seeds=3 picks them)"
        )
    return seeds


def speed_floors(cfg: DictConfig) -> dict[str, float]:
    """``compare.min_speedup``: per student, the batch-1 speed-up over the teacher its best trial must have."""
    return {str(k): float(v) for k, v in (cfg.compare.get("min_speedup") or {}).items()}


def dir_size(path: str | Path) -> int:
    """Bytes of every file under ``path``: what the model costs to ship."""
    return sum(p.stat().st_size for p in Path(path).rglob("*") if p.is_file())


def find_seed_run(experiment: str, tags: dict[str, str], needed: Sequence[str]) -> Any | None:
    """A finished run with exactly these tags that holds every ``needed`` metric (else it is retrained)."""
    import mlflow

    exp = mlflow.get_experiment_by_name(experiment)
    if exp is None:
        return None
    query = " and ".join([*(f"tags.{k} = '{v}'" for k, v in tags.items()), "attributes.status = 'FINISHED'"])
    runs = mlflow.search_runs([exp.experiment_id], filter_string=query, output_format="list")
    for run in runs:
        if all(m in run.data.metrics for m in needed):
            return run
    return None


def train_seed(prep: Any, best: BestConfig, seed: int, batch: int, log_model: bool) -> dict[str, float]:
    """Fit the best configuration with ``seed``, measure it the way every model is measured, log its model."""
    from studies.measure import fit_and_measure
    from studies.tracking import log_student

    measured = fit_and_measure(prep, best.student, {**best.hparams, "seed": seed}, batch_latency=batch)
    with tempfile.TemporaryDirectory() as tmp:
        measured.metrics["size_bytes"] = float(dir_size(measured.student.save(Path(tmp) / "student")))
    if log_model:
        log_student(measured.student, "student", prep.cache.label_names, prep.task.dev.texts[:2])
    return measured.metrics


def remeasure(run: Any, prep: Any, batch: int) -> dict[str, float] | None:
    """Latencies of a reused run's saved model, measured now beside the teacher (same process, same minutes)."""
    import mlflow

    from studies.measure import latency_beside_teacher, serving_form

    if run.data.tags.get("has_model") != "true":
        return None
    with tempfile.TemporaryDirectory() as tmp:
        local = mlflow.artifacts.download_artifacts(run_id=run.info.run_id, artifact_path="student", dst_path=tmp)
        student = Student.load(local).with_runtime(None, False)
        serving = serving_form(student, prep.task.dev.texts)
        return latency_beside_teacher(student, prep, serving=serving) | latency_beside_teacher(
            student, prep, batch, serving
        )


def seed_result(
    prep: Any, experiment: str, best: BestConfig, chash: str, seed: int, batch: int, label: str = ""
) -> SeedResult:
    """Reuse the seed run with these tags if one finished, else train and log a new one."""
    import mlflow

    from studies.tracking import flat_params

    tags = {
        "role": "seed_run",
        "student": best.student,
        "study_name": best.study_name,
        "seed": str(seed),
        "config_hash": chash,
        "cache_key": prep.cache.key,
    }
    needed = [prep.report_metric, "test_agreement", "latency_ratio_teacher", "size_bytes", "train_seconds"]
    existing = find_seed_run(experiment, tags, needed)
    if existing is not None:
        fresh = remeasure(existing, prep, batch)
        metrics = {**existing.data.metrics, **(fresh or {})}
        return SeedResult(seed, existing.info.run_id, metrics, reused=True, remeasured=fresh is not None)
    extra = {
        "teacher_fingerprint": prep.teacher.fingerprint,
        "task": str(prep.task.name),
        "best_trial": str(best.trial_number),
        "hparams_source": best.hparams_source,
    }
    with mlflow.start_run(run_name=f"{label or best.student}-seed-{seed}", tags={**tags, **extra}) as run:
        mlflow.log_params(flat_params({**best.hparams, "seed": seed}))
        metrics = train_seed(prep, best, seed, batch, str(prep.cfg.tracking.log_models) != "none")
        mlflow.log_metrics(metrics)
        return SeedResult(seed, run.info.run_id, metrics, reused=False, remeasured=True)


def measure_teacher(prep: Any, batch: int) -> dict[str, float]:
    """The teacher's row, with its latencies measured in this process (the ratios' denominators)."""
    from studies.evaluate import latency_ms

    metrics = dict(prep.teacher_metrics)
    samples = int(prep.cfg.tracking.latency_samples)
    metrics[f"latency_ms_b{batch}"] = latency_ms(prep.teacher.predict_logits, prep.task.dev.texts, samples, batch)
    metrics["size_bytes"] = float(dir_size(prep.teacher.path))
    return metrics


def columns_for(metric: str, batch: int) -> list[Column]:
    return [
        Column("model", "model"),
        Column("n", "seeds", "d"),
        Column(metric, metric.replace("_", " "), ".4f"),
        Column("pct_of_teacher", "% of teacher", ".1f"),
        Column("test_agreement", "test agreement", ".3f"),
        Column("params_total", "params", ",.0f"),
        Column("params_non_embedding", "params non-emb.", ",.0f"),
        Column("latency_ms_b1", "latency b1 ms", ".2f"),
        Column(f"latency_ms_b{batch}", f"latency b{batch} ms", ".2f"),
        Column("speedup_b1", "speed-up b1", ".3g"),
        Column(f"speedup_b{batch}", f"speed-up b{batch}", ".3g"),
        Column("size_mb", "size MB", ".2f"),
        Column("sparsity", "sparsity", ".2f"),
        Column("train_seconds", "train s", ".1f"),
    ]


EXTRA_CSV = [
    Column("dev_pct_of_teacher", "% of teacher (dev)", ".1f"),  # what a "best student" is chosen on
    Column("study", "study"),
    Column("best_trial", "trial", "d"),
    Column("config_hash", "config hash"),
]


def _ratio(numerator: float, denominator: float) -> float:
    return numerator / denominator if denominator and math.isfinite(denominator) else float("nan")


def serving_form_of(runs: Sequence[dict[str, float]]) -> str:
    """What the batch-1 speed-up was timed on: "serving" when every seed's serving form was, else "module"."""
    timed = [m.get("latency_b1_serving_form") for m in runs]
    return "serving" if timed and all(t == 1.0 for t in timed) else "module"


def student_row(result: StudentResult, teacher: dict[str, float], metric: str, batch: int) -> dict[str, Cell]:
    """Mean ± sd over seeds; % of teacher = mean / teacher score; speed-up = mean of the per-seed ratios.

    Each seed's ratio comes from the teacher and that student timed side by side (alternating
    blocks), so the speed-up never divides figures taken minutes apart under other load.
    """
    runs = [s.metrics for s in result.seeds]

    def stat(key: str) -> Stat:
        return Stat.of([m.get(key, float("nan")) for m in runs])

    def constant_or_stat(key: str) -> Stat:  # parameter counts rarely vary with the seed: no "± 0"
        values = {m.get(key) for m in runs}
        return Stat.of([m.get(key, float("nan")) for m in runs], single=len(values) == 1)

    score = stat(metric)
    b1, bb = stat("latency_ms_b1"), stat(f"latency_ms_b{batch}")
    return {
        "model": result.label,
        "n": len(runs),
        metric: score,
        "pct_of_teacher": score.scaled(_ratio(100.0, teacher[metric])),
        "dev_pct_of_teacher": stat("dev_share_of_teacher").scaled(100.0),  # each seed's, as fit_and_measure logs it
        "test_agreement": stat("test_agreement"),
        "params_total": constant_or_stat("params_total"),
        "params_non_embedding": constant_or_stat("params_non_embedding"),
        "latency_ms_b1": b1,
        f"latency_ms_b{batch}": bb,
        "speedup_b1": stat("latency_ratio_teacher").mean,
        f"speedup_b{batch}": stat(f"latency_ratio_teacher_b{batch}").mean,
        "speedup_form": serving_form_of(runs),
        "size_mb": stat("size_bytes").scaled(1e-6),
        "sparsity": stat("sparsity"),  # achieved: share of non-embedding weights pruned (0 when not pruned)
        "train_seconds": stat("train_seconds"),
        "study": result.best.study_name,
        "best_trial": result.best.trial_number,
        "config_hash": result.config_hash,
    }


def teacher_row(teacher: dict[str, float], metric: str, batch: int, label: str) -> dict[str, Cell]:
    def one(key: str) -> Stat:
        return Stat.of([teacher.get(key, float("nan"))], single=True)

    return {
        "model": f"teacher ({label})",
        "n": 1,
        metric: one(metric),
        "pct_of_teacher": Stat(100.0, None, 1),
        "dev_pct_of_teacher": Stat(100.0, None, 1),
        "test_agreement": one("test_agreement"),
        "params_total": one("params_total"),
        "params_non_embedding": one("params_non_embedding"),
        "latency_ms_b1": one("latency_ms_b1"),
        f"latency_ms_b{batch}": one(f"latency_ms_b{batch}"),
        "speedup_b1": 1.0,
        f"speedup_b{batch}": 1.0,
        "size_mb": one("size_bytes").scaled(1e-6),
        "sparsity": 0.0,
        "train_seconds": one("train_seconds"),
    }


def sparsity_series(
    rows: Sequence[dict[str, Cell]], results: Sequence[StudentResult], metric: str
) -> dict[str, list[tuple[float, float, float]]]:
    """Per student type, (mean sparsity, mean score, score sd) of its best config and of each pruned variant."""
    series: dict[str, list[tuple[float, float, float]]] = {}
    for row, result in zip(rows, results, strict=True):
        sparsity, score = row["sparsity"], row[metric]
        if isinstance(sparsity, Stat) and isinstance(score, Stat):
            series.setdefault(result.best.student, []).append((sparsity.mean, score.mean, score.sd or 0.0))
    return series


def render_markdown(
    prep: Any,
    metric: str,
    columns: list[Column],
    rows: list[dict[str, Cell]],
    results: list[StudentResult],
    missing: dict[str, str],
    batch: int,
) -> str:
    reused = sum(s.reused for r in results for s in r.seeds)
    trained = sum(not s.reused for r in results for s in r.seeds)
    stale = sum(not s.remeasured for r in results for s in r.seeds)
    lines = [
        f"# Students vs teacher on {prep.task.name}",
        "",
        f"Teacher `{prep.cfg.teacher.name}` (fingerprint `{prep.teacher.fingerprint}`), "
        f"transfer cache `{prep.cache.key}`. Each student type: the best complete trial of its Optuna study, "
        "retrained with every seed; cells are mean ± sd (sample sd) over seeds."
        + "".join(
            f" The best `{name}` is its best trial measured ≥ {n:g}× the teacher's batch-1 speed in its study."
            for name, n in sorted(speed_floors(prep.cfg).items())
        ),
        "",
        markdown_table(columns, rows),
        "",
        f"- % of teacher = student mean {metric} / teacher {metric} × 100.",
        f"- speed-up = mean over seeds of teacher latency / student latency, both timed side by side in alternating "
        f"blocks (batch 1 and batch {batch}, raw text in, logits out, median over calls, one thread); "
        "every latency is measured in this process, reused seed runs through their saved model"
        + (
            f" (except {stale} seed runs without a saved model: their latencies are from when they were trained)."
            if stale
            else "."
        ),
        "- size = bytes of the saved model directory (weights, tokenizer, settings).",
        "- sparsity = share of the non-embedding weights pruned during distillation (structured: units removed "
        "from the saved model; unstructured: zeros, stored sparse only where smaller). `<student>-prunedNN` rows "
        "are the best configuration retrained with structured pruning to NN % (compare.sparsities).",
        f"- seed runs: {trained} trained now, {reused} reused from MLflow (role=seed_run, same config hash).",
    ]
    if missing:
        lines += ["", "## Not compared", ""]
        lines += [f"- `{name}`: {why}" for name, why in sorted(missing.items())]
    failures = [(r.best.student, e) for r in results for e in r.errors]
    if failures:
        lines += ["", "## Seeds that failed", ""] + [f"- `{name}`: {err}" for name, err in failures]
    return "\n".join(lines) + "\n"


def compare(cfg: DictConfig, overrides: Sequence[str] = ()) -> Comparison:
    """Retrain (or reuse) every studied student's best config over seeds and write the report."""
    import mlflow

    from studies import workers
    from studies.best import check_studies_exist
    from studies.pipeline import planned_teacher, prepare
    from studies.tracking import default_storage, set_runs_view, setup_mlflow
    from studies.validate import validate

    validate(cfg)
    seeds_of(cfg)  # a bad compare.seeds fails now, not after the teacher is prepared
    experiment = cfg.tracking.experiment or f"kd-{cfg.task.name}"
    setup_mlflow(cfg.tracking.uri, experiment)
    batch = int(cfg.compare.batch_latency)
    wanted = as_names(cfg.compare.students)
    storage_url = cfg.study.storage or default_storage()
    storage = workers.make_storage(storage_url, int(cfg.study.heartbeat_interval))
    check_studies_exist(storage, str(cfg.task.name), planned_teacher(cfg), storage_url, list(overrides))
    prep = prepare(cfg)
    set_runs_view(mlflow.get_experiment_by_name(experiment).experiment_id, prep.task.metric_names)
    only = as_names(cfg.compare.get("studies"))
    studied = find_studied(storage, str(cfg.task.name), prep.cache.key, wanted, speed_floors(cfg), only)
    seeds = seeds_of(cfg, [s for best in studied.best for s in best.search_seeds])
    if not studied.best:
        if wanted is None and all(why == "no study" for why in studied.missing.values()):
            raise no_study_error(str(cfg.task.name), prep.cache.key, storage_url, list(overrides))
        log.warning("nothing to compare: %s", studied.missing)
    if studied.missing:
        print("not compared: " + ", ".join(f"{k} ({v})" for k, v in sorted(studied.missing.items())), flush=True)

    teacher = measure_teacher(prep, batch)
    results = [StudentResult(best, best.config_hash(prep.cache.key)) for best in studied.best]
    sparsities = [float(s) for s in (cfg.compare.get("sparsities") or [])]
    results += [
        StudentResult(variant, variant.config_hash(prep.cache.key), label=label)
        for best in studied.best
        for label, variant in pruned_variants(best, sparsities)
    ]
    jobs = [(r, seed) for r in results for seed in seeds]
    for result, seed in tqdm(jobs, desc="seed runs", unit="run", disable=not cfg.progress or not jobs):
        try:
            result.seeds.append(
                seed_result(prep, experiment, result.best, result.config_hash, seed, batch, result.label)
            )
        except (KDError, ArithmeticError, RuntimeError, ValueError) as err:  # one bad seed must not sink the report
            log.warning("%s seed %d failed: %s", result.label, seed, err)
            result.errors.append(f"seed {seed}: {type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}")
    for result in results:
        if not result.seeds:
            studied.missing[result.label] = "every seed failed: " + "; ".join(result.errors)
    done = [r for r in results if r.seeds]

    metric = prep.report_metric  # chosen on dev, reported on test
    columns = columns_for(metric, batch)
    rows = [teacher_row(teacher, metric, batch, prep.teacher_label)]
    rows += [student_row(r, teacher, metric, batch) for r in done]
    markdown = render_markdown(prep, metric, columns, rows, results, studied.missing, batch)

    out_dir = Path(str(cfg.compare.out_dir)) / f"compare-{cfg.task.name}-{prep.teacher_label}-{prep.cache.key[:6]}"
    out_dir.mkdir(parents=True, exist_ok=True)
    points = [Point(str(rows[0]["model"]), teacher["latency_ms_b1"], teacher[metric], teacher=True)]
    for row in rows[1:]:
        lat, score = row["latency_ms_b1"], row[metric]
        assert isinstance(lat, Stat) and isinstance(score, Stat)
        points.append(Point(str(row["model"]), lat.mean, score.mean, lat.sd or 0.0, score.sd or 0.0))
    title = f"{cfg.task.name}: {metric} vs batch-1 latency (mean ± sd over {len(seeds)} seeds)"
    files = {
        "markdown": out_dir / "comparison.md",
        "csv": write_csv(out_dir / "comparison.csv", columns + EXTRA_CSV, rows),
        "png": pareto_png(out_dir / "pareto.png", points, "batch-1 latency (ms, log scale)", metric, title),
        "html": pareto_html(out_dir / "pareto.html", points, "batch-1 latency (ms, log scale)", metric, title),
        "sparsity_png": curves_png(
            out_dir / "sparsity.png",
            sparsity_series(rows[1:], done, metric),
            "sparsity (share of non-embedding weights pruned)",
            metric,
            f"{cfg.task.name}: {metric} vs sparsity per student (mean ± sd over {len(seeds)} seeds)",
        ),
    }
    files["markdown"].write_text(markdown, encoding="utf-8")

    tags = {
        "role": "comparison",
        "task": str(cfg.task.name),
        "cache_key": prep.cache.key,
        "teacher_fingerprint": prep.teacher.fingerprint,
        "students": ",".join(r.label for r in done),
        "missing": ",".join(sorted(studied.missing)),
    }
    note = (
        f"Every studied student's best configuration retrained over {len(seeds)} seed(s), beside the teacher: "
        f"the report is `comparison.md` (and `.csv`), the Pareto plot of {metric} vs batch-1 latency is "
        "`pareto.png` (interactive: `pareto.html`), in this run's artifacts; each seed is a `<student>-seed-<n>` run."
    )
    with mlflow.start_run(run_name=f"compare-{cfg.task.name}", tags={**tags, "mlflow.note.content": note}) as run:
        mlflow.log_params({"seeds": ",".join(map(str, seeds)), "batch_latency": batch})
        for row in rows[1:]:
            for key, name in ((metric, f"{metric}_mean"), ("sparsity", "sparsity"), ("latency_ms_b1", "latency_ms_b1")):
                value = row[key]
                if isinstance(value, Stat) and math.isfinite(value.mean):
                    mlflow.log_metric(f"{row['model']}.{name}", value.mean)
        for path in files.values():
            mlflow.log_artifact(str(path))
        seed_runs = {r.best.student: {str(s.seed): s.run_id for s in r.seeds} for r in results}
        mlflow.log_dict({"seed_runs": seed_runs, "missing": studied.missing}, "seed_runs.json")
    return Comparison(columns, rows, studied.missing, results, teacher, files, run.info.run_id, metric, markdown)


def main(argv: Sequence[str] | None = None) -> int:
    return run_cli(argv, _usage, compare, _show, "finished seed runs are stored; rerun the same command to reuse them")


def _usage() -> str:
    return (
        "usage: python -m studies.compare task=<task> [compare.seeds=3] [compare.students=[bilstm,cnn]] "
        "[study/teacher/data overrides as given to studies.run]"
    )


def _show(result: Any) -> None:
    print()
    print(terminal_table(result.columns, result.rows))
    if result.missing:
        print("\nnot compared: " + "; ".join(f"{k} ({v})" for k, v in sorted(result.missing.items())))
    print(f"\nreport: {result.files['markdown'].parent}  (MLflow run {result.run_id}, role=comparison)")


if __name__ == "__main__":
    sys.exit(main())
