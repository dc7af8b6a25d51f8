#!/usr/bin/env bash
# Create .venv with the pinned stack (torch 2.14.1 from the machine's disk) unless it is already complete.
set -euo pipefail
cd "$(dirname "$0")/.."
requirements="${1:-requirements.txt}"
if [ ! -x .venv/bin/python ]; then
  python3 -m venv .venv
fi
stamp=".venv/.installed-$(sha1sum "$requirements" requirements.txt | sha1sum | cut -c1-12)"
if [ ! -f "$stamp" ]; then
  .venv/bin/pip install --quiet --upgrade pip
  .venv/bin/pip install --quiet -r "$requirements"
  .venv/bin/python - <<'PY'
import torch, torchvision
assert torch.__version__.startswith("2.14.1"), f"torch was replaced: {torch.__version__}"
assert torchvision.__version__.startswith("0.29.1"), f"torchvision was replaced: {torchvision.__version__}"
PY
  touch "$stamp"
fi
