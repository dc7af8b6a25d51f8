#!/usr/bin/env bash
# Install what the tests need (Debian packages through apt-get, sudo when not root: dicom3tools, dcmtk, orthanc,
# orthanc-dicomweb, iproute2, nodejs + npm; npm's dcmjs; the Python stack), lint (ruff), type-check (mypy) and run the
# test suite offline in a private network namespace.
set -euo pipefail
cd "$(dirname "$0")/.."
# Debian: dicom3tools (dciodvfy checks every SEG), dcmtk (storescu/echoscu) and Orthanc + its DICOMweb plugin (the
# PACS the gateway tests talk to), iproute2 (loopback in the tests' private network namespace)
if ! command -v dciodvfy >/dev/null 2>&1 || ! command -v storescu >/dev/null 2>&1 || ! command -v Orthanc >/dev/null 2>&1 \
   || [ ! -e /usr/share/orthanc/plugins/libOrthancDicomWeb.so ] || ! command -v ip >/dev/null 2>&1; then
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  $SUDO apt-get update -qq && $SUDO apt-get install -y -qq --no-install-recommends dicom3tools dcmtk orthanc \
    orthanc-dicomweb iproute2 >/dev/null
fi
if ! command -v node >/dev/null 2>&1; then  # tests/test_viewers.py runs dcmjs (OHIF's DICOM parser) under Node
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  $SUDO apt-get update -qq && $SUDO apt-get install -y -qq --no-install-recommends nodejs npm >/dev/null
fi
[ -d tests/viewers/node_modules ] || npm ci --prefix tests/viewers --ignore-scripts --no-audit --no-fund
bash scripts/setup_env.sh requirements-dev.txt
ulimit -s 32768 || true  # holoscan wants a 32 MB stack
export YOLO_CONFIG_DIR="${YOLO_CONFIG_DIR:-$PWD/.ultralytics}"
.venv/bin/ruff check .  # lint and types first: settings in pyproject.toml
.venv/bin/mypy
# The tests run in a private network namespace with only loopback up: Orthanc listens on every interface and must
# not be reachable from outside, and the suite proves it needs no network. Without the privilege for it (no root,
# no user namespaces) the suite runs as is and the Orthanc tests say why they cannot run.
NETNS=()
if unshare -n true 2>/dev/null; then
  NETNS=(unshare -n sh -c 'ip link set lo up && exec "$@"' sh)
elif unshare -rn true 2>/dev/null; then
  NETNS=(unshare -rn sh -c 'ip link set lo up && exec "$@"' sh)
fi
set +e
"${NETNS[@]}" .venv/bin/python -m pytest tests -q "$@"
status=$?
set -e
if [ "$status" -eq 5 ]; then
  echo "pytest collected no tests: failing" >&2
fi
exit "$status"
