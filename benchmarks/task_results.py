"""The results table's stored rows (``tasks.json``): grown task by task, and student by student.

A task rerun with all its students replaces that task's entry. A rerun of only some students
(``--students sst2=bert``) adds their rows to the stored ones, but only when both runs measured
the same teacher on the same setup (same overrides, same fine-tuned recipe, same dev and test
scores): shares and agreement are relative to the teacher, so rows measured against another
teacher (say, one re-fine-tuned on another machine whose arithmetic differs) must not share a
column. Otherwise the new run replaces the entry, and says so. The transfer set's size is a
student's budget, like its trials, not the teacher's: runs that differ only there share a table,
each run's budget line saying which size its rows had, and the task's wall time adds up the
ledger totals of every setup that still has rows.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from studies.report import Stat

log = logging.getLogger(__name__)

TASKS = ("sst2", "cola", "trec", "sara")
STUDENTS = ("bilstm", "cnn", "bert", "lgbm", "forest", "tree", "chain")
TEACHER_IDENTITY = ("key", "dev_scores", "epochs_scored")  # a teacher record's fields that must match to merge
STUDENT_BUDGET_KEYS = ("transfer.augment.n",)  # setup overrides that shape what students see, not the teacher


@dataclass
class Row:
    """One model on one task: what the table and the CSV show."""

    task: str
    model: str
    metric: str
    score: Stat
    pct: Stat
    agreement: Stat
    params_total: float
    params_non_embedding: float
    speedup_b1: float
    train_seconds: float
    dev_pct: Stat | None = None  # % of the teacher on dev: what "the best student" is chosen on (None: older rows)


@dataclass
class TaskResult:
    task: str
    rows: list[Row]
    missing: dict[str, str]
    minutes: float
    teacher_record: dict[str, Any]
    pareto: dict[str, Path]
    students: list[str]
    defaults_best: dict[str, bool | None]  # per student: was the best trial the enqueued defaults (None: no best)
    budget: str = ""  # what this task was run with, as the table states it
    command: str = ""  # the command line that made this task's rows
    setup: list[str] = field(default_factory=list)  # the task's Hydra overrides (teacher, transfer set), sorted
    earlier: list[dict[str, Any]] = field(default_factory=list)  # rows kept from earlier runs: models, budget, command
    minutes_by_setup: dict[str, float] = field(default_factory=dict)  # ledger total per setup behind the rows
    # per student row: the study and trial its configuration came from, that trial's dev score, and
    # whether that study is the one this run's setup searched (compare takes the best on dev over
    # every study of the task on the transfer set, so a better earlier study can supply the row)
    picked: dict[str, dict[str, Any]] = field(default_factory=dict)


def teacher_fingerprint(record: dict[str, Any]) -> str:
    """A short hash of what identifies a fine-tuned teacher (``TEACHER_IDENTITY``): its ledger total's key."""
    identity = {key: record.get(key) for key in TEACHER_IDENTITY}
    return hashlib.sha256(json.dumps(identity, sort_keys=True, default=str).encode()).hexdigest()[:12]


def setup_id(setup: Sequence[str]) -> str:
    return " ".join(sorted(setup))


def teacher_setup(setup: Sequence[str]) -> list[str]:
    """The overrides that decide the teacher and the task: the setup less the students' budget."""
    return sorted(o for o in setup if o.split("=", 1)[0].lstrip("+") not in STUDENT_BUDGET_KEYS)


def minutes_per_setup(result: TaskResult) -> dict[str, float]:
    """``result.minutes_by_setup``, or, for an entry stored before it existed, its one setup's total."""
    return dict(result.minutes_by_setup) or {setup_id(result.setup): result.minutes}


def model_key(model: str) -> str:
    """The teacher's row is labelled with its name (``teacher (minilm)``); the table calls it ``teacher``."""
    return "teacher" if model.startswith("teacher") else model


def result_to_json(result: TaskResult) -> dict[str, Any]:
    data = asdict(result)
    data["pareto"] = {k: Path(v).name for k, v in result.pareto.items()}  # beside the table: no machine's paths
    return data


def result_from_json(data: dict[str, Any]) -> TaskResult:
    stats = ("score", "pct", "agreement", "dev_pct")
    rows = [Row(**{**row, **{k: Stat(**row[k]) for k in stats if row.get(k)}}) for row in data.pop("rows")]
    pareto = {k: Path(v) for k, v in data.pop("pareto").items()}
    return TaskResult(rows=rows, pareto=pareto, **data)


def _teacher_score(result: TaskResult) -> float | None:
    row = next((r for r in result.rows if model_key(r.model) == "teacher"), None)
    return row.score.mean if row else None


