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
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from services import REPO

sys.path.insert(0, str(REPO))  # this checkout's studies/, also when another checkout is installed
from browser import Browser
from services import mlflow_server, optuna_dashboard_server, worker_env, write_tiny_sst2

TASK = "sst2"
EXPERIMENT = f"kd-{TASK}"
METRIC = "dev_accuracy"
STUDENTS = {  # student → its fixed settings: small and fast, still searching something
    "bilstm": [
        "student.hparams.epochs=4",
        "student.hparams.batch_size=64",
        "student.hparams.hidden_size=16",
        "student.hparams.mlp_dim=16",
    ],
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
        "teacher.epochs=6",  # enough for the tiny teacher to learn the tiny task: the pages show real numbers
        "teacher.batch_size=16",
    ]


def run_module(module: str, overrides: list[str], work: Path, log: Path, timeout: float) -> None:
    """``python -m <module> <overrides>`` in ``work`` (as a user runs it); raise with its log's tail on failure."""
    with open(log, "w") as out:
        proc = subprocess.run(
            [sys.executable, "-m", module, *overrides],
            cwd=work,
            stdout=out,
            stderr=subprocess.STDOUT,
            env={**worker_env(), "OMP_NUM_THREADS": "1"},  # tiny models: one thread is fastest on a busy machine
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


def find_ids(work: Path) -> dict[str, object]:
    """Run and study ids, only to build the URLs a person would click through to (the checks read the pages)."""
    import optuna
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{work / 'mlflow.db'}")
    experiment = client.get_experiment_by_name(EXPERIMENT)
    if experiment is None:
        raise RuntimeError(f"no MLflow experiment {EXPERIMENT!r} was made")
    runs = client.search_runs([experiment.experiment_id], max_results=1000)
    by_role: dict[str, list] = {}
    for run in runs:
        by_role.setdefault(run.data.tags.get("role", ""), []).append(run)
    studies = optuna.get_all_study_summaries(f"sqlite:///{work / 'optuna.db'}", include_best_trial=False)
    return {
        "experiment_id": experiment.experiment_id,
        "study_runs": [r.info.run_name for r in by_role.get("study", [])],
        "trial_runs": {r.info.run_id: r.info.run_name for r in by_role.get("trial", [])},
        "teacher_run": by_role["teacher"][0].info.run_id,
        "comparison_run": by_role["comparison"][0].info.run_id,
        "studies": {s.study_name: s._study_id for s in studies},
        # the study whose trials scored most differently: its history and importances say the most
        "pictured": max(
            studies,
            key=lambda s: len(
                {
                    t.value
                    for t in optuna.load_study(
                        study_name=s.study_name, storage=f"sqlite:///{work / 'optuna.db'}"
                    ).get_trials(deepcopy=False)
                }
            ),
        ).study_name,
    }


# The page and every box with its own scroll bar, scrolled to a fraction of their length: a grid
# that renders only the rows in view shows each of its rows at one of the fractions.
SCROLL_TO = (
    "(f => { window.scrollTo(0, f * document.body.scrollHeight);"
    " document.querySelectorAll('*').forEach(e => {"
    " if (e.scrollHeight > e.clientHeight + 4) e.scrollTop = f * e.scrollHeight; }); })"
)
ML = "workflowType=machine_learning"  # MLflow 3's "Model training" switch (per browser; GenAI otherwise)


def check_mlflow(checks: Checks, browser: Browser, url: str, ids: dict, shots: Path | None) -> None:
    """What a person sees in the MLflow UI, from the link ``studies.run`` prints onwards."""
    from studies.tracking import runs_view_url

    exp = ids["experiment_id"]
    parents, trials = ids["study_runs"], list(ids["trial_runs"].values())

    def experiment_listed() -> None:
        browser.open(f"{url}/#/experiments")
        browser.wait_for_text([EXPERIMENT], 120)

    def runs_view() -> None:
        # the link studies.run prints (and the experiment's description holds): the training runs, metric columns
        view = runs_view_url(exp)
        assert ML in view, f"the runs link {view} does not ask for MLflow's model-training view"
        browser.open(f"{url}/{view}")
        page = browser.wait_for_text(["Runs", *parents, "compare-sst2", *COLUMNS], 120)
        for genai in ("Usage", "Token usage", "Observability"):
            assert genai not in page, f"the page shows the GenAI overview ({genai!r}), not the training runs"
        hidden = [t for t in trials if t in page]
        assert not hidden, f"trial runs listed flat instead of nested under their study run: {hidden}"

    def children_nested() -> None:
        expanders = "Array.from(document.querySelectorAll('[role=row] button.du-bois-light-btn-link'))"
        clicked = browser.click(expanders)
        assert clicked == len(parents), f"{clicked} expandable parent runs, expected one per study ({len(parents)})"
        browser.wait_for_text(trials, 60)
        if shots:
            close_assistant(browser)
            browser.screenshot(shots / "mlflow-runs.png")

    def sortable() -> None:
        for column in ("share_of_teacher", "test_accuracy"):
            header = f"Array.from(document.querySelectorAll('[data-testid=\"sort-header-{column}\"]'))"
            assert browser.click(header) == 1, f"no sortable header for {column}"
            browser.wait_for(
                lambda c=column: f"orderByKey=metrics.%60{c}%60" in browser.js("location.href"),
                20,
                f"sorting by {column}",
            )

    def compare_view() -> None:
        chosen = [ids["teacher_run"], *ids["trial_runs"]]
        runs = ",".join(f'"{r}"' for r in chosen)
        browser.open(f'{url}/#/compare-runs?runs=[{runs}]&experiments=["{exp}"]&{ML}')
        browser.wait_for_text(["teacher-tiny", *trials[:2], "Metrics"], 120)
        # The metrics table is a grid with its own scroll bar that renders only the rows in view:
        # read it at several scroll positions, top to end, as a person scrolling would.
        browser.js(
            "(() => { const els = Array.from(document.querySelectorAll('body *')).filter("
            "e => (e.innerText || '').trim() === 'Metrics'); const el = els[els.length - 1];"
            " if (el) el.scrollIntoView({block: 'start'}); return Boolean(el); })()"
        )
        needles, deadline = [*COLUMNS, "latency_ms_b1"], time.monotonic() + 60
        while True:
            seen = ""
            for fraction in (0, 0.25, 0.5, 0.75, 1):
                browser.js(f"{SCROLL_TO}({fraction})")
                time.sleep(0.3)
                seen += browser.text()
            missing = [n for n in needles if n not in seen]
            if not missing:
                break
            assert time.monotonic() < deadline, f"metrics not in the compare view's table, even scrolled: {missing}"
        if shots:
            close_assistant(browser)
            time.sleep(1)
            browser.screenshot(shots / "mlflow-compare.png")

    def report() -> None:
        base = f"{url}/#/experiments/{exp}/runs/{ids['comparison_run']}/artifacts"
        browser.open(f"{base}/comparison.md?{ML}")
        browser.wait_for_text(["comparison.md", "pareto.png", "pareto.html", f"Students vs teacher on {TASK}"], 120)

    def pareto() -> None:
        base = f"{url}/#/experiments/{exp}/runs/{ids['comparison_run']}/artifacts"
        browser.open(f"{base}/pareto.png?{ML}")
        plotted = "Array.from(document.images).some(i => i.complete && i.naturalWidth >= 400)"
        browser.wait_for(lambda: browser.js(plotted), 90, "the Pareto plot (pareto.png) to be drawn")
        if shots:
            close_assistant(browser)
            browser.screenshot(shots / "mlflow-pareto.png")

    checks.run("MLflow: the experiment is listed", experiment_listed)
    checks.run("MLflow: the printed link opens the training runs with the metric columns", runs_view)
    checks.run("MLflow: each study run holds its trial runs, named <student>-trial-<n>", children_nested)
    checks.run("MLflow: the metric columns sort", sortable)
    checks.run("MLflow: the compare view lists the metrics side by side", compare_view)
    checks.run("MLflow: the comparison run shows its report", report)
    checks.run("MLflow: the comparison run draws its Pareto plot", pareto)


def close_assistant(browser: Browser) -> None:
    """Close MLflow 3's assistant side panel (a per-browser setting), so a screenshot shows the runs."""
    browser.click("Array.from(document.querySelectorAll('button[aria-label=\"Close\"]'))")
    time.sleep(1)


def check_dashboard(checks: Checks, browser: Browser, url: str, ids: dict, shots: Path | None) -> None:
    """What a person sees in optuna-dashboard: the studies, a study's trials, history and importances."""
    studies: dict[str, int] = ids["studies"]  # type: ignore[assignment]
    bilstm = next(name for name in studies if "-bilstm-" in name)

    def listed() -> None:
        assert len(studies) == len(STUDENTS), f"{len(studies)} studies in the storage, expected {len(STUDENTS)}"
        for name in studies:
            assert TASK in name and any(f"-{s}-" in name or name.endswith(f"-{s}") for s in STUDENTS), (
                f"study name {name!r} does not say task and student"
            )
        browser.open(f"{url}/dashboard")
        browser.wait_for_text(list(studies), 90)

    def study_page() -> None:
        browser.open(f"{url}/dashboard/studies/{studies[bilstm]}")
        page = browser.wait_for_text([bilstm, "History", "Hyperparameter Importance", METRIC, "lr"], 120)
        assert "Objective 0" not in page, "the dashboard names the objective 'Objective 0', not the metric"
        if shots:
            browser.open(f"{url}/dashboard/studies/{studies[ids['pictured']]}")  # type: ignore[index]
            browser.wait_for_text(["History", "Hyperparameter Importance"], 120)
            time.sleep(2)  # plotly's drawing settles
            browser.screenshot(shots / "optuna-dashboard-study.png")

    def trials() -> None:
        browser.open(f"{url}/dashboard/studies/{studies[bilstm]}/trials")
        browser.wait_for_text([f"Trial {n}" for n in range(N_TRIALS)] + ["Complete"], 90)

    checks.run("optuna-dashboard: both studies listed, named by task and student", listed)
    checks.run("optuna-dashboard: the study page names the metric and draws history and importances", study_page)
    checks.run("optuna-dashboard: the study's trials are listed", trials)


def check_pages(checks: Checks, work: Path, mlflow_url: str, dashboard_url: str, shots: Path | None) -> None:
    ids = find_ids(work)
    with Browser() as browser:
        check_mlflow(checks, browser, mlflow_url, ids, shots)
        check_dashboard(checks, browser, dashboard_url, ids, shots)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--screenshots", type=Path, help="write PNGs of the pages into this folder")
    parser.add_argument("--keep", action="store_true", help="keep the work folder (studies, logs)")
    parser.add_argument("--work", type=Path, help="use this folder (reuses studies already made in it)")
    parser.add_argument("--timeout", type=float, default=600, help="seconds each study command may take")
    args = parser.parse_args()

    # a CI timeout's SIGTERM: unwind, so the servers and the browser (own process groups) are stopped
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    started = time.monotonic()
    work = args.work or Path(tempfile.mkdtemp(prefix="kd-ui-"))
    work.mkdir(parents=True, exist_ok=True)
    print(f"ui check: work folder {work}", flush=True)
    try:
        if not (work / "compare.log").exists():
            make_studies(work, args.timeout)
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
