"""Integration (CI): two workers started at the same moment on ONE study in a real PostgreSQL, tracked by a
real ``mlflow server`` on PostgreSQL, sharing one cache folder.

    python tests/integration/run_postgres.py [--keep]      (or: bash tests/integration/run_postgres.sh)

Starts a private PostgreSQL cluster (``initdb``/``pg_ctl`` from the Debian packages, installed
with apt-get if missing), an MLflow server on it, then two ``python -m studies.run`` workers of
a 4-trial study. Checks:

- the study ends with exactly 4 COMPLETE trials (no RUNNING left, no overshoot; a FAIL only for a
  trial that two workers started in the same instant, skipped before any work),
- one teacher fine-tune and one labelling pass in total (the shared cache's file locks),
- MLflow holds one parent run per worker and one child run (role=trial) per trial, all FINISHED.

Exits non-zero (printing the worker logs) when anything is off, so CI fails.
"""

from __future__ import annotations

import argparse
import re
import shutil
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

from services import mlflow_server, postgres_server, start_workers, wait_workers, write_tiny_sst2

STUDY = "ci-pg"
N_TRIALS = 4
N_WORKERS = 2


CHECKED: list[bool] = []


def check(condition: bool, message: str, failures: list[str]) -> None:
    CHECKED.append(condition)
    print(("ok    " if condition else "FAIL  ") + message, flush=True)
    if not condition:
        failures.append(message)


def verify(work: Path, optuna_url: str, tracking_uri: str, logs: list[Path]) -> list[str]:
    """Every assertion of the run; returns the failed ones."""
    import optuna
    from mlflow.tracking import MlflowClient

    failures: list[str] = []
    study = optuna.load_study(study_name=STUDY, storage=optuna_url)
    trials = study.get_trials(deepcopy=False)
    states = Counter(t.state.name for t in trials)
    # Two workers deciding in the same instant may both start the last trial: the later-numbered
    # one is ended before any work and recorded FAIL as "skipped" (studies.workers.check_under_target).
    skipped = [t for t in trials if str(t.user_attrs.get("fail_reason", "")).startswith("skipped")]
    others = [t for t in trials if t.state.name != "COMPLETE" and t not in skipped]
    check(
        states["COMPLETE"] == N_TRIALS and not others and all(t.state.name == "FAIL" for t in skipped),
        f"{N_TRIALS} COMPLETE trials, nothing else but racers skipped before any work: {dict(states)}"
        f" ({len(skipped)} skipped)",
        failures,
    )

    text = "\n".join(log.read_text(errors="replace") for log in logs)
    passes = re.findall(r"labelling \d+ texts for transfer cache", text)
    check(len(passes) == 1, f"one labelling pass over the transfer set across workers (found {len(passes)})", failures)
    teachers = [p for p in (work / "cache" / "teachers").iterdir() if p.is_dir() and p.name != "probe"]
    one_teacher = len(teachers) == 1 and not teachers[0].name.endswith(".partial")
    check(one_teacher, f"one fine-tuned teacher: {[t.name for t in teachers]}", failures)

    client = MlflowClient(tracking_uri=tracking_uri)
    experiment = client.get_experiment_by_name("kd-sst2")
    query = f"tags.study_name = '{STUDY}'"
    runs = client.search_runs([experiment.experiment_id], filter_string=query, max_results=1000)
    trials = [r for r in runs if r.data.tags.get("role") == "trial"]
    parents = [r for r in runs if r.data.tags.get("role") == "study"]
    check(len(trials) == N_TRIALS, f"{N_TRIALS} MLflow child runs with role=trial (found {len(trials)})", failures)
    check(all(r.info.status == "FINISHED" for r in trials), "every trial run FINISHED", failures)
    check(len(parents) == N_WORKERS, f"one MLflow parent run per worker (found {len(parents)})", failures)
    workers = {r.data.tags.get("worker") for r in parents}
    check(len(workers) == N_WORKERS, f"parent runs from distinct workers: {sorted(map(str, workers))}", failures)
    parent_ids = {r.info.run_id for r in parents}
    check(
        all(r.data.tags.get("mlflow.parentRunId") in parent_ids for r in trials),
        "every trial run nested under a worker's parent run",
        failures,
    )
    teacher_runs = client.search_runs([experiment.experiment_id], filter_string="tags.role = 'teacher'")
    check(len(teacher_runs) == 1, f"one teacher run in the experiment (found {len(teacher_runs)})", failures)
    per_worker = Counter(r.data.tags.get("worker") for r in trials)
    print(f"trials per worker: {dict(per_worker)}", flush=True)
    return failures


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--keep", action="store_true", help="keep the work folder (logs, cache, artifacts)")
    parser.add_argument("--timeout", type=float, default=900, help="seconds the workers may take")
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="kd-ci-pg-"))
    started = time.monotonic()
    print(f"integration: work folder {work}", flush=True)
    try:
        with postgres_server(install=True) as pg:
            optuna_url, mlflow_url = pg.create_database("optuna"), pg.create_database("mlflow")
            print(f"postgres up on port {pg.port} ({time.monotonic() - started:.0f}s)", flush=True)
            with mlflow_server(mlflow_url, work / "mlflow") as tracking_uri:
                print(f"mlflow server up at {tracking_uri} ({time.monotonic() - started:.0f}s)", flush=True)
                data = write_tiny_sst2(work / "data")
                overrides = [
                    "teacher=tiny",
                    f"data.dir={data}",
                    f"cache_dir={work / 'cache'}",
                    f"study.storage={optuna_url}",
                    f"tracking.uri={tracking_uri}",
                    f"study.name={STUDY}",
                    f"study.n_trials={N_TRIALS}",
                    "study.pruner=none",
                    "study.heartbeat_interval=5",
                    "progress=false",
                    "tracking.latency_samples=3",
                    "student.hparams.epochs=1",
                    "student.hparams.hidden_size=16",
                    "student.hparams.mlp_dim=16",
                ]
                workers = start_workers(N_WORKERS, overrides, work / "workers")
                codes = wait_workers(workers, args.timeout)
                logs = [log for _, log in workers]
                print(f"workers exited {codes} ({time.monotonic() - started:.0f}s)", flush=True)
                failures: list[str] = []
                check(codes == [0] * N_WORKERS, f"both workers exited 0: {codes}", failures)
                try:
                    failures += verify(work, optuna_url, tracking_uri, logs)
                except Exception as err:  # report it like a failed check, with the workers' logs
                    check(False, f"verification raised {err!r}", failures)
        if failures:
            for log in logs:
                print(f"\n===== {log.name} (tail) =====\n" + "\n".join(log.read_text().splitlines()[-60:]))
            print(f"\nintegration FAILED: {failures}", file=sys.stderr)
        print(f"integration took {time.monotonic() - started:.0f}s", flush=True)
        print(f"integration: {sum(CHECKED)} passed, {len(failures)} failed", flush=True)
        return 1 if failures else 0
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
