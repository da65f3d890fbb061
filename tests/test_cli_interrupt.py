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


def test_sigterm_stops_a_command_like_ctrl_c(capsys: pytest.CaptureFixture[str]) -> None:
    """``kill`` on a background ``studies.run`` must end in the interrupted line and exit 130, not die silently."""
    import os
    import signal
    import time

    from studies.cli import run_cli

    reached_finally: list[bool] = []

    def killed_mid_work(cfg: object, overrides: list[str]) -> None:
        try:
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(5)  # interrupted long before this ends
        finally:
            reached_finally.append(True)  # where MLflow runs are closed and work is saved

    code = run_cli([], lambda: "usage", killed_mid_work, lambda result: None, "finished trials are stored")
    assert code == 130
    assert reached_finally == [True]
    assert "interrupted: finished trials are stored" in capsys.readouterr().err
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # the handler does not outlive the command
