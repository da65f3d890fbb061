"""What every ``python -m studies.<command>`` shares: help, quiet libraries, one-line errors, Ctrl-C.

A user mistake (``KDError``) prints one ``error:`` line and exits 2, never a traceback; an
interruption (Ctrl-C, or SIGTERM for a background job) says what was kept and exits 130.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Callable, Sequence
from typing import Any

from transfer.errors import KDError
from transfer.interrupts import sigterm_interrupts

NOISY_LOGGERS = ("alembic", "mlflow", "optuna", "httpx", "urllib3", "filelock", "matplotlib")


class NoTracebackOnInterrupt(logging.Filter):
    """Ctrl-C is the user's choice, not a crash: keep Optuna's "trial failed" line, drop its traceback."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.exc_info and record.exc_info[0] is not None and issubclass(record.exc_info[0], KeyboardInterrupt):
            record.exc_info, record.exc_text = None, None
        return True


def quiet_libraries() -> None:
    """Keep the terminal for our own progress bars and messages, not library chatter."""
    import warnings

    import optuna

    failed_trials = logging.getLogger("optuna.study._optimize")  # where Optuna logs a failed trial
    if not any(isinstance(f, NoTracebackOnInterrupt) for f in failed_trials.filters):
        failed_trials.addFilter(NoTracebackOnInterrupt())

    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", message=".*pkg_resources.*")
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def run_cli(
    argv: Sequence[str] | None,
    usage: Callable[[], str],
    action: Callable[[Any, list[str]], Any],
    show: Callable[[Any], None],
    interrupted: str,
) -> int:
    """Parse ``key=value`` overrides, run ``action(cfg, overrides)``, then ``show`` its result."""
    from studies.config import compose

    args = list(sys.argv[1:] if argv is None else argv)
    if any(a in ("-h", "--help", "help") for a in args):
        print(usage())
        return 0
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    quiet_libraries()
    for noisy in NOISY_LOGGERS:
        logging.getLogger(noisy).setLevel(logging.WARNING)
    try:
        with sigterm_interrupts():
            result = action(compose(args), args)
    except KDError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"\ninterrupted: {interrupted}", file=sys.stderr)
        return 130
    show(result)
    return 0
