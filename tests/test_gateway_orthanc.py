"""The gateway against a real PACS (Orthanc from Debian) with the real application: a study in by C-STORE, its SEG
back by C-STORE or STOW-RS, through crashes, a destination that is down, two senders and a study over the limits.

Everything runs in the suite's private network namespace (``scripts/run_tests.sh``); studies are 8-slice 256²
copies of one synthetic study with new UIDs, so the real application takes a few seconds each.
"""

from __future__ import annotations

import io
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from pacs import REPO, GatewayNode, Orthanc, free_port, require_private_network, wait_for
from pydicom import Dataset, FileMetaDataset, dcmread
from pydicom.uid import ExplicitVRLittleEndian, generate_uid
from pynetdicom import AE
from small_study import copy_as_new_study, generated_study

from gateway.store import DONE, RUNNING, SENDING

RUN_TIMEOUT = 300  # seconds for one study to come back on a busy 2-core machine


@pytest.fixture(scope="module")
def node_port() -> int:
    return free_port()


@pytest.fixture(scope="module")
def orthanc(tmp_path_factory: pytest.TempPathFactory, node_port: int) -> Iterator[Orthanc]:
    require_private_network()
    pacs = Orthanc(tmp_path_factory.mktemp("orthanc"), node_port)
    pacs.start()
    yield pacs
    pacs.stop()


@pytest.fixture(scope="module")
def second_pacs(tmp_path_factory: pytest.TempPathFactory, node_port: int) -> Iterator[Orthanc]:
    """A destination the tests take down and bring back (not started here)."""
    require_private_network()
    pacs = Orthanc(tmp_path_factory.mktemp("orthanc2"), node_port)
    yield pacs
    pacs.stop()


@pytest.fixture(scope="module")
def template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An 8-slice 256² positive study (its CT series folder)."""
    return generated_study(tmp_path_factory.mktemp("template") / "small") / "ct"


class Studies:
    """Fresh copies of the template with new UIDs: each a distinct study for the PACS."""

    def __init__(self, template: Path, root: Path) -> None:
        self.template, self.root, self.count = template, root, 0

    def new(self, source: Path | None = None) -> tuple[str, str, Path]:
        self.count += 1
        folder = self.root / f"study{self.count:03d}"
        study_uid, series_uid = copy_as_new_study(source or self.template, folder, f"GW{self.count:03d}")
        return study_uid, series_uid, folder


@pytest.fixture(scope="module")
def studies(template: Path, tmp_path_factory: pytest.TempPathFactory) -> Studies:
    return Studies(template, tmp_path_factory.mktemp("copies"))


def settings(port: int, orthanc: Orthanc, second: Orthanc | None = None, **overrides: Any) -> dict[str, Any]:
    destinations: dict[str, Any] = {
        "pacs": {"kind": "dimse", "ae_title": orthanc.aet, "host": "127.0.0.1", "port": orthanc.dicom_port,
                 "timeout_seconds": 10},
        "web": {"kind": "stow", "url": f"{orthanc.url}/dicom-web", "timeout_seconds": 10},
    }
    if second is not None:
        destinations["pacs2"] = {"kind": "dimse", "ae_title": second.aet, "host": "127.0.0.1",
                                 "port": second.dicom_port, "timeout_seconds": 5}
    return {
        "ae_title": "ICHSEG", "port": port, "quiet_seconds": 1, "spool": "spool",
        "peers": [{"ae_title": "ORTHANC", "host": "127.0.0.1", "send_to": ["pacs"]},
                  {"ae_title": "SENDER1", "send_to": ["pacs"]},
                  {"ae_title": "SENDER2", "send_to": ["web"]},
                  *([{"ae_title": "SENDER3", "send_to": ["pacs2"]}] if second is not None else [])],
        "destinations": destinations,
        "runner": {"kind": "warm", "models": str(REPO / "models"), "app": str(REPO / "app.py"),
                   "timeout_seconds": RUN_TIMEOUT},
        "send_retry_seconds": [0.5, 1, 2],
        **overrides,
    }


@pytest.fixture
def node(tmp_path: Path, node_port: int, orthanc: Orthanc, second_pacs: Orthanc) -> Iterator[GatewayNode]:
    gateway = GatewayNode(tmp_path, settings(node_port, orthanc, second_pacs))
    gateway.start()
    yield gateway
    assert gateway.stop() == 0, gateway.log.read_text()[-3000:]


def storescu(folder: Path, port: int, calling: str, called: str = "ICHSEG", files: list[Path] | None = None
             ) -> subprocess.CompletedProcess[str]:
    """dcmtk's storescu: what a modality or a PACS without REST sends with (TCP_NODELAY for speed)."""
    paths = [str(path) for path in (files or sorted(folder.iterdir()))]
    return subprocess.run(["storescu", "-aet", calling, "-aec", called, "127.0.0.1", str(port), *paths],
                          capture_output=True, text=True, timeout=120, env={"TCP_NODELAY": "1", "PATH": "/usr/bin"})


