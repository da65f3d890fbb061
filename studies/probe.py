"""Probe what the teacher's layers and the best students encode: ``python -m studies.probe task=sst2``.

SentEval-style (Conneau et al. 2018): for each probing task generated from the task's own
sentences (``studies.probing_tasks``), a logistic-regression probe is trained on frozen sentence
vectors and scored on held-out sentences. Vectors: the mean-pooled hidden state of every teacher
layer (layer 0 = embeddings), and each best student's sentence representation (the vector right
before its classifier head). Probing sentences are new texts (shifted bigrams, replaced words), so
they go through the teacher again: this is analysis, the transfer cache is not touched.
"""

from __future__ import annotations

import logging
import sys
import tempfile
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from omegaconf import DictConfig
from tqdm.auto import tqdm

from students.base import Student
from studies.best import BestConfig, as_names, find_studied
from studies.cli import run_cli
from studies.probing_tasks import ProbingTask, generate_tasks
from studies.report import Column, heatmap_png, markdown_table, terminal_table, write_csv
from transfer.errors import KDError

log = logging.getLogger("studies.probe")


@dataclass(frozen=True)
class ProbeScore:
    accuracy: float  # held-out accuracy of the probe
    chance: float  # held-out accuracy of always predicting the training majority class
    n_train: int
    n_test: int


def probe_accuracy(features: np.ndarray, labels: np.ndarray, seed: int = 0, test_size: float = 0.25) -> ProbeScore:
    """Standardised features → logistic regression, fixed seed and split (the same split for every model)."""
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import train_test_split
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    x = np.asarray(features, dtype=np.float64).reshape(len(features), -1)
    y = np.asarray(labels)
    stratify = y if np.bincount(y).min(initial=len(y)) >= 2 else None
    x_tr, x_te, y_tr, y_te = train_test_split(x, y, test_size=test_size, random_state=seed, stratify=stratify)
    model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000, random_state=seed))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        model.fit(x_tr, y_tr)
    majority = np.bincount(y_tr).argmax()
    return ProbeScore(float(model.score(x_te, y_te)), float((y_te == majority).mean()), len(y_tr), len(y_te))


def teacher_features(teacher: Any, texts: list[str], batch_size: int, progress: bool) -> np.ndarray:
    """[N, L, H] mean-pooled hidden states of every teacher layer, in length-sorted batches."""
    from transfer.batching import length_sorted_batches

    out: np.ndarray | None = None
    batches = length_sorted_batches(teacher.text_lengths(texts), batch_size)
    for idx in tqdm(batches, desc="teacher layers", unit="batch", disable=not progress):
        _, pooled = teacher.label_batch([texts[i] for i in idx])
        if out is None:
            out = np.zeros((len(texts), *pooled.shape[1:]), dtype=np.float32)
        out[idx] = pooled
    assert out is not None, "no probing texts"
    return out


@dataclass
class ModelSource:
    """Where a student's probed model came from (for the report)."""

    best: BestConfig
    student: Student | None
    origin: str  # "trial model", "seed run model", "retrained (seed N)", or why it was skipped


def _download(run_id: str) -> Student:
    import mlflow

    with tempfile.TemporaryDirectory() as tmp:
        local = mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path="student", dst_path=tmp)
        return Student.load(local)


def best_student(prep: Any, best: BestConfig, experiment: str, first_seed: int) -> ModelSource:
    """The trial's logged model if any, else a comparison seed run's model, else a retrain with the first seed."""
    import mlflow

    from studies.compare import find_seed_run
    from studies.measure import fit_and_measure

    if best.trial_run_id:
        run = mlflow.get_run(best.trial_run_id)
        if run.data.tags.get("has_model") == "true":
            return ModelSource(best, _download(best.trial_run_id), "trial model")
    tags = {
        "role": "seed_run",
        "student": best.student,
        "study_name": best.study_name,
        "seed": str(first_seed),
        "config_hash": best.config_hash(prep.cache.key),
        "cache_key": prep.cache.key,
        "has_model": "true",
    }
    seed_run = find_seed_run(experiment, tags, [])
    if seed_run is not None:
        return ModelSource(best, _download(seed_run.info.run_id), "seed run model")
    measured = fit_and_measure(prep, best.student, {**best.hparams, "seed": first_seed})
    return ModelSource(best, measured.student, f"retrained (seed {first_seed})")


