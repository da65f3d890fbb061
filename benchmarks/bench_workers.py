"""Benchmark: study throughput with 1 vs 2 workers, and Optuna's per-trial cost on PostgreSQL vs SQLite.

    python -m benchmarks.bench_workers [--trials 30] [--rounds 2] [--storage-trials 60] [--threads 1]

Starts its own PostgreSQL cluster and MLflow server (tests/integration/services.py, the same
helpers as the CI integration run; durable settings, fsync on) and prints what it measured:

1. Workers: a fixed small study (tiny teacher, all student sizes fixed) of ``--trials`` trials
   run by 1 worker and by 2 workers started together, both on PostgreSQL + the MLflow server,
   alternating for ``--rounds`` rounds. Throughput = trials / (last trial end − first trial
   start), so process start-up is excluded; the teacher and the transfer cache are built once
   beforehand. Ratio = median 2-worker / median 1-worker throughput. Each worker gets
   ``--threads`` torch threads (default 1, so two workers fit two cores: with torch's default of
   all cores per worker, two workers oversubscribe the CPU and each trial gets several times slower).
2. Storage: the same Optuna traffic as one of our trials (11 sampled parameters, 7 user
   attributes, 3 intermediate reports with pruning checks, the stop-at-target check) with a
   no-op objective, on SQLite and on PostgreSQL. Ratio = PostgreSQL / SQLite seconds per trial.

Writes the numbers to benchmarks/results/bench_workers.json as well.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests" / "integration"))

from services import mlflow_server, postgres_server, start_workers, wait_workers, write_tiny_sst2  # noqa: E402

FIXED_STUDENT = [
    "student.hparams.epochs=3",
    "student.hparams.hidden_size=128",
    "student.hparams.num_layers=1",
    "student.hparams.pooling=max",
    "student.hparams.mlp_dim=128",
    "student.hparams.batch_size=32",
    "student.hparams.dropout=0.1",
    "student.hparams.lr=0.002",
]


def throughput(storage_url: str, study_name: str) -> dict[str, float]:
    """Trials per hour of a finished study, from its first trial's start to its last trial's end."""
    import optuna

    trials = optuna.load_study(study_name=study_name, storage=storage_url).get_trials(deepcopy=False)
    done = [t for t in trials if t.datetime_complete is not None and t.state.name == "COMPLETE"]
    span = (max(t.datetime_complete for t in done) - min(t.datetime_start for t in done)).total_seconds()
    durations = [(t.datetime_complete - t.datetime_start).total_seconds() for t in done]
    return {
        "trials": len(done),
        "span_s": span,
        "trials_per_hour": 3600 * len(done) / span,
        "median_trial_s": statistics.median(durations),
    }


def run_workers(n: int, base: list[str], study: str, trials: int, work: Path, env: dict[str, str]) -> float:
    """Run ``n`` workers on one study to ``trials`` finished trials; returns the wall time (s)."""
    started = time.monotonic()
    procs = start_workers(n, [*base, f"study.name={study}", f"study.n_trials={trials}"], work, study, env)
    codes = wait_workers(procs, timeout=1800)
    if codes != [0] * n:
        for _, log in procs:
            print(log.read_text()[-3000:], file=sys.stderr)
        raise SystemExit(f"workers of {study} exited {codes}")
    return time.monotonic() - started


def bench_workers(
    pg_url: str, tracking_uri: str, work: Path, trials: int, threads: int | None, rounds: int
) -> dict[str, Any]:
    """Alternate 1-worker and 2-worker studies for ``rounds`` rounds (a shared machine's load drifts)."""
    from services import worker_env

    env = worker_env()
    if threads:
        env["OMP_NUM_THREADS"] = env["MKL_NUM_THREADS"] = str(threads)
    data = write_tiny_sst2(work / "data")
    base = [
        "teacher=tiny",
        f"data.dir={data}",
        f"cache_dir={work / 'cache'}",
        f"study.storage={pg_url}",
        f"tracking.uri={tracking_uri}",
        "study.sampler=random",
        "study.pruner=none",
        "progress=false",
        "tracking.latency_samples=3",
        "tracking.log_models=none",
        *FIXED_STUDENT,
    ]
    run_workers(1, base, "bench-warmup", 1, work / "runs", env)  # fine-tune the teacher, label the cache
    measured: dict[int, list[dict[str, float]]] = {1: [], 2: []}
    for r in range(rounds):
        for n in (1, 2) if r % 2 == 0 else (2, 1):
            name = f"bench-{n}w-r{r}"
            load = os.getloadavg()[0]
            wall = run_workers(n, base, name, trials, work / "runs", env)
            measured[n].append({**throughput(pg_url, name), "wall_s": wall, "load_before": load})
            print(f"  round {r}, {n} worker(s): {measured[n][-1]['trials_per_hour']:.0f} trials/h", flush=True)
    one = statistics.median(m["trials_per_hour"] for m in measured[1])
    two = statistics.median(m["trials_per_hour"] for m in measured[2])
    return {
        "trials": trials,
        "rounds": rounds,
        "threads_per_worker": threads or "torch default (all cores)",
        "cpu_cores": os.cpu_count(),
        "one_worker_trials_per_hour": one,
        "two_workers_trials_per_hour": two,
        "ratio_two_over_one": two / one,
        "per_round": {"one_worker": measured[1], "two_workers": measured[2]},
    }


def storage_seconds_per_trial(url: str, name: str, n_trials: int) -> float:
    """Seconds per trial of Optuna bookkeeping alone (our trial's storage traffic, a no-op objective)."""
    import optuna

    from studies.search import StopAtTarget, make_storage

    storage = make_storage(url, heartbeat_interval=60)
    study = optuna.create_study(
        study_name=name, storage=storage, direction="maximize", sampler=optuna.samplers.RandomSampler(seed=0)
    )
    study.set_user_attr("cache_key", "bench")

    def objective(trial: optuna.Trial) -> float:
        params = {f"p{i}": trial.suggest_float(f"p{i}", 0.0, 1.0) for i in range(11)}
        trial.set_user_attr("hparams", params)
        trial.set_user_attr("mlflow_run_id", "0" * 32)
        for step in range(3):
            trial.report(params["p0"] * step, step)
            trial.should_prune()
        for key in ("share_of_teacher", "latency_ms_b1", "dev_agreement", "params_total", "fail_reason"):
            trial.set_user_attr(key, 0.5)
        return params["p0"]

    started = time.perf_counter()
    study.optimize(objective, n_trials=n_trials, callbacks=[StopAtTarget(10 * n_trials, poll=1.0)])
    return (time.perf_counter() - started) / n_trials


def bench_storage(pg_url: str, work: Path, n_trials: int, rounds: int = 3) -> dict[str, Any]:
    """Alternate SQLite and PostgreSQL rounds (machine noise hits both alike); medians per backend."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    times: dict[str, list[float]] = {"sqlite": [], "postgresql": []}
    for r in range(rounds):
        times["sqlite"].append(storage_seconds_per_trial(f"sqlite:///{work / f'storage{r}.db'}", f"s{r}", n_trials))
        times["postgresql"].append(storage_seconds_per_trial(pg_url, f"s{r}", n_trials))
    sqlite, postgres = statistics.median(times["sqlite"]), statistics.median(times["postgresql"])
    return {
        "trials_per_round": n_trials,
        "rounds": rounds,
        "sqlite_ms_per_trial": 1000 * sqlite,
        "postgresql_ms_per_trial": 1000 * postgres,
        "ratio_postgresql_over_sqlite": postgres / sqlite,
        "all_ms": {k: [round(1000 * v, 2) for v in vs] for k, vs in times.items()},
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--trials", type=int, default=30, help="trials of the fixed study (each worker setting)")
    parser.add_argument("--storage-trials", type=int, default=60, help="no-op trials per storage round")
    parser.add_argument(
        "--threads", type=int, default=1, help="torch (OpenMP) threads per worker; 0 = torch's default (all cores)"
    )
    parser.add_argument("--rounds", type=int, default=2, help="alternating 1-worker/2-worker rounds")
    parser.add_argument("--skip-workers", action="store_true", help="only the storage comparison")
    args = parser.parse_args(argv)

    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="kd-bench-workers-") as tmp, postgres_server(durable=True) as pg:
        work = Path(tmp)
        results["storage"] = bench_storage(pg.create_database("storage"), work, args.storage_trials)
        s = results["storage"]
        print(
            f"storage: Optuna bookkeeping per trial {s['sqlite_ms_per_trial']:.1f} ms on SQLite, "
            f"{s['postgresql_ms_per_trial']:.1f} ms on PostgreSQL: ratio PostgreSQL/SQLite "
            f"{s['ratio_postgresql_over_sqlite']:.2f}",
            flush=True,
        )
        if not args.skip_workers:
            with mlflow_server(pg.create_database("mlflow"), work / "mlflow") as tracking_uri:
                results["workers"] = bench_workers(
                    pg.create_database("optuna"), tracking_uri, work, args.trials, args.threads, args.rounds
                )
            w = results["workers"]
            print(
                f"workers: {w['one_worker_trials_per_hour']:.0f} trials/h with 1 worker, "
                f"{w['two_workers_trials_per_hour']:.0f} trials/h with 2 workers on {w['cpu_cores']} cores "
                f"(medians of {w['rounds']} rounds of {w['trials']} trials): ratio 2/1 {w['ratio_two_over_one']:.2f}",
                flush=True,
            )
    out = REPO / "benchmarks" / "results" / "bench_workers.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2, default=str))
    print(f"wrote {out.relative_to(REPO)}")


if __name__ == "__main__":
    main()
