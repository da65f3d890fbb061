#!/usr/bin/env bash
# Integration: two workers on ONE Optuna study in a real PostgreSQL, tracked by a real MLflow server
# (see run_postgres.py). Installs PostgreSQL from Debian's packages when its server binaries are missing.
set -euo pipefail
cd "$(dirname "$0")/../.."
PYTHON="${PYTHON:-python}"
if ! command -v initdb >/dev/null 2>&1 && ! compgen -G "/usr/lib/postgresql/*/bin/initdb" >/dev/null; then
    SUDO=""
    if [ "$(id -u)" -ne 0 ]; then SUDO="sudo -n"; fi
    echo "integration: installing postgresql with apt-get" >&2
    $SUDO apt-get update -q
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -q postgresql
fi
exec "$PYTHON" tests/integration/run_postgres.py "$@"