def one_seg(pacs: Orthanc, study_uid: str, series_uid: str, settle: float = 1.0) -> Dataset:
    """Wait for the study's SEG in ``pacs``; assert there is exactly one, in the study, on the source series."""
    wait_for(lambda: pacs.seg_instances(study_uid), RUN_TIMEOUT, f"the SEG of {study_uid}", interval=0.5)
    time.sleep(settle)  # a duplicate would arrive right behind the first
    segs = pacs.seg_instances(study_uid)
    assert len(segs) == 1, f"{len(segs)} SEGs in study {study_uid}"
    seg = dcmread(io.BytesIO(pacs.file(segs[0])))
    assert seg.StudyInstanceUID == study_uid
    assert [item.SeriesInstanceUID for item in seg.ReferencedSeriesSequence] == [series_uid]
    return seg


def wait_done(node: GatewayNode, study_uid: str, count: int = 1) -> list[Any]:
    def done() -> list[Any]:
        found = [s for s in node.studies() if s.study_uid == study_uid and s.state == DONE]
        return found if len(found) >= count else []
    return wait_for(done, RUN_TIMEOUT, f"study {study_uid} done in the node")


def test_study_pushed_by_orthanc_comes_back_as_one_seg(node: GatewayNode, orthanc: Orthanc, studies: Studies) -> None:
    study_uid, series_uid, folder = studies.new()
    orthanc.push(orthanc.upload(folder))
    seg = one_seg(orthanc, study_uid, series_uid)
    assert seg.SegmentSequence[0].SegmentLabel
    qido = orthanc.get(f"/dicom-web/studies/{study_uid}/series?Modality=SEG")
    assert len(qido) == 1 and qido[0]["0020000E"]["Value"][0] == seg.SeriesInstanceUID
    [study] = wait_done(node, study_uid)
    assert study.instances == 8 and study.attempts == 1 and "hemorrhage" in (study.result or "")
    wait_for(lambda: not node.spool_studies(), 30, "the spool to be emptied after delivery")
    status = subprocess.run([sys.executable, "-m", "gateway", "status", "--config", str(node.config)],
                            cwd=REPO, capture_output=True, text=True, timeout=60)
    assert status.returncode == 0 and study_uid in status.stdout and "done" in status.stdout


def test_echo_both_ways_and_refused_associations(node: GatewayNode, orthanc: Orthanc, node_port: int) -> None:
    orthanc.post("/modalities/ichseg/echo", {})  # Orthanc → node (raises on failure)
    echo = subprocess.run([sys.executable, "-m", "gateway", "echo", "pacs", "--config", str(node.config)],
                          cwd=REPO, capture_output=True, text=True, timeout=60)
    assert echo.returncode == 0 and "echo OK" in echo.stdout, echo.stderr
    known = subprocess.run(["echoscu", "-aet", "SENDER1", "-aec", "ICHSEG", "127.0.0.1", str(node_port)],
                           capture_output=True, text=True, timeout=30)
    assert known.returncode == 0, known.stderr
    unknown = subprocess.run(["echoscu", "-aet", "NOBODY", "-aec", "ICHSEG", "127.0.0.1", str(node_port)],
                             capture_output=True, text=True, timeout=30)
    assert unknown.returncode != 0 and "Calling AE Title Not Recognized" in unknown.stderr
    wrong = subprocess.run(["echoscu", "-aet", "SENDER1", "-aec", "NOTUS", "127.0.0.1", str(node_port)],
                           capture_output=True, text=True, timeout=30)
    assert wrong.returncode != 0 and "Called AE Title Not Recognized" in wrong.stderr


