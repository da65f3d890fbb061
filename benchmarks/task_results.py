"""The results table's stored rows (``tasks.json``): grown task by task, and student by student.

A task rerun with all its students replaces that task's entry. A rerun of only some students
(``--students sst2=bert``) adds their rows to the stored ones, but only when both runs measured
the same teacher on the same setup (same overrides, same fine-tuned recipe, same dev and test
scores): shares and agreement are relative to the teacher, so rows measured against another
teacher (say, one re-fine-tuned on another machine whose arithmetic differs) must not share a
column. Otherwise the new run replaces the entry, and says so. The transfer set's size is a
student's budget, like its trials, not the teacher's: runs that differ only there share a table,
each run's budget line saying which size its rows had, and the task's wall time adds up the
ledger totals of every setup that still has rows or was measured against them.

When a student was measured on two transfer sets, which row the table shows is a choice, so it is
made on dev like every other: the row with the higher dev share stays (the later run's when either
lacks one, or when both ran on the same set: that is a remeasurement), and the other is listed as
measured and not kept, with its dev share and command, so the try is on record.
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
    speedup_form: str = "module"  # what speedup_b1 timed: "serving" (e.g. the folded BiLSTM) or the module


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
    # rows measured on another transfer set and not kept (worse on dev): model, row, budget, command, setup, pick
    not_kept: list[dict[str, Any]] = field(default_factory=list)


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


def _row_from_json(row: dict[str, Any]) -> Row:
    return Row(**{**row, **{k: Stat(**row[k]) for k in ("score", "pct", "agreement", "dev_pct") if row.get(k)}})


def result_from_json(data: dict[str, Any]) -> TaskResult:
    rows = [_row_from_json(row) for row in data.pop("rows")]
    pareto = {k: Path(v) for k, v in data.pop("pareto").items()}
    not_kept = [{**c, "row": _row_from_json(c["row"])} for c in data.pop("not_kept", [])]
    return TaskResult(rows=rows, pareto=pareto, not_kept=not_kept, **data)


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


def find_row(result: TaskResult, model: str) -> Row | None:
    return next((r for r in result.rows if model_key(r.model) == model), None)


def _measured(result: TaskResult) -> dict[tuple[str, str], dict[str, Any]]:
    """Every student row behind ``result``, shown or not kept, keyed by (student, setup): the candidates."""
    found = {(c["model"], setup_id(c["setup"])): c for c in result.not_kept}
    for run in _runs(result):
        for model in run["models"]:
            row = find_row(result, model)
            if row is not None:
                found[(model, setup_id(run["setup"]))] = {
                    "model": model, "row": row, "budget": run["budget"], "command": run["command"],
                    "setup": list(run["setup"]), "picked": result.picked.get(model),
                    "defaults_best": result.defaults_best.get(model),
                }  # fmt: skip
    return found


def _pick(candidates: Sequence[dict[str, Any]], latest: dict[str, Any]) -> dict[str, Any]:
    """The candidate the table shows: the best on dev when every one has a dev share, else ``latest``."""
    if all(c["row"].dev_pct is not None for c in candidates):  # a tie goes to ``latest``
        return max(candidates, key=lambda c: (c["row"].dev_pct.mean, c is latest))
    return latest


def combine(old: TaskResult, new: TaskResult) -> TaskResult:
    """The table after ``new``: per student, one row among every run's (same teacher only), chosen on dev.

    A student ``new`` did not run keeps its stored row. A student measured on several transfer sets
    (the latest measurement per set) shows the row with the best dev share and lists the others as
    not kept; rows without a dev share cannot be ranked, so the latest run's replaces them.
    """
    if not old.students:
        return new
    why_not = same_teacher(old, new)
    if why_not:
        dropped = [s for s in old.students if s not in new.students]
        if dropped:
            log.warning("%s: the stored rows of %s are dropped: %s", new.task, ", ".join(dropped), why_not)
            print(f"[{new.task}] stored rows of {', '.join(dropped)} dropped: {why_not}", flush=True)
        return new
    here = setup_id(new.setup)
    stored, fresh = _measured(old), _measured(new)
    measured = {**stored, **fresh}  # the latest measurement per (student, setup)
    shown_before = {m: c for (m, _), c in stored.items() if c["row"] is find_row(old, m)}
    shown: dict[str, dict[str, Any]] = {}
    not_kept: list[dict[str, Any]] = []
    for model in dict.fromkeys([*old.students, *new.students]):
        candidates = [c for (m, _), c in measured.items() if m == model]
        if not candidates:
            continue  # not compared (missing): nothing to show
        shown[model] = _pick(candidates, fresh.get((model, here)) or shown_before.get(model) or candidates[-1])
        not_kept += [c for c in candidates if c is not shown[model] and c["row"].dev_pct is not None]
        if find_row(new, model) is not None and shown[model]["row"] is not find_row(new, model):
            print(f"[{new.task}] {model}: a stored row is better on dev and stays; this run's is listed as not kept")
    from_new = {m for m, c in shown.items() if c["row"] is find_row(new, m)}
    earlier: dict[tuple[str, str, str], dict[str, Any]] = {}
    for model, c in shown.items():
        if model not in from_new:
            fields = {"budget": c["budget"], "command": c["command"], "setup": c["setup"]}
            run = earlier.setdefault((c["command"], c["budget"], setup_id(c["setup"])), {"models": [], **fields})
            run["models"].append(model)
    order = {m: i for i, m in enumerate(("teacher", *STUDENTS))}
    teacher = [r for r in new.rows if model_key(r.model) == "teacher"]
    rows = sorted([*teacher, *(c["row"] for c in shown.values())], key=lambda r: order.get(model_key(r.model), 99))
    setups = {setup_id(c["setup"]) for c in [*shown.values(), *not_kept]} | {here}
    minutes = {s: m for s, m in minutes_per_setup(old).items() if s in setups}
    minutes |= minutes_per_setup(new)  # the new setup's ledger total already holds its earlier sittings
    stored_only = [s for s in old.students if s not in new.students]
    return TaskResult(
        task=new.task,
        rows=rows,
        missing={  # a stored row outlives a rerun that could not compare its student
            **{k: v for k, v in old.missing.items() if k in stored_only},
            **{k: v for k, v in new.missing.items() if k not in shown},
        },
        minutes=sum(minutes.values()),  # each setup's ledger total: every sitting, the earlier runs' included
        teacher_record=_keep_stored_pick(old.teacher_record, new.teacher_record),
        pareto=new.pareto,
        students=[s for s in STUDENTS if s in new.students or s in old.students],
        defaults_best={
            **{k: v for k, v in old.defaults_best.items() if k in stored_only},
            **new.defaults_best,
            **{m: c["defaults_best"] for m, c in shown.items() if m not in from_new},
        },
        budget=new.budget,
        command=new.command,
        setup=new.setup,
        earlier=list(earlier.values()),
        minutes_by_setup=minutes,
        picked={m: c["picked"] for m, c in shown.items() if c["picked"]},
        not_kept=not_kept,
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
