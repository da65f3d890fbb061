#!/usr/bin/env bash
# Integration: two workers on ONE Optuna study in a real PostgreSQL, tracked by a real MLflow server
# (see run_postgres.py). Installs PostgreSQL from Debian's packages when its server binaries are missing.
set -euo pipefail
cd "$(dirname "$0")/../.."
PYTHON="${PYTHON:-python}"
. tests/integration/apt_install.sh
if ! command -v initdb >/dev/null 2>&1 && ! compgen -G "/usr/lib/postgresql/*/bin/initdb" >/dev/null; then
    apt_install postgresql "integration"
fi
exec "$PYTHON" tests/integration/run_postgres.py "$@"