def test_non_ct_objects_are_acknowledged_and_not_kept(node: GatewayNode, node_port: int) -> None:
    """A PACS pushes an SR (or a prior SEG) along with a study: success, nothing spooled, no study opened."""
    report = Dataset()
    report.SOPClassUID = "1.2.840.10008.5.1.4.1.1.88.11"  # Basic Text SR
    report.SOPInstanceUID, report.StudyInstanceUID, report.SeriesInstanceUID = generate_uid(), generate_uid(), \
        generate_uid()
    report.Modality, report.PatientID = "SR", "GWSR"
    report.file_meta = FileMetaDataset()
    report.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ae = AE(ae_title="SENDER1")
    ae.add_requested_context(report.SOPClassUID, ExplicitVRLittleEndian)
    assoc = ae.associate("127.0.0.1", node_port, ae_title="ICHSEG")
    assert assoc.is_established
    status = assoc.send_c_store(report)
    assoc.release()
    assert status.Status == 0x0000
    assert node.studies() == [] and node.spool_studies() == []


def test_sigkill_while_receiving(tmp_path: Path, node_port: int, orthanc: Orthanc, studies: Studies) -> None:
    """Killed between instances of a study: what was acknowledged survives, the rest comes again, one SEG."""
    gateway = GatewayNode(tmp_path, settings(node_port, orthanc, quiet_seconds=15))
    gateway.start(wait_warm=False)
    study_uid, series_uid, folder = studies.new()
    files = sorted(folder.iterdir())
    assert storescu(folder, node_port, "SENDER1", files=files[:4]).returncode == 0
    gateway.kill()
    (gateway.spool / "studies").joinpath(str(gateway.studies()[0].id), "input", ".crash.part").write_bytes(b"x")
    gateway.start(wait_warm=False)
    sent = storescu(folder, node_port, "SENDER1")  # the sender's retry: the whole study again
    assert sent.returncode == 0, sent.stderr
    one_seg(orthanc, study_uid, series_uid)
    [study] = wait_done(gateway, study_uid)
    assert study.instances == 8
    assert len(gateway.studies()) == 1  # the resent instances were duplicates, not a second study
    assert "partly written" in gateway.log.read_text()
    assert gateway.stop() == 0


def test_sigkill_while_the_app_runs(tmp_path: Path, node_port: int, orthanc: Orthanc, studies: Studies) -> None:
    """Killed mid-run: the app dies with the node, the run is queued again at restart, one SEG."""
    gateway = GatewayNode(tmp_path, settings(node_port, orthanc))
    gateway.start()
    worker = int(gateway.log.read_text().split("warm worker ready (pid ")[-1].split(")")[0])
    study_uid, series_uid, folder = studies.new()
    assert storescu(folder, node_port, "SENDER1").returncode == 0
    wait_for(lambda: any(s.state == RUNNING for s in gateway.studies()), RUN_TIMEOUT, "the run to start")
    gateway.kill()
    wait_for(lambda: not Path(f"/proc/{worker}").exists(), 10, "the warm worker to die with the node")
    gateway.start()
    one_seg(orthanc, study_uid, series_uid)
    [study] = wait_done(gateway, study_uid)
    assert study.attempts == 2
    assert gateway.stop() == 0


