"""Speed of the DICOM node in front of a real PACS: ``python -m benchmarks.gateway`` → ``results/gateway.json``.

Orthanc (Debian) and the node run in a private network namespace (this script re-executes itself under
``unshare -n``). The study is the demo study (31 slices, 512²), decompressed and copied with new UIDs for each
send, so every send is a new study. For each runner (``warm``, ``subprocess``):

- ``receive``: dcmtk ``storescu`` → node, instances per second (durable: each instance fsynced and recorded before
  its success is returned);
- ``latency``: from the last instance received (the node's record) to the SEG stored in Orthanc, quiet time
  excluded; and the application's own part (the run);
- ``throughput``: studies sent back to back, first instance sent to last SEG stored in Orthanc → studies per hour
  (quiet time included: it is part of what a site sees).

Timed here, not in the tests; run on a quiet machine.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.common import ROOT, finish, machine_info, write_json

sys.path.insert(0, str(ROOT / "tests"))
from pacs import GatewayNode, Orthanc, free_port, network_is_private  # noqa: E402
from small_study import copy_as_new_study  # noqa: E402

from gateway.store import Store  # noqa: E402

DEMO = ROOT / "demo" / "study"
QUIET_SECONDS = 1.0
RESULT = ROOT / "benchmarks" / "results" / "gateway.json"
POLL = 0.05


def uncompressed_copy(source: Path, target: Path) -> tuple[str, int]:
    """The series in ``source`` as a new, decompressed study in ``target``; returns its UID and instance count."""
    study_uid, _ = copy_as_new_study(source, target, "GWBENCH", decompress=True)
    return study_uid, len(list(target.iterdir()))


def storescu(folder: Path, port: int) -> float:
    """Send every file of ``folder``; returns the wall seconds."""
    started = time.perf_counter()
    subprocess.run(["storescu", "-aet", "SENDER", "-aec", "ICHSEG", "127.0.0.1", str(port),
                    *map(str, sorted(folder.iterdir()))], check=True, env={"PATH": "/usr/bin", "TCP_NODELAY": "1"},
                   timeout=600)
    return time.perf_counter() - started


def wait_for_seg(pacs: Orthanc, study_uid: str, timeout: float = 900) -> float:
    """The wall-clock time (epoch) at which the study's SEG was first seen in the PACS."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pacs.seg_instances(study_uid):
            return time.time()
        time.sleep(POLL)
    raise TimeoutError(f"no SEG for {study_uid} after {timeout} s")


def node_record(node: GatewayNode, study_uid: str) -> dict:
    store = Store(node.spool / "gateway.sqlite")
    try:
        study = next(s for s in store.studies(1000) if s.study_uid == study_uid)
    finally:
        store.close()
    return {"last_arrival": study.last_arrival, "run_s": study.run_seconds}


def bench_runner(kind: str, pacs: Orthanc, port: int, work: Path, latency_runs: int, batch: int) -> dict:
    settings = {
        "ae_title": "ICHSEG", "port": port, "quiet_seconds": QUIET_SECONDS, "spool": "spool",
        "peers": [{"ae_title": "SENDER", "send_to": ["pacs"]}],
        "destinations": {"pacs": {"kind": "dimse", "ae_title": pacs.aet, "host": "127.0.0.1", "port": pacs.dicom_port}},
        "runner": {"kind": kind, "models": str(ROOT / "models"), "app": str(ROOT / "app.py")},
    }
    folder = work / kind
    folder.mkdir()
    node = GatewayNode(folder, settings)
    node.start()
    receive, latency, app = [], [], []
    try:
        for index in range(latency_runs):
            study_uid, count = uncompressed_copy(DEMO, folder / f"latency{index}")
            receive.append(count / storescu(folder / f"latency{index}", port))
            seen = wait_for_seg(pacs, study_uid)
            record = node_record(node, study_uid)
            latency.append(seen - record["last_arrival"] - QUIET_SECONDS)
            app.append(record["run_s"])
        copies = [uncompressed_copy(DEMO, folder / f"batch{index}")[0] for index in range(batch)]
        started = time.time()
        for index in range(batch):
            storescu(folder / f"batch{index}", port)
        finished = max(wait_for_seg(pacs, study_uid) for study_uid in copies)
    finally:
        node.stop()
    elapsed = finished - started
    return {
        "receive_instances_per_s": round(statistics.median(receive), 1),
        "latency_s": {"median": round(statistics.median(latency), 2), "runs": [round(v, 2) for v in latency]},
        "app_run_s": {"median": round(statistics.median(app), 2), "runs": [round(v, 2) for v in app]},
        "throughput": {"studies": batch, "seconds": round(elapsed, 1),
                       "studies_per_hour": round(batch / elapsed * 3600, 1)},
    }


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if not network_is_private():  # Orthanc listens on every interface: give it a namespace of its own
        os.execvp("unshare", ["unshare", "-n", "sh", "-c", 'ip link set lo up && exec "$@"', "sh", sys.executable,
                              "-m", "benchmarks.gateway", *argv])
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runners", nargs="+", default=["warm", "subprocess"])
    parser.add_argument("--latency-runs", type=int, default=3)
    parser.add_argument("--batch", type=int, default=4, help="studies sent back to back for the throughput")
    parser.add_argument("--out", type=Path, default=RESULT)
    args = parser.parse_args(argv)
    result: dict = {"machine": machine_info(), "study": {"source": "demo/study (decompressed copies)",
                                                          "slices": len(list(DEMO.iterdir())), "matrix": 512},
                    "quiet_seconds": QUIET_SECONDS, "sender": "dcmtk storescu, TCP_NODELAY=1", "runners": {}}
    with tempfile.TemporaryDirectory() as temporary:
        work = Path(temporary)
        port = free_port()
        pacs = Orthanc(work, port)
        pacs.start()
        try:
            for kind in args.runners:
                result["runners"][kind] = bench_runner(kind, pacs, port, work, args.latency_runs, args.batch)
                print(kind, result["runners"][kind], flush=True)
        finally:
            pacs.stop()
    write_json(finish(result), args.out)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
