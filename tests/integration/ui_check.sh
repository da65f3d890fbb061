#!/usr/bin/env bash
# Integration: the MLflow UI and optuna-dashboard opened in headless Chromium (see ui_check.py).
# Installs Debian's chromium package when no Chromium is found (a browser download from a tool's
# own site does not work offline). Pass --screenshots docs/ to refresh README's pictures.
set -euo pipefail
cd "$(dirname "$0")/../.."
PYTHON="${PYTHON:-python}"
if ! command -v chromium >/dev/null 2>&1 && ! command -v chromium-browser >/dev/null 2>&1 \
    && ! command -v google-chrome >/dev/null 2>&1; then
    SUDO=""
    if [ "$(id -u)" -ne 0 ]; then SUDO="sudo -n"; fi
    echo "ui check: installing chromium with apt-get" >&2
    $SUDO apt-get update -q
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -q chromium
fi
exec "$PYTHON" tests/integration/ui_check.py "$@"
