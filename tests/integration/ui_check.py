"""End-to-end: the MLflow UI and optuna-dashboard, opened in headless Chromium, show what a researcher needs.

    python tests/integration/ui_check.py [--screenshots docs/] [--keep]   (or: bash tests/integration/ui_check.sh)

Makes, in a temporary folder, a tiny study of two student types (BiLSTM and a decision tree, tiny
random teacher, tiny synthetic SST-2) and a ``studies.compare`` run, exactly as a user would run
them (``python -m studies.run`` / ``studies.compare`` on SQLite files). Then starts
``mlflow server`` and ``optuna-dashboard`` on free loopback ports and reads the pages Chromium
renders (not the REST API: ids for URLs aside, every check is on the rendered text):

- MLflow: the experiment is listed; opening it lands on the training runs, not the GenAI
  overview; one parent run per study, with its trial runs nested under it once expanded; run
  names say student and trial; the experiment's runs view has the test_*, share_of_teacher and
  latency_ratio_teacher columns, sortable; no run reads "Failed"; the compare view of the trials
  lists those metrics side by side; the comparison run lists its report and Pareto plot, shows
  the report's text and renders the plot.
- optuna-dashboard: both studies listed (names saying task and student); a study's page names
  the metric (dev_accuracy, not "Objective 0"), lists its trials, draws the optimisation history
  and the parameter importances.

Exits non-zero naming every check that failed. ``--screenshots DIR`` also writes PNGs of the
runs table, the compare view and the dashboard's study page (the ones in README's "What you
will see").
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from services import mlflow_server, optuna_dashboard_server, worker_env, write_tiny_sst2

TASK = "sst2"
EXPERIMENT = f"kd-{TASK}"
METRIC = "dev_accuracy"
STUDENTS = {  # student → its fixed settings: small and fast, still searching something
    "bilstm": ["student.hparams.epochs=1", "student.hparams.hidden_size=16", "student.hparams.mlp_dim=16"],
    "tree": [],
}
N_TRIALS = 3
COLUMNS = ["test_accuracy", "share_of_teacher", "latency_ratio_teacher"]


def common_overrides(work: Path, data: Path) -> list[str]:
    return [
        "teacher=tiny",
        f"data.dir={data}",
        f"cache_dir={work / 'cache'}",
        f"study.storage=sqlite:///{work / 'optuna.db'}",
        f"tracking.uri=sqlite:///{work / 'mlflow.db'}",
        "progress=false",
        "tracking.latency_samples=3",
    ]


def run_module(module: str, overrides: list[str], work: Path, log: Path, timeout: float) -> None:
    """``python -m <module> <overrides>`` in ``work`` (as a user runs it); raise with its log's tail on failure."""
    with open(log, "w") as out:
        proc = subprocess.run(
            [sys.executable, "-m", module, *overrides],
            cwd=work,
            stdout=out,
            stderr=subprocess.STDOUT,
            env=worker_env(),
            timeout=timeout,
        )
    if proc.returncode != 0:
        tail = "\n".join(log.read_text(errors="replace").splitlines()[-40:])
        raise RuntimeError(f"python -m {module} exited {proc.returncode}:\n{tail}")


def make_studies(work: Path, timeout: float) -> None:
    """Two tiny studies and one comparison, on SQLite files under ``work`` (the README's default set-up)."""
    data = write_tiny_sst2(work / "data")
    base = common_overrides(work, data)
    for student, fixed in STUDENTS.items():
        started = time.monotonic()
        overrides = [*base, f"student={student}", f"study.n_trials={N_TRIALS}", *fixed]
        run_module("studies.run", overrides, work, work / f"run-{student}.log", timeout)
        print(f"study of {student}: {time.monotonic() - started:.0f}s", flush=True)
    started = time.monotonic()
    overrides = [*base, "compare.seeds=1", "compare.batch_latency=4", f"compare.out_dir={work / 'reports'}"]
    run_module("studies.compare", overrides, work, work / "compare.log", timeout)
    print(f"comparison: {time.monotonic() - started:.0f}s", flush=True)


class Checks:
    """Named checks; each failure is kept with its reason, and the run goes on to the next check."""

    def __init__(self) -> None:
        self.failures: list[str] = []
        self.passed = 0

    def run(self, name: str, check: Callable[[], object]) -> None:
        try:
            check()
        except Exception as err:  # a failed check: report it and look at the rest
            self.failures.append(f"{name}: {err}")
            print(f"FAIL  {name}: {err}", flush=True)
        else:
            self.passed += 1
            print(f"ok    {name}", flush=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--screenshots", type=Path, help="write PNGs of the pages into this folder")
    parser.add_argument("--keep", action="store_true", help="keep the work folder (studies, logs)")
    parser.add_argument("--work", type=Path, help="use this folder (reuses studies already made in it)")
    parser.add_argument("--timeout", type=float, default=600, help="seconds each study command may take")
    args = parser.parse_args()

    started = time.monotonic()
    work = args.work or Path(tempfile.mkdtemp(prefix="kd-ui-"))
    work.mkdir(parents=True, exist_ok=True)
    print(f"ui check: work folder {work}", flush=True)
    try:
        if not (work / "compare.log").exists():
            make_studies(work, args.timeout)
        from ui_pages import check_pages

        with (
            mlflow_server(f"sqlite:///{work / 'mlflow.db'}", work / "mlflow") as mlflow_url,
            optuna_dashboard_server(f"sqlite:///{work / 'optuna.db'}", work / "dashboard") as dashboard_url,
        ):
            print(f"servers up: mlflow {mlflow_url}, optuna-dashboard {dashboard_url}", flush=True)
            checks = Checks()
            check_pages(checks, work, mlflow_url, dashboard_url, args.screenshots)
        took = time.monotonic() - started
        print(f"ui check took {took:.0f}s: {checks.passed} passed, {len(checks.failures)} failed", flush=True)
        if checks.failures:
            print("ui check FAILED:\n  " + "\n  ".join(checks.failures), file=sys.stderr)
            return 1
        return 0
    finally:
        if not args.keep and not args.work:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
