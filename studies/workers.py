"""Many workers on one study: the storage, heartbeats, dead workers' trials, and stopping at the target.

Optuna's RDB storage lets any number of processes (on any number of machines) share one study.
What it leaves to us: opening a fresh database from many workers at once, closing the MLflow runs
of a worker that died (its trial's run and its study run would stay RUNNING forever), trials that
died before their first heartbeat, and ending with exactly ``study.n_trials`` finished trials,
not one more per worker. The trial objective (``studies/search.py``) knows none of this.
"""

from __future__ import annotations

import copy
import datetime
import logging
import os
import random
import socket
import time
import warnings

import mlflow
import optuna
from optuna.trial import TrialState

from studies.dblock import driver_url, schema_lock
from transfer.errors import KDError

log = logging.getLogger(__name__)
FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)  # what counts toward study.n_trials


class OverTarget(Exception):
    """This trial would take the study past its target: it is ended before doing any work."""

    def __init__(self, number: int, message: str) -> None:
        super().__init__(message)
        self.number = number


class OneLineForSkippedTrials(logging.Filter):
    """Optuna logs a caught ``OverTarget`` as a failed trial, traceback and all; it is a planned skip.

    Installed on Optuna's optimize logger: the skip becomes one line that says why, and Optuna's
    follow-up "failed with value None" line for that trial is dropped.
    """

    def __init__(self) -> None:
        super().__init__()
        self.skipped: set[int] = set()

    def filter(self, record: logging.LogRecord) -> bool:
        err = record.exc_info[1] if record.exc_info else None
        if isinstance(err, OverTarget):
            self.skipped.add(err.number)
            record.msg, record.args, record.exc_info, record.exc_text = f"{err} (not a failure)", (), None, None
            record.levelno, record.levelname = logging.INFO, "INFO"
            return True
        message = record.getMessage()
        return not any(message.startswith(f"Trial {n} failed with value") for n in self.skipped)


def quiet_skipped_trials() -> None:
    """Install ``OneLineForSkippedTrials`` once per process."""
    optimize_log = logging.getLogger("optuna.study._optimize")
    if not any(isinstance(f, OneLineForSkippedTrials) for f in optimize_log.filters):
        optimize_log.addFilter(OneLineForSkippedTrials())


def make_storage(url: str, heartbeat_interval: int, tracking_uri: str | None = None) -> optuna.storages.BaseStorage:
    """Optuna RDB storage with heartbeats: a trial whose worker died is failed and re-queued (see StaleTrialHandler).

    Safe to call from many workers at once on a fresh database (schema creation is serialised and retried).
    """
    import sqlalchemy.exc

    url = driver_url(url)
    engine_kwargs = {"connect_args": {"timeout": 60}} if url.startswith("sqlite") else {"pool_pre_ping": True}
    attempts = 4
    for attempt in range(attempts):
        try:
            with schema_lock(url, "optuna"), warnings.catch_warnings():
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)  # heartbeats: stable enough
                return optuna.storages.RDBStorage(
                    url,
                    engine_kwargs=engine_kwargs,
                    heartbeat_interval=heartbeat_interval,
                    grace_period=2 * heartbeat_interval,
                    heartbeat_stale_trial_callback=StaleTrialHandler(heartbeat_interval, tracking_uri),
                )
        except (sqlalchemy.exc.IntegrityError, sqlalchemy.exc.OperationalError) as err:
            # a race we could not lock out (e.g. MySQL) or a database that is still starting: try again
            if attempt + 1 < attempts:
                time.sleep(0.5 * (attempt + 1) + random.random())
                continue
            raise KDError(f"cannot open Optuna storage {url!r}: {str(err).splitlines()[0]}") from err
        except Exception as err:  # sqlalchemy raises many kinds; the user needs the URL and the reason
            raise KDError(f"cannot open Optuna storage {url!r}: {str(err).splitlines()[0]}") from err
    raise AssertionError("unreachable")