@dataclass
class ProbeResult:
    columns: list[Column]
    rows: list[dict[str, Any]]
    tasks: list[ProbingTask]
    models: list[str]  # heatmap columns: teacher layers then students
    accuracy: np.ndarray  # [tasks, models]
    notes: list[str] = field(default_factory=list)
    files: dict[str, Path] = field(default_factory=dict)
    run_id: str = ""


def probe(cfg: DictConfig, overrides: Sequence[str] = ()) -> ProbeResult:
    """Generate the probing tasks, embed them with every teacher layer and best student, fit the probes, report."""
    import mlflow

    from studies import workers
    from studies.compare import seeds_of
    from studies.pipeline import prepare
    from studies.tracking import default_storage, setup_mlflow

    experiment = cfg.tracking.experiment or f"kd-{cfg.task.name}"
    setup_mlflow(cfg.tracking.uri, experiment)
    pcfg = cfg.probe
    seed = int(pcfg.seed)
    prep = prepare(cfg)
    tasks, skipped = generate_tasks(
        prep.task.train.texts + prep.task.dev.texts,
        seed=seed,
        max_sentences=None if pcfg.max_sentences is None else int(pcfg.max_sentences),
        names=as_names(pcfg.tasks),
        word_content_k=int(pcfg.word_content_k),
    )
    notes = [f"probing task {name} skipped: {why}" for name, why in skipped.items()]
    if not tasks:
        raise KDError("no probing task could be generated from this task's sentences (too few or too short)")

    storage_url = cfg.study.storage or default_storage()
    storage = workers.make_storage(storage_url, int(cfg.study.heartbeat_interval))
    wanted = as_names(pcfg.get("students"))
    studied = find_studied(storage, str(cfg.task.name), prep.cache.key, wanted)
    if not studied.best:
        notes.append(
            f"no studied student on this cache: probing the teacher only (run python -m studies.run "
            f"task={cfg.task.name} student=<name> first)"
        )
    notes += [f"student {name} not probed: {why}" for name, why in sorted(studied.missing.items())]

    # Every distinct text once through each model; each task then indexes its rows.
    texts = list(dict.fromkeys(t for task in tasks for t in task.texts))
    row_of = {t: i for i, t in enumerate(texts)}
    progress = bool(cfg.progress)
    features: dict[str, np.ndarray] = {}
    layers = teacher_features(prep.teacher, texts, int(cfg.transfer.label_batch_size), progress)
    for layer in range(layers.shape[1]):
        features[f"teacher L{layer}"] = layers[:, layer]
    for best in studied.best:
        try:  # the trial's model, else the comparison's first (fresh-seed) run, else that retrain now
            source = best_student(prep, best, experiment, seeds_of(cfg, best.search_seeds)[0])
        except (KDError, RuntimeError, ValueError, OSError) as err:
            notes.append(f"student {best.student} not probed: {type(err).__name__}: {err}")
            continue
        represent = getattr(source.student, "sentence_representations", None)
        if represent is None:
            notes.append(f"student {best.student} not probed: it has no sentence representations")
            continue
        features[best.student] = np.asarray(represent(texts), dtype=np.float32)
        notes.append(f"student {best.student}: {source.origin} (study {best.study_name}, trial {best.trial_number})")

    models = list(features)
    accuracy = np.full((len(tasks), len(models)), np.nan)
    rows: list[dict[str, Any]] = []
    jobs = [(i, j) for i in range(len(tasks)) for j in range(len(models))]
    scores: dict[tuple[int, int], ProbeScore] = {}
    for i, j in tqdm(jobs, desc="probes", unit="probe", disable=not progress):
        idx = np.array([row_of[t] for t in tasks[i].texts])
        scores[i, j] = probe_accuracy(features[models[j]][idx], tasks[i].labels, seed, float(pcfg.test_size))
        accuracy[i, j] = scores[i, j].accuracy
    for i, task in enumerate(tasks):
        first = scores.get((i, 0))
        row: dict[str, Any] = {
            "task": task.name,
            "n": len(task),
            "classes": len(task.classes),
            "chance": first.chance if first else float("nan"),
        }
        row |= {m: accuracy[i, j] for j, m in enumerate(models)}
        rows.append(row)
    columns = [Column("task", "probing task"), Column("n", "n", "d"), Column("classes", "classes", "d")]
    columns += [Column("chance", "majority", ".3f")] + [Column(m, m, ".3f") for m in models]

    out_dir = Path(str(pcfg.out_dir)) / f"probe-{cfg.task.name}-{prep.teacher_label}-{prep.cache.key[:6]}"
    out_dir.mkdir(parents=True, exist_ok=True)
    markdown = render_markdown(prep, tasks, columns, rows, notes, seed, float(pcfg.test_size))
    files = {
        "markdown": out_dir / "probe.md",
        "csv": write_csv(out_dir / "probe.csv", columns, rows),
        "png": heatmap_png(
            out_dir / "probe_heatmap.png",
            accuracy,
            [t.name for t in tasks],
            models,
            f"{cfg.task.name}: probe accuracy (held-out {float(pcfg.test_size):.0%})",
        ),
    }
    files["markdown"].write_text(markdown, encoding="utf-8")
    tags = {
        "role": "probe",
        "task": str(cfg.task.name),
        "cache_key": prep.cache.key,
        "teacher_fingerprint": prep.teacher.fingerprint,
        "students": ",".join(m for m in models if not m.startswith("teacher ")),
    }
    with mlflow.start_run(run_name=f"probe-{cfg.task.name}", tags=tags) as run:
        mlflow.log_params({"probe.seed": seed, "probe.max_sentences": pcfg.max_sentences, "probe.tasks": len(tasks)})
        mlflow.log_metrics(
            {
                f"{t.name}.{m.replace(' ', '_')}": float(accuracy[i, j])
                for i, t in enumerate(tasks)
                for j, m in enumerate(models)
            }
        )
        for path in files.values():
            mlflow.log_artifact(str(path))
    return ProbeResult(columns, rows, tasks, models, accuracy, notes, files, run.info.run_id)


