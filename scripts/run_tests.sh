#!/usr/bin/env bash
# Install what the tests need (Debian's dicom3tools for dciodvfy, the Python stack), lint (ruff), type-check (mypy)
# and run the test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
if ! command -v dciodvfy >/dev/null 2>&1; then
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  $SUDO apt-get update -qq && $SUDO apt-get install -y -qq --no-install-recommends dicom3tools >/dev/null
fi
bash scripts/setup_env.sh requirements-dev.txt
ulimit -s 32768 || true  # holoscan wants a 32 MB stack
export YOLO_CONFIG_DIR="${YOLO_CONFIG_DIR:-$PWD/.ultralytics}"
.venv/bin/ruff check .  # lint and types first: settings in pyproject.toml
.venv/bin/mypy
set +e
.venv/bin/python -m pytest tests -q "$@"
status=$?
set -e
if [ "$status" -eq 5 ]; then
  echo "pytest collected no tests: failing" >&2
fi
exit "$status"