def test_destination_down_then_back_and_sigkill_while_sending(
        tmp_path: Path, node_port: int, orthanc: Orthanc, second_pacs: Orthanc, studies: Studies) -> None:
    """The destination is down: inference goes on, the SEG waits; the node is killed with the send pending and
    restarted; once the destination is back the stored SEG arrives, once. A second study is delivered without a
    restart once the destination is back."""
    gateway = GatewayNode(tmp_path, settings(node_port, orthanc, second_pacs, max_send_attempts=10000))
    gateway.start()
    first_uid, first_series, first = studies.new()
    assert storescu(first, node_port, "SENDER3").returncode == 0
    wait_for(lambda: any(s.state == SENDING and s.study_uid == first_uid for s in gateway.studies()), RUN_TIMEOUT,
             "the SEG to wait for its destination")
    stored = next(gateway.spool.glob("studies/*/output/ich_seg.dcm"))
    stored_uid = dcmread(stored, stop_before_pixels=True).SOPInstanceUID
    wait_for(lambda: "send to pacs2 failed (attempt 2)" in gateway.log.read_text(), 60, "a retried send")
    gateway.kill()
    gateway.start()
    second_uid, second_series, second = studies.new()
    assert storescu(second, node_port, "SENDER3").returncode == 0
    wait_for(lambda: sum(s.state == SENDING for s in gateway.studies()) == 2, RUN_TIMEOUT,
             "both studies waiting for the destination")
    second_pacs.start()
    assert one_seg(second_pacs, first_uid, first_series).SOPInstanceUID == stored_uid  # the stored one, resent
    one_seg(second_pacs, second_uid, second_series)
    wait_done(gateway, first_uid)
    wait_done(gateway, second_uid)
    assert gateway.stop() == 0


def test_twenty_studies_from_two_senders_at_once(
        tmp_path: Path, node_port: int, orthanc: Orthanc, studies: Studies) -> None:
    """Ten studies each from two senders in parallel, back to back; SENDER1's SEGs come by C-STORE, SENDER2's by
    STOW-RS. Twenty SEGs, each on its own series; the spool ends empty."""
    gateway = GatewayNode(tmp_path, settings(node_port, orthanc))
    gateway.start()
    batches = {sender: [studies.new() for _ in range(10)] for sender in ("SENDER1", "SENDER2")}
    failures: list[str] = []

    def send_all(sender: str) -> None:
        for _, _, folder in batches[sender]:
            result = storescu(folder, node_port, sender)
            if result.returncode != 0:
                failures.append(result.stderr)

    threads = [threading.Thread(target=send_all, args=(sender,)) for sender in batches]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not failures
    wait_for(lambda: sum(s.state == DONE for s in gateway.studies()) == 20, 20 * RUN_TIMEOUT / 4, "20 studies done")
    for study_uid, series_uid, _ in [study for batch in batches.values() for study in batch]:
        one_seg(orthanc, study_uid, series_uid, settle=0)
    assert len(gateway.studies()) == 20
    wait_for(lambda: not gateway.spool_studies(), 30, "an empty spool")
    assert gateway.stop() == 0


def test_over_limit_study_is_refused_and_the_next_is_served(
        tmp_path: Path, node_port: int, orthanc: Orthanc, studies: Studies, negative_study: Path) -> None:
    gateway = GatewayNode(tmp_path, settings(node_port, orthanc, limits={"max_instances_per_study": 10}))
    gateway.start()
    big_series = next(path for path in negative_study.rglob("*") if path.is_dir() and any(path.glob("*.dcm")))
    big_uid, _, big = studies.new(big_series)
    refused = storescu(big, node_port, "SENDER1")
    assert refused.returncode == 0xA7  # storescu exits with the high byte of the last failure status: 0xA700
    [study] = [s for s in gateway.studies() if s.study_uid == big_uid]
    assert study.state == "failed" and "max_instances_per_study" in (study.error or "")
    study_uid, series_uid, folder = studies.new()
    assert storescu(folder, node_port, "SENDER1").returncode == 0
    one_seg(orthanc, study_uid, series_uid)
    assert orthanc.seg_instances(big_uid) == []
    assert not gateway.spool.joinpath("studies", str(study.id)).exists()
    assert gateway.stop() == 0


def test_copy_helper_makes_distinct_studies(studies: Studies) -> None:
    """The copies the tests send are distinct studies (else the node would rightly treat them as duplicates)."""
    first, second = studies.new(), studies.new()
    assert first[0] != second[0] and first[1] != second[1]
    uids = {dcmread(p, stop_before_pixels=True).SOPInstanceUID for _, _, f in (first, second) for p in f.iterdir()}
    assert len(uids) == 16
    shutil.rmtree(first[2])
    shutil.rmtree(second[2])
