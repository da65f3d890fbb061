"""Serialise the first use of a shared database (Optuna storage, MLflow backend store) across workers.

Both Optuna's ``RDBStorage`` and MLflow's SQL store create tables and run schema migrations on
first use, and N workers doing that at the same moment on a fresh database crash or leave a
half-migrated schema (PostgreSQL: duplicate ``pg_type`` rows; SQLite: "table already exists",
duplicate ``alembic_version`` rows). A PostgreSQL advisory lock (works across machines) or a
local file lock (SQLite lives on one machine) lets the first worker create and the others find.
"""

from __future__ import annotations

import hashlib
import importlib.util
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

# One advisory-lock key per kind of schema; the values only need to be fixed and distinct.
_ADVISORY_KEYS = {"optuna": 0x6B645F6F70, "mlflow": 0x6B645F6D6C}


def driver_url(url: str) -> str:
    """``url`` with a PostgreSQL driver that is installed.

    SQLAlchemy 2.1 maps ``postgresql://`` to psycopg 3; a machine with only psycopg2 gets
    ``postgresql+psycopg2://`` instead of an import error.
    """
    missing_v3 = url.startswith("postgresql://") and importlib.util.find_spec("psycopg") is None
    if missing_v3 and importlib.util.find_spec("psycopg2") is not None:
        return "postgresql+psycopg2://" + url[len("postgresql://") :]
    return url


@contextmanager
def schema_lock(url: str, kind: str) -> Iterator[None]:
    """Hold a lock private to (``url``'s database, ``kind``) while a worker first opens it.

    No-op for URLs that are not a PostgreSQL or SQLite database (e.g. an MLflow ``http://`` server,
    which migrates its own store once, at start-up).
    """
    if url.startswith("postgresql"):
        import sqlalchemy
        from sqlalchemy.pool import NullPool

        key = _ADVISORY_KEYS[kind]
        engine = sqlalchemy.create_engine(driver_url(url), poolclass=NullPool)
        try:
            with engine.connect() as conn:
                conn.execute(sqlalchemy.text("SELECT pg_advisory_lock(:key)"), {"key": key})
                conn.commit()
                try:
                    yield
                finally:
                    conn.execute(sqlalchemy.text("SELECT pg_advisory_unlock(:key)"), {"key": key})
                    conn.commit()
        finally:
            engine.dispose()
    elif url.startswith("sqlite:///") and url != "sqlite:///:memory:":
        from filelock import FileLock

        path = str(Path(url[len("sqlite:///") :]).resolve())
        digest = hashlib.sha256(f"{kind}:{path}".encode()).hexdigest()[:16]
        with FileLock(str(Path(tempfile.gettempdir()) / f"kd-schema-{digest}.lock")):
            yield
    else:
        yield