def same_teacher(old: TaskResult, new: TaskResult) -> str | None:
    """None when ``new``'s rows can join ``old``'s; else why not."""
    if teacher_setup(old.setup) != teacher_setup(new.setup):
        return f"another setup ({' '.join(old.setup) or 'not recorded'} → {' '.join(new.setup)})"
    for key in TEACHER_IDENTITY:
        if old.teacher_record.get(key) != new.teacher_record.get(key):
            return f"another teacher (its {key} differs: {old.teacher_record.get(key)} → {new.teacher_record.get(key)})"
    if _teacher_score(old) != _teacher_score(new):
        return f"another teacher (test score {_teacher_score(old)} → {_teacher_score(new)})"
    return None


def _keep_stored_pick(old: dict[str, Any], new: dict[str, Any]) -> dict[str, Any]:
    """``new``'s record, with the learning-rate pick on dev that ``old``'s run made for this same teacher.

    A later run of some students can name the kept learning rate instead of fine-tuning the losing
    one again; the pick it would repeat still stands, and the table keeps saying what it saw.
    """
    if new.get("lr_choice") or not old.get("lr_choice"):
        return new
    return {**new, "lr_choice": old["lr_choice"]}


def _runs(result: TaskResult) -> list[dict[str, Any]]:
    """Every run behind ``result``'s rows, its own (last) included: models, budget, command, setup."""
    earlier_models = {m for e in result.earlier for m in e["models"]}
    own = [s for s in result.students if s not in earlier_models]
    mine = {"models": own, "budget": result.budget, "command": result.command, "setup": list(result.setup)}
    return [{"setup": list(result.setup), **e} for e in result.earlier] + [mine]


def combine(old: TaskResult, new: TaskResult) -> TaskResult:
    """``new`` with ``old``'s rows of the students it did not run, when both measured the same teacher."""
    kept_models = [s for s in old.students if s not in new.students]
    if not kept_models:
        return new
    why_not = same_teacher(old, new)
    if why_not:
        log.warning("%s: the stored rows of %s are dropped: %s", new.task, ", ".join(kept_models), why_not)
        print(f"[{new.task}] stored rows of {', '.join(kept_models)} dropped: {why_not}", flush=True)
        return new
    order = {m: i for i, m in enumerate(("teacher", *STUDENTS))}
    kept_rows = [r for r in old.rows if model_key(r.model) in kept_models]
    rows = sorted([*new.rows, *kept_rows], key=lambda r: order.get(model_key(r.model), len(order)))
    earlier = []
    for run in _runs(old):
        models = [m for m in run["models"] if m in kept_models]
        if models:
            earlier.append({**run, "models": models})
    setups_with_rows = {setup_id(run["setup"]) for run in earlier} | {setup_id(new.setup)}
    minutes = {s: m for s, m in minutes_per_setup(old).items() if s in setups_with_rows}
    minutes |= minutes_per_setup(new)  # the new setup's ledger total already holds its earlier sittings
    return TaskResult(
        task=new.task,
        rows=rows,
        missing={**{k: v for k, v in old.missing.items() if k in kept_models}, **new.missing},
        minutes=sum(minutes.values()),  # each setup's ledger total: every sitting, the earlier runs' included
        teacher_record=_keep_stored_pick(old.teacher_record, new.teacher_record),
        pareto=new.pareto,
        students=[s for s in STUDENTS if s in new.students or s in kept_models],
        defaults_best={**{k: v for k, v in old.defaults_best.items() if k in kept_models}, **new.defaults_best},
        budget=new.budget,
        command=new.command,
        setup=new.setup,
        earlier=earlier,
        minutes_by_setup=minutes,
        picked={**{k: v for k, v in old.picked.items() if k in kept_models}, **new.picked},
    )


def merge_results(path: Path, new: Sequence[TaskResult]) -> list[TaskResult]:
    """Store ``new`` in ``path`` (JSON), each task combined with its stored entry; every other task is kept.

    So each task can be (re)run on its own, even in parallel sittings, and the one table still
    holds every task, each row with the command that made it.
    """
    from filelock import FileLock

    with FileLock(str(path) + ".lock"):  # tasks finishing at once in parallel sittings keep each other's rows
        stored = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}
        for result in new:
            old = stored.get(result.task)
            merged = combine(result_from_json(dict(old)), result) if old else result
            stored[result.task] = result_to_json(merged)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(stored, indent=1, default=float), encoding="utf-8")
        tmp.replace(path)
    order = {t: i for i, t in enumerate(TASKS)}
    return sorted((result_from_json(dict(v)) for v in stored.values()), key=lambda r: order.get(r.task, len(order)))
