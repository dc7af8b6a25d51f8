"""The MONAI Deploy Express workflow for this MAP stays valid (the Workflow Manager's offline rules) and names the
image tag of the current app version (``app.yaml``); a broken copy is caught."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CHECK = REPO / "deploy" / "monai-deploy-express" / "check_workflow.py"
WORKFLOW = REPO / "deploy" / "monai-deploy-express" / "ich-seg-workflow.json"


def run_check(path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, str(CHECK), str(path)], capture_output=True, text=True, timeout=60)


def test_bundled_workflow_passes() -> None:
    result = run_check(WORKFLOW)
    assert result.returncode == 0, result.stdout


def test_workflow_with_a_dangling_task_destination_fails(tmp_path: Path) -> None:
    workflow = json.loads(WORKFLOW.read_text())
    workflow["tasks"][0]["task_destinations"] = [{"name": "no-such-task"}]
    broken = tmp_path / "broken.json"
    broken.write_text(json.dumps(workflow))
    result = run_check(broken)
    assert result.returncode != 0 and "no-such-task" in result.stdout, result.stdout
