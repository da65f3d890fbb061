"""Ctrl-C during a search: Optuna's "trial failed" line stays, its traceback goes (it is not a crash)."""

from __future__ import annotations

import logging

import optuna
import pytest

from studies.cli import quiet_libraries


def test_an_interrupted_trial_is_logged_without_a_traceback() -> None:
    quiet_libraries()
    records: list[logging.LogRecord] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(record)

    handler = Keep(level=logging.WARNING)
    logging.getLogger("optuna").addHandler(handler)
    try:
        study = optuna.create_study()

        def interrupted(trial: optuna.Trial) -> float:
            raise KeyboardInterrupt

        with pytest.raises(KeyboardInterrupt):  # the interruption still stops the search
            study.optimize(interrupted, n_trials=1)
    finally:
        logging.getLogger("optuna").removeHandler(handler)
    failed = [r for r in records if "failed" in r.getMessage()]
    assert failed, "Optuna no longer logs failed trials where quiet_libraries looks for them"
    assert all(r.exc_info is None for r in failed)
