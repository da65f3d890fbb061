"""Signals at the two places where their timing matters: a background job's SIGTERM, and an optimiser step.

Both only touch handlers from the main thread (Python allows no other), and both put back
whatever handler was there before.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any


def _raise_interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt


@contextmanager
def sigterm_interrupts() -> Iterator[None]:
    """SIGTERM stops the command the way Ctrl-C does, while it runs.

    A background job (``nohup … &``) ignores SIGINT and is stopped with ``kill`` (SIGTERM), whose
    default ends the process at once: MLflow runs stay open, and no line says what was kept. As a
    ``KeyboardInterrupt`` it takes the same path as Ctrl-C (``finally`` blocks, run closing).
    """
    if threading.current_thread() is not threading.main_thread():  # only the main thread may set handlers
        yield
        return
    previous = signal.signal(signal.SIGTERM, _raise_interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


@contextmanager
def held_interrupts() -> Iterator[None]:
    """Ctrl-C or SIGTERM inside the block takes effect when it ends, not halfway through it.

    An optimiser step and the step counter must move together: an interruption between them
    would checkpoint weights one update ahead of the step they claim, and a resume would apply
    that batch twice. The signal is noted, then handed to the handler it was meant for.
    """
    if threading.current_thread() is not threading.main_thread():  # only the main thread may set handlers
        yield
        return
    caught: list[int] = []
    held = (signal.SIGINT, signal.SIGTERM)
    previous = {s: signal.signal(s, lambda signum, _frame: caught.append(signum)) for s in held}
    # None: a handler set outside Python, which cannot be put back from here; the default stands in
    previous = {s: signal.SIG_DFL if h is None else h for s, h in previous.items()}
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
        for signum in caught[:1]:
            handler = previous[signum]
            if callable(handler):
                handler(signum, None)
            elif handler == signal.SIG_DFL:
                signal.raise_signal(signum)
