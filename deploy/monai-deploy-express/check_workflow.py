"""Offline check of a MONAI Deploy Workflow Manager workflow definition (standard library only).

The Workflow Manager publishes no JSON Schema: it validates a workflow in C# when it is POSTed to /workflows.
This script repeats, without a running Workflow Manager, the rules of that validator which need no other
service, as written in Project-MONAI/monai-deploy-workflow-manager at tag 0.2.0 (the version MONAI Deploy
Express 0.6.0 runs):

* src/WorkflowManager/WorkflowManager/Validators/WorkflowValidator.cs (names, task ids, types, destinations,
  input artifacts, export destinations),
* src/TaskManager/Plug-ins/Docker/Keys.cs and DockerPlugin.cs (required ``args`` of a ``docker`` task; every
  input/output artifact name must also be an ``args`` key, whose value is the path inside the container),
* guidelines/mwm-workflow-spec.md (name at most 15 characters, description at most 200),

plus two consistency checks of our own: every ``{{ context.executions.TASK.artifacts.NAME }}`` names a task
and one of its output artifacts, and the container image tag is the version in ``app.yaml``.
What it cannot check: that the data origins are registered with the Informatics Gateway (the Workflow Manager
asks the gateway), that the image exists, that the workflow runs.

usage: python check_workflow.py [WORKFLOW_JSON]   (default: ich-seg-workflow.json beside this script)
exit status 0 when no problem is found, 1 otherwise (each problem printed on its own line).
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path
from urllib.parse import urlparse

HERE = Path(__file__).resolve().parent
VALID_TASK_TYPES = {
    "argo",
    "aide_clinical_review",
    "router",
    "export",
    "docker",
    "email",
    "remote_app_execution",
    "export_hl7",
}
DOCKER_REQUIRED_ARGS = ("server_url", "entrypoint", "command", "container_image", "temp_storage_container_path")
TASK_ID = re.compile(r"^[a-zA-Z0-9-_]+$")
EXECUTION_REF = re.compile(r"\{\{\s*context\.executions\.([^.\s}]+)\.artifacts\.([^\s}]+)\s*\}\}")


def ae_title_problem(value: object) -> str | None:
    """DICOM AE title (PS3.5 AE VR): 1-16 characters, no backslash or control characters; the Workflow
    Manager allows at most 15 for informatics_gateway.ae_title."""
    if not isinstance(value, str) or not value.strip():
        return "must be a non-empty string"
    if len(value) > 15:
        return "must be at most 15 characters (Workflow Manager rule)"
    if "\\" in value or any(ord(c) < 32 for c in value):
        return "must not contain a backslash or control characters"
    return None


def fold_keys(value: object) -> object:
    """Object keys in lower case, as the Workflow Manager's JSON reader (Newtonsoft) matches them regardless of
    case (the MONAI Deploy Express samples write ``"Name"``); the keys of ``args`` are data and kept as they are."""
    if isinstance(value, dict):
        return {
            key.lower(): dict(item) if key.lower() == "args" and isinstance(item, dict) else fold_keys(item)
            for key, item in value.items()
        }
    if isinstance(value, list):
        return [fold_keys(item) for item in value]
    return value


def check(workflow: dict) -> list[str]:
    workflow = fold_keys(workflow)  # type: ignore[assignment]
    problems: list[str] = []
    name = workflow.get("name")
    if not isinstance(name, str) or not name.strip():
        problems.append("Missing Workflow Name.")
    elif len(name) > 15:
        problems.append(f"name '{name}' is longer than 15 characters (mwm-workflow-spec)")
    if not isinstance(workflow.get("version"), str) or not workflow["version"].strip():
        problems.append("Missing Workflow Version.")
    if len(workflow.get("description", "")) > 200:
        problems.append("description is longer than 200 characters (mwm-workflow-spec)")

    gateway = workflow.get("informatics_gateway")
    gateway_destinations: list[str] = []
    if not isinstance(gateway, dict):
        problems.append("Missing InformaticsGateway section.")
    else:
        problem = ae_title_problem(gateway.get("ae_title"))
        if problem:
            problems.append(f"informatics_gateway.ae_title {problem}")
        for key in ("data_origins", "export_destinations"):
            values = gateway.get(key, [])
            if not isinstance(values, list) or not all(isinstance(v, str) and v for v in values):
                problems.append(f"informatics_gateway.{key} must be a list of non-empty strings")
        gateway_destinations = [d for d in gateway.get("export_destinations", []) if isinstance(d, str)]

    tasks = workflow.get("tasks")
    if not isinstance(tasks, list) or not tasks:
        problems.append("Workflow does not contain Tasks, please review Workflow.")
        return problems

    ids = [task.get("id", "") for task in tasks]
    outputs = {task.get("id"): {a.get("name") for a in task.get("artifacts", {}).get("output", [])} for task in tasks}
    destinations: list[str] = []
    for task in tasks:
        task_id = task.get("id", "")
        if not TASK_ID.match(task_id):
            problems.append(f"TaskId: '{task_id}' Contains Invalid Characters.")
        if ids.count(task_id) > 1:
            problems.append(f"Found duplicate task id '{task_id}'")
        task_type = str(task.get("type", "")).lower()
        if task_type not in VALID_TASK_TYPES:
            problems.append(f"Task: '{task_id}' has an invalid type")
            continue
        names = [d.get("name") for d in task.get("task_destinations", [])]
        if ids[0] in names:
            problems.append(f"Converging Tasks Destinations in task: {task_id} on root task: {ids[0]}")
        problems += [f"Task: '{task_id}' task_destination '{n}' is not a task" for n in names if n not in ids]
        destinations += names

        artifacts = task.get("artifacts", {})
        output_names = [a.get("name") for a in artifacts.get("output", [])]
        if len(output_names) != len(set(output_names)):
            problems.append(f"Task: '{task_id}' has multiple output names with the same value.")
        inputs = artifacts.get("input", [])
        if task_type != "router":
            if not inputs:
                problems.append(f"Task: '{task_id}' must have Input Artifacts specified.")
            if any(not a.get("name") for a in inputs):
                problems.append(f"Task: '{task_id}' Input Artifacts must have a Name.")
            if any(not a.get("value") for a in inputs):
                problems.append(f"Task: '{task_id}' Input Artifacts must have a Value.")
        for artifact in inputs:
            for ref_task, ref_output in EXECUTION_REF.findall(artifact.get("value", "")):
                if ref_task not in outputs:
                    problems.append(f"Task: '{task_id}' input '{artifact.get('name')}' refers to no task '{ref_task}'")
                elif ref_output not in outputs[ref_task]:
                    problems.append(
                        f"Task: '{task_id}' input '{artifact.get('name')}' refers to '{ref_output}', "
                        f"not an output artifact of task '{ref_task}'"
                    )

        export_names = [d.get("name") for d in task.get("export_destinations", [])]
        if task_type in ("export", "export_hl7", "remote_app_execution") and not export_names:
            problems.append(f"Task: '{task_id}' does not contain a destination.")
        if len(export_names) != len(set(export_names)):
            problems.append(f"Task: '{task_id}' contains duplicate destinations.")
        problems += [
            f"Task: '{task_id}' export_destination: '{n}' must be registered in the informatics_gateway object."
            for n in export_names
            if n not in gateway_destinations
        ]

        if task_type == "docker":
            args = task.get("args", {})
            if not all(isinstance(v, str) for v in args.values()):
                problems.append(f"Task: '{task_id}' args values must all be strings")
            missing = [key for key in DOCKER_REQUIRED_ARGS if key not in args]
            problems += [f"Task: '{task_id}' docker args lack required '{key}'" for key in missing]
            if "server_url" in args and not urlparse(str(args["server_url"])).scheme:
                problems.append(f"Task: '{task_id}' server_url '{args['server_url']}' is not an absolute URI")
            for artifact in [*inputs, *artifacts.get("output", [])]:
                if artifact.get("name") not in args:
                    problems.append(
                        f"Task: '{task_id}' artifact '{artifact.get('name')}' is not an args key "
                        "(the Docker plug-in takes the container path from it)"
                    )

    unreferenced = [task_id for task_id in ids[1:] if task_id not in destinations]
    if unreferenced:
        problems.append(f"Found Task(s) without any task destinations to it: {', '.join(unreferenced)}")
    duplicated = sorted({d for d in destinations if destinations.count(d) > 1})
    problems += [f"Converging Tasks Destinations on task: {d}" for d in duplicated]
    return problems


def check_image_version(workflow: dict, app_yaml: Path) -> list[str]:
    """The tag of this app's image (``ich-seg...``) in a docker task is the version in app.yaml (when found)."""
    if not app_yaml.is_file():
        return []
    version_line = r"^application:\s*\n(?:[ \t]+.*\n)*?[ \t]+version:\s*['\"]?([^'\"\s#]+)"
    match = re.search(version_line, app_yaml.read_text(), re.M)
    if not match:
        return [f"{app_yaml}: no application version found"]
    version = match.group(1)
    problems = []
    for task in workflow.get("tasks", []):
        image = task.get("args", {}).get("container_image")
        if not (task.get("type") == "docker" and isinstance(image, str) and image.startswith("ich-seg")):
            continue
        if image.rsplit(":", 1)[-1] != version:
            problems.append(f"Task: '{task.get('id')}' image '{image}' is not tagged with app.yaml's version {version}")
    return problems


def main(argv: list[str]) -> int:
    path = Path(argv[1]) if len(argv) > 1 else HERE / "ich-seg-workflow.json"
    try:
        workflow = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as error:
        print(f"{path}: {error}")
        return 1
    if not isinstance(workflow, dict):
        print(f"{path}: not a JSON object")
        return 1
    problems = check(workflow) + check_image_version(workflow, HERE.parents[1] / "app.yaml")
    for problem in problems:
        print(f"{path.name}: {problem}")
    if not problems:
        print(f"{path.name}: no problem found (offline rules of Workflow Manager 0.2.0; see this script's docstring)")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
