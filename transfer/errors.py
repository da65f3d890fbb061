"""One exception type for problems the user can fix (bad input, missing files, unknown names).

The command-line entry points print a ``KDError`` as a single line and exit with status 2,
instead of showing a traceback from deep inside the library.
"""

from __future__ import annotations


class KDError(Exception):
    """A user-facing error: the message alone must say what is wrong and how to fix it."""


def unknown_name(kind: str, name: str, known: list[str] | tuple[str, ...]) -> KDError:
    """Build the standard 'unknown X' error that lists the valid choices."""
    return KDError(f"unknown {kind} {name!r}; known {kind}s: {', '.join(sorted(known))}")