class StaleTrialHandler:
    """Called (in whichever worker notices) for each trial of a dead worker that Optuna has just failed.

    Optuna notices only when a live worker asks for a trial (``optimize``/``ask``) or calls
    ``fail_stale_trials``: a trial is stale once its heartbeat is older than the grace period
    (2 × ``study.heartbeat_interval``). We close the dead trial's MLflow run as FAILED and its
    worker's study run (the trial run's parent) as KILLED, both of which would stay RUNNING forever,
    and re-queue the same hyper-parameters, at most ``max_retry`` times.
    """

    def __init__(self, heartbeat_interval: int, tracking_uri: str | None, max_retry: int = 2) -> None:
        self.heartbeat_interval = heartbeat_interval
        self.tracking_uri = tracking_uri
        self._retry = optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=max_retry)

    def __call__(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        reason = f"worker died: no heartbeat for over {2 * self.heartbeat_interval}s"
        log.warning("study %r, trial %d: %s; marked FAIL and re-queued", study.study_name, trial.number, reason)
        run_id = trial.user_attrs.get("mlflow_run_id")
        if run_id and self.tracking_uri:
            try:
                client = mlflow.MlflowClient(tracking_uri=self.tracking_uri)
                client.set_tag(run_id, "state", "failed")
                client.set_tag(run_id, "fail_reason", reason)
                client.set_terminated(run_id, status="FAILED")
                parent = client.get_run(run_id).data.tags.get("mlflow.parentRunId")
                if parent and client.get_run(parent).info.status == "RUNNING":
                    client.set_tag(parent, "fail_reason", f"its worker died during trial {trial.number}")
                    client.set_terminated(parent, status="KILLED")
            except Exception as err:  # the study must go on even if MLflow is unreachable
                log.warning("could not mark MLflow run %s of dead trial %d as failed: %s", run_id, trial.number, err)
        self._retry(study, trial)


def trial_counts(study: optuna.Study) -> tuple[int, int]:
    """(finished, running) trials of the study, across all workers."""
    states = [t.state for t in study.get_trials(deepcopy=False, states=(*FINISHED, TrialState.RUNNING))]
    finished = sum(state in FINISHED for state in states)
    return finished, len(states) - finished


def fail_orphaned_trials(study: optuna.Study, grace: float) -> None:
    """Fail (and re-queue) RUNNING trials that never recorded a heartbeat and started over ``grace`` s ago.

    A worker killed between creating a trial and its heartbeat thread's first beat leaves a trial
    that Optuna's stale check skips (it only looks at trials *with* a heartbeat), so it would stay
    RUNNING forever and keep the study below its target. Reads Optuna's heartbeat table directly;
    if Optuna's internals change, this quietly does nothing.
    """
    now = datetime.datetime.now()
    old = {
        t._trial_id: t
        for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
        if t.datetime_start is not None and (now - t.datetime_start).total_seconds() > grace
    }
    if not old:
        return
    storage = study._storage
    backend = getattr(storage, "_backend", storage)  # Optuna wraps RDBStorage in a caching layer
    try:
        from optuna.storages._rdb import models

        with backend.scoped_session() as session:
            column = models.TrialHeartbeatModel.trial_id
            beating = {row[0] for row in session.query(column).filter(column.in_(list(old)))}
    except Exception as err:  # not an RDB storage, or Optuna's internals moved
        log.debug("cannot look for trials without heartbeat: %s", err)
        return
    callback = backend.get_heartbeat_stale_trial_callback()
    for trial_id in set(old) - beating:
        try:
            if not storage.set_trial_state_values(trial_id, state=TrialState.FAIL):
                continue
        except optuna.exceptions.UpdateFinishedTrialError:  # another worker got there first
            continue
        if callback is not None:
            callback(study, copy.deepcopy(storage.get_trial(trial_id)))


def needs_more_trials(study: optuna.Study, target: int, poll: float, deadline: float | None = None) -> bool:
    """Whether this worker should start another trial for the study to reach ``target`` finished trials.

    Counts every worker's trials: when the trials others are running already cover what is left,
    wait until they finish (False) or one of their workers dies and its trial, failed as stale,
    is re-queued (True). So N workers on one study end with ``target`` finished trials, not up
    to N-1 more (the overshoot of Optuna's MaxTrialsCallback, which counts finished trials only),
    and the study still reaches its target when a worker is killed. Only two workers deciding in
    the same instant can still start one trial too many.
    """
    interval = getattr(study._storage, "get_heartbeat_interval", lambda: None)()
    grace = 2 * interval if interval else 0
    while True:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            optuna.storages.fail_stale_trials(study)
        if grace:
            fail_orphaned_trials(study, grace)
        finished, running = trial_counts(study)
        if finished >= target:
            return False
        if finished + running < target:
            return True
        if deadline is not None and time.monotonic() >= deadline:
            return False
        time.sleep(poll)


class StopAtTarget:
    """Optuna callback: stop this worker once the study's finished + running trials reach the target."""

    def __init__(self, target: int, poll: float, deadline: float | None = None) -> None:
        self.target = target
        self.poll = poll
        self.deadline = deadline

    def __call__(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        if not needs_more_trials(study, self.target, self.poll, self.deadline):
            study.stop()


def finished_trials(study: optuna.Study) -> int:
    return len(study.get_trials(deepcopy=False, states=FINISHED))


def check_under_target(trial: optuna.Trial, target: int) -> None:
    """Raise ``OverTarget`` if the trials created before this one already cover the target.

    Two workers can both see "one trial left" at the same instant and both start one. Trial
    numbers are handed out atomically by the storage, so the later-numbered trial is the extra
    one: it stops here, before any work, and is recorded as FAIL with the reason (a FAIL never
    counts toward the target, so the study ends with exactly ``target`` finished trials).
    """
    active = trial.study.get_trials(deepcopy=False, states=(*FINISHED, TrialState.RUNNING))
    ahead = sum(t.number < trial.number for t in active)
    if ahead >= target:
        trial.set_user_attr("fail_reason", f"skipped: the study already had {target} trials finished or running")
        why = f"trial {trial.number} skipped: {ahead} earlier trials already cover study.n_trials={target}"
        raise OverTarget(trial.number, why)


def close_dead_study_runs(experiment_id: str, study_name: str) -> None:
    """Mark RUNNING study runs of this study whose worker process on this host is gone as KILLED.

    A killed worker cannot close its own MLflow study run. Runs of other hosts are closed by the
    heartbeat path (``StaleTrialHandler``) when one of their trials is found dead.
    """
    host = socket.gethostname()
    query = f"tags.role = 'study' and tags.study_name = '{study_name}' and attributes.status = 'RUNNING'"
    try:
        runs = mlflow.search_runs([experiment_id], filter_string=query, output_format="list")
    except Exception as err:  # tracking must never stop a study
        log.debug("cannot look for dead study runs: %s", err)
        return
    client = mlflow.MlflowClient()
    for run in runs:
        worker = run.data.tags.get("worker", "")
        worker_host, _, pid = worker.rpartition(":")
        if worker_host != host or not pid.isdigit() or _alive(int(pid)):
            continue
        client.set_tag(run.info.run_id, "fail_reason", f"worker {worker} died before closing its study run")
        client.set_terminated(run.info.run_id, status="KILLED")


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
