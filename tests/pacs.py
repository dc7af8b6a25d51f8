"""A real Orthanc (Debian's, with its DICOMweb plugin) and a real gateway node, started and stopped by tests.

Orthanc binds every interface and has no bind-address option, so it is only started inside a private network
namespace (``scripts/run_tests.sh`` runs the suite under ``unshare -n`` with loopback up).
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest
import yaml

from gateway.store import Store, Study

REPO = Path(__file__).resolve().parents[1]
ORTHANC_PLUGIN = Path("/usr/share/orthanc/plugins/libOrthancDicomWeb.so")


def network_is_private() -> bool:
    """True when this process sees no network interface but loopback (its own network namespace)."""
    interfaces = [line.split(":")[0].strip() for line in Path("/proc/net/dev").read_text().splitlines()[2:]]
    return interfaces == ["lo"]


def require_private_network() -> None:
    """Orthanc may only run where nobody else can reach it; in CI that is a failure, elsewhere a skip."""
    if network_is_private():
        return
    reason = ("Orthanc listens on every interface: run the suite through scripts/run_tests.sh, which gives it a "
              "private network namespace (unshare -n)")
    if os.environ.get("CI"):
        pytest.fail(reason)
    pytest.skip(reason)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_for(condition: Any, timeout: float, what: str, interval: float = 0.2) -> Any:
    """Poll ``condition()`` until it returns something true; fail naming ``what`` after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


class Orthanc:
    """Orthanc with its own storage, DICOM and HTTP ports; the gateway is registered as modality ``ichseg``."""

    def __init__(self, folder: Path, node_port: int, node_aet: str = "ICHSEG") -> None:
        self.folder = folder
        self.dicom_port, self.http_port = free_port(), free_port()
        self.aet = "ORTHANC"
        self.url = f"http://127.0.0.1:{self.http_port}"
        self.config = folder / "orthanc.json"
        self.config.write_text(json.dumps({
            "Name": "test-pacs", "StorageDirectory": str(folder / "storage"), "IndexDirectory": str(folder / "storage"),
            "HttpPort": self.http_port, "DicomPort": self.dicom_port, "DicomAet": self.aet,
            "RemoteAccessAllowed": False, "AuthenticationEnabled": False, "DicomCheckCalledAet": False,
            "DicomAlwaysAllowStore": True, "DicomAlwaysAllowEcho": True, "DicomCheckModalityHost": False,
            "DicomModalities": {"ichseg": {"AET": node_aet, "Host": "127.0.0.1", "Port": node_port}},
            "StableAge": 1, "SaveJobs": False, "OverwriteInstances": True, "SyncStorageArea": False,
            "Plugins": [str(ORTHANC_PLUGIN)], "DicomWeb": {"Enable": True, "Root": "/dicom-web/"},
        }))
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        log = open(self.folder / "orthanc.log", "ab")  # noqa: SIM115 (Orthanc keeps it)
        self.process = subprocess.Popen(["Orthanc", str(self.config)], stdout=log, stderr=subprocess.STDOUT,
                                        env={**os.environ, "TCP_NODELAY": "1"})
        log.close()
        wait_for(self._up, 30, "Orthanc's REST API")

    def stop(self) -> None:
        if self.process is not None:
            self.process.terminate()
            self.process.wait(timeout=30)
            self.process = None

    def _up(self) -> bool:
        try:
            self.get("/system")
            return True
        except OSError:
            return False

    def request(self, method: str, path: str, body: bytes | None = None, content_type: str = "application/json",
                timeout: float = 120) -> bytes:
        request = urllib.request.Request(self.url + path, data=body, method=method,
                                         headers={"Content-Type": content_type, "Expect": ""})
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.read()

    def get(self, path: str) -> Any:
        return json.loads(self.request("GET", path))

    def post(self, path: str, payload: Any) -> Any:
        return json.loads(self.request("POST", path, json.dumps(payload).encode()))

    def upload(self, folder: Path) -> str:
        """Store every file of ``folder`` in Orthanc; returns Orthanc's study id."""
        parents = {json.loads(self.request("POST", "/instances", path.read_bytes(), "application/dicom"))["ParentStudy"]
                   for path in sorted(folder.rglob("*")) if path.is_file()}
        assert len(parents) == 1, parents
        return parents.pop()

    def push(self, study_id: str, synchronous: bool = True) -> Any:
        """Orthanc sends the study to the gateway by C-STORE (what a PACS routing rule does)."""
        return self.post("/modalities/ichseg/store", {"Resources": [study_id], "Synchronous": synchronous})

    def study_id(self, study_uid: str) -> str:
        found = json.loads(self.request("POST", "/tools/lookup", study_uid.encode(), "text/plain"))
        return next(item["ID"] for item in found if item["Type"] == "Study")

    def seg_instances(self, study_uid: str) -> list[str]:
        """Orthanc ids of the SEG instances in the study."""
        try:
            study = self.study_id(study_uid)
        except StopIteration:
            return []
        return [instance["ID"] for instance in self.get(f"/studies/{study}/instances")
                if self.get(f"/instances/{instance['ID']}/tags?simplify").get("Modality") == "SEG"]

    def file(self, instance_id: str) -> bytes:
        return self.request("GET", f"/instances/{instance_id}/file")


class GatewayNode:
    """``python -m gateway --config …`` as a process, with its configuration written from a mapping."""

    def __init__(self, folder: Path, settings: dict[str, Any]) -> None:
        self.folder = folder
        self.settings = settings
        self.config = folder / "gateway.yaml"
        self.config.write_text(yaml.safe_dump(settings))
        self.log = folder / "gateway.log"
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def spool(self) -> Path:
        return self.folder / self.settings.get("spool", "spool")

    def start(self, wait_warm: bool = True) -> None:
        """Start and wait until it listens (and, with ``wait_warm``, until its warm worker is ready)."""
        listening, ready = self.count("listening as"), self.count("warm worker ready")
        with open(self.log, "ab") as log:
            self.process = subprocess.Popen([sys.executable, "-m", "gateway", "--config", str(self.config)],
                                            cwd=REPO, stdout=log, stderr=subprocess.STDOUT)
        wait_for(lambda: self.count("listening as") > listening, 60, "the gateway to listen")
        if wait_warm and self.settings.get("runner", {}).get("kind", "warm") == "warm":
            wait_for(lambda: self.count("warm worker ready") > ready, 180, "the warm worker")

    def count(self, text: str) -> int:
        """How often ``text`` appears in the node's log."""
        return self.log.read_text().count(text) if self.log.exists() else 0

    def kill(self) -> None:
        """SIGKILL: no clean-up of any kind (the app it runs dies with it)."""
        assert self.process is not None
        self.process.send_signal(signal.SIGKILL)
        self.process.wait()
        self.process = None

    def stop(self) -> int:
        """SIGTERM and wait for the drain; returns the exit status."""
        if self.process is None:
            return 0
        self.process.terminate()
        status = self.process.wait(timeout=180)
        self.process = None
        return status

    def studies(self) -> list[Study]:
        store = Store(self.spool / "gateway.sqlite")
        try:
            return store.studies(500)
        finally:
            store.close()

    def spool_studies(self) -> list[Path]:
        return sorted((self.spool / "studies").iterdir()) if (self.spool / "studies").exists() else []
