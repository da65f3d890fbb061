#!/usr/bin/env bash
# Integration: the MLflow UI and optuna-dashboard opened in headless Chromium (see ui_check.py).
# Installs Debian's chromium package when no Chromium is found (a browser download from a tool's
# own site does not work offline). Pass --screenshots docs/ to refresh README's pictures.
set -euo pipefail
cd "$(dirname "$0")/../.."
PYTHON="${PYTHON:-python}"
. tests/integration/apt_install.sh
if ! command -v chromium >/dev/null 2>&1 && ! command -v chromium-browser >/dev/null 2>&1 \
    && ! command -v google-chrome >/dev/null 2>&1; then
    apt_install chromium "ui check"
fi
exec "$PYTHON" tests/integration/ui_check.py "$@"
