#!/usr/bin/env bash
# Run the ICH application on the bundled demo study (demo/study) with the bundled models; results in output/demo.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup_env.sh requirements.txt
ulimit -s 32768 || true  # holoscan wants a 32 MB stack
export YOLO_CONFIG_DIR="${YOLO_CONFIG_DIR:-$PWD/.ultralytics}"
out="${1:-output/demo}"
mkdir -p "$out"
.venv/bin/python app.py -i demo/study -o "$out" -m models
echo
echo "DICOM SEG : $out/ich_seg.dcm   (open with the CT in OHIF, 3D Slicer or Weasis)"
echo "Report    : $out/ich_report.json"
echo "Preview   : $out/ich_preview.png"