def render_markdown(
    prep: Any,
    tasks: list[ProbingTask],
    columns: list[Column],
    rows: list[dict[str, Any]],
    notes: list[str],
    seed: int,
    test_size: float,
) -> str:
    lines = [
        f"# Probing on {prep.task.name}",
        "",
        f"Teacher `{prep.cfg.teacher.name}` (`{prep.teacher.fingerprint}`), transfer cache `{prep.cache.key}`. "
        f"Logistic-regression probes on standardised frozen sentence vectors; held-out accuracy on {test_size:.0%} "
        f"of each task (seed {seed}). `teacher Lk` = mean-pooled hidden state of teacher layer k (L0 = embeddings); "
        "a student = its sentence vector before the classifier head. `majority` = always the most frequent class.",
        "",
        markdown_table(columns, rows),
        "",
        "## Probing tasks",
        "",
    ]
    lines += [f"- `{t.name}` ({len(t)} sentences): {t.description}; classes: {', '.join(t.classes)}" for t in tasks]
    if notes:
        lines += ["", "## Notes", ""] + [f"- {n}" for n in notes]
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    return run_cli(argv, _usage, probe, _show, "nothing was logged; rerun the same command")


def _usage() -> str:
    return (
        "usage: python -m studies.probe task=<task> [probe.max_sentences=2000] [probe.tasks=[bigram_shift,...]] "
        "[study/teacher/data overrides as given to studies.run]"
    )


def _show(result: Any) -> None:
    print()
    print(terminal_table(result.columns, result.rows))
    for note in result.notes:
        print(f"- {note}")
    print(f"\nreport: {result.files['markdown'].parent}  (MLflow run {result.run_id}, role=probe)")


if __name__ == "__main__":
    sys.exit(main())
