"""Throw-away PostgreSQL and MLflow servers, tiny data and worker launching for integration runs and benchmarks.

Shared by ``tests/integration/run_postgres.py`` (CI) and ``benchmarks/bench_workers.py`` so both
exercise the documented distributed setup the same way: a real PostgreSQL server from the
Debian packages (``initdb`` + ``pg_ctl`` on a loopback port, as the ``postgres`` user when we
are root, since PostgreSQL refuses to run as root) and an ``mlflow server`` in front of it.
Nothing here needs the network; everything lives in temporary folders removed on exit.
"""

from __future__ import annotations

import glob
import os
import random
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
PG_USER = "kd"  # the superuser created by initdb; trust auth on loopback only


def free_port() -> int:
    """A TCP port that was free a moment ago (good enough for a private test server)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def find_pg_bin(install: bool = False) -> Path:
    """The directory holding ``initdb``/``pg_ctl``; with ``install``, apt-get installs PostgreSQL if missing.

    Debian keeps the server binaries out of ``PATH`` (``/usr/lib/postgresql/<version>/bin``).
    """
    for _ in range(2):
        found = shutil.which("initdb")
        if found:
            return Path(os.path.realpath(found)).parent
        candidates = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: int(p.split("/")[4]))
        if candidates:
            return Path(candidates[-1]).parent
        if not install:
            break
        _apt_install_postgresql()
        install = False
    raise RuntimeError("PostgreSQL server binaries (initdb) not found; apt-get install postgresql")


def _apt_install_postgresql() -> None:
    prefix = [] if os.geteuid() == 0 else ["sudo", "-n"]
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    subprocess.run([*prefix, "apt-get", "update", "-q"], check=True, env=env)
    subprocess.run([*prefix, "apt-get", "install", "-y", "-q", "postgresql"], check=True, env=env)


def _as_server_user(cmd: Sequence[str]) -> list[str]:
    """PostgreSQL refuses to run as root: run its tools as ``postgres`` when we are root."""
    if os.geteuid() != 0:
        return list(cmd)
    runuser = shutil.which("runuser")
    if runuser:
        return [runuser, "-u", "postgres", "--", *cmd]
    return ["su", "postgres", "-s", "/bin/sh", "-c", " ".join(cmd)]


@dataclass
class PostgresServer:
    """A running private PostgreSQL cluster on 127.0.0.1:``port``."""

    bin_dir: Path
    data_dir: Path
    port: int

    def url(self, database: str) -> str:
        return f"postgresql://{PG_USER}@127.0.0.1:{self.port}/{database}"

    def create_database(self, name: str) -> str:
        """Create database ``name`` (if missing) and return its URL."""
        import psycopg2

        conn = psycopg2.connect(host="127.0.0.1", port=self.port, user=PG_USER, dbname="postgres")
        try:
            conn.autocommit = True
            with conn.cursor() as cur:
                cur.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,))
                if cur.fetchone() is None:
                    cur.execute(f'CREATE DATABASE "{name}"')
        finally:
            conn.close()
        return self.url(name)


@contextmanager
def postgres_server(install: bool = False, durable: bool = False) -> Iterator[PostgresServer]:
    """Start a fresh PostgreSQL cluster in a temporary folder; stop and delete it on exit.

    ``durable=False`` turns fsync off (tests need speed, not crash safety); benchmarks that compare
    storage costs pass ``durable=True`` so PostgreSQL pays for its commits as SQLite does.
    """
    bin_dir = find_pg_bin(install)
    # Not under pytest's tmp_path: that is mode 0700 for root, and the server runs as 'postgres'.
    data_dir = Path(tempfile.mkdtemp(prefix="kd-pg-"))
    if os.geteuid() == 0:
        shutil.chown(data_dir, "postgres", "postgres")
    port = free_port()
    log_file = data_dir / "server.log"
    try:
        subprocess.run(
            _as_server_user([str(bin_dir / "initdb"), "-D", str(data_dir / "db"), "-U", PG_USER, "--auth=trust"]),
            check=True,
            capture_output=True,
            text=True,
            cwd=data_dir,  # the caller's folder may be closed to 'postgres' (e.g. under /root)
        )
        opts = f"-c listen_addresses=127.0.0.1 -p {port} -c unix_socket_directories={data_dir} -c max_connections=200"
        if not durable:
            opts += " -c fsync=off -c synchronous_commit=off -c full_page_writes=off"
        started = subprocess.run(
            _as_server_user(
                [str(bin_dir / "pg_ctl"), "-D", str(data_dir / "db"), "-l", str(log_file), "-w", "-o", opts, "start"]
            ),
            capture_output=True,
            text=True,
            cwd=data_dir,
        )
        if started.returncode != 0:
            log = log_file.read_text() if log_file.exists() else ""
            raise RuntimeError(f"pg_ctl start failed: {started.stdout}{started.stderr}\n{log}")
        yield PostgresServer(bin_dir, data_dir, port)
    finally:
        if (data_dir / "db" / "postmaster.pid").exists():
            subprocess.run(
                _as_server_user([str(bin_dir / "pg_ctl"), "-D", str(data_dir / "db"), "-m", "immediate", "stop"]),
                capture_output=True,
                cwd=data_dir,
            )
        shutil.rmtree(data_dir, ignore_errors=True)


@contextmanager
def mlflow_server(backend_uri: str, workdir: Path, timeout: float = 180) -> Iterator[str]:
    """Run ``mlflow server`` on ``backend_uri`` (artifacts served from ``workdir``); yields its http URL."""
    port = free_port()
    workdir.mkdir(parents=True, exist_ok=True)
    cmd = [
        sys.executable,
        "-m",
        "mlflow",
        "server",
        "--backend-store-uri",
        backend_uri,
        "--artifacts-destination",
        str(workdir / "artifacts"),
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--workers",
        "1",
    ]
    with open(workdir / "mlflow-server.log", "w") as log:  # the child keeps its own copy of the descriptor
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, cwd=workdir, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        _wait_http(proc, f"{url}/health", timeout, workdir / "mlflow-server.log", "mlflow server")
        yield url
    finally:
        stop_process_group(proc)


@contextmanager
def optuna_dashboard_server(storage_url: str, workdir: Path, timeout: float = 60) -> Iterator[str]:
    """Run ``optuna-dashboard`` on ``storage_url`` on a free loopback port; yields its http URL."""
    port = free_port()
    workdir.mkdir(parents=True, exist_ok=True)
    beside = Path(sys.executable).parent / "optuna-dashboard"  # the venv's script, even when the venv is not active
    exe = str(beside) if beside.exists() else shutil.which("optuna-dashboard") or "optuna-dashboard"
    cmd = [exe, storage_url, "--host", "127.0.0.1", "--port", str(port)]
    log_path = workdir / "optuna-dashboard.log"
    with open(log_path, "w") as log:  # the child keeps its own copy of the descriptor
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, cwd=workdir, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        _wait_http(proc, f"{url}/api/studies", timeout, log_path, "optuna-dashboard")
        yield url
    finally:
        stop_process_group(proc)


def _wait_http(proc: subprocess.Popen, url: str, timeout: float, log_path: Path, what: str) -> None:
    """Wait until ``url`` answers 200, failing early (with the log) if the server process exits."""
    deadline = time.monotonic() + timeout
    while True:
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited ({proc.returncode}):\n{_tail(log_path)}")
        try:
            with urllib.request.urlopen(url, timeout=2) as reply:
                if reply.status == 200:
                    return
        except OSError:
            pass
        if time.monotonic() > deadline:
            raise RuntimeError(f"{what} not up after {timeout}s:\n{_tail(log_path)}")
        time.sleep(0.5)


def stop_process_group(proc: subprocess.Popen, grace: float = 10) -> None:
    """Stop a process started with ``start_new_session`` and its children (gunicorn/uvicorn workers)."""
    if proc.poll() is None:
        try:
            os.killpg(proc.pid, 15)
            proc.wait(grace)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, 9)
            proc.wait()
        except ProcessLookupError:
            pass


def _tail(path: Path, lines: int = 40) -> str:
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:]) if path.exists() else ""


# -- tiny data and workers ---------------------------------------------------------------------

POSITIVE = ["great", "wonderful", "lovely", "brilliant", "superb", "delightful", "charming", "excellent"]
NEGATIVE = ["awful", "terrible", "boring", "dreadful", "dull", "horrible", "clumsy", "tedious"]
NEUTRAL = ["movie", "film", "plot", "story", "acting", "cast", "ending", "script", "music", "scene"]


def write_tiny_sst2(folder: Path, train_rows: int = 120, dev_rows: int = 40) -> Path:
    """``folder/sst2/{train,dev}.tsv`` of short synthetic sentences (label = sentiment word); returns ``folder``."""
    for name, n, seed in (("train.tsv", train_rows, 1), ("dev.tsv", dev_rows, 2)):
        rng = random.Random(seed)
        rows = []
        for i in range(n):
            words = ["the", rng.choice(NEUTRAL), "was", rng.choice(POSITIVE if i % 2 else NEGATIVE)]
            rows.append(f"{' '.join(words + [rng.choice(NEUTRAL) for _ in range(rng.randint(0, 4))])}\t{i % 2}\n")
        (folder / "sst2").mkdir(parents=True, exist_ok=True)
        (folder / "sst2" / name).write_text("sentence\tlabel\n" + "".join(rows), encoding="utf-8")
    return folder


def worker_env() -> dict[str, str]:
    """Environment for ``python -m studies.run`` workers: offline, quiet, the repository importable."""
    env = dict(os.environ)
    env.update(
        HF_HUB_OFFLINE="1",
        TRANSFORMERS_OFFLINE="1",
        TOKENIZERS_PARALLELISM="false",
        MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR="false",
        GIT_PYTHON_REFRESH="quiet",
        PYTHONPATH=os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH", "")) if p),
    )
    return env


def start_workers(
    n: int, overrides: Sequence[str], cwd: Path, log_prefix: str = "worker", env: dict[str, str] | None = None
) -> list[tuple[subprocess.Popen, Path]]:
    """Start ``n`` ``python -m studies.run`` workers with the same overrides at (nearly) the same moment."""
    cwd.mkdir(parents=True, exist_ok=True)
    procs = []
    for i in range(n):
        log_path = cwd / f"{log_prefix}{i}.log"
        with open(log_path, "w") as log:  # the child keeps its own copy of the descriptor
            proc = subprocess.Popen(
                [sys.executable, "-m", "studies.run", *overrides],
                cwd=cwd,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env or worker_env(),
                start_new_session=True,
            )
        procs.append((proc, log_path))
    return procs


def wait_workers(procs: list[tuple[subprocess.Popen, Path]], timeout: float) -> list[int]:
    """Wait for every worker (killing all on timeout); returns their exit codes."""
    deadline = time.monotonic() + timeout
    codes = []
    for proc, _ in procs:
        try:
            codes.append(proc.wait(max(1.0, deadline - time.monotonic())))
        except subprocess.TimeoutExpired:
            for other, _ in procs:
                stop_process_group(other, grace=2)
            raise
    return codes
