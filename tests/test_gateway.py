"""The gateway's parts on their own, for real: configuration files, the SQLite store, the spool, the runners with
the real application, the preview Secondary Capture and the ``status`` command.

No network and no PACS here (``tests/test_gateway_orthanc.py`` runs the whole node against Orthanc). The store is
driven with explicit ``now=`` values, so quiet times and back-offs are checked without waiting. The application
runs on one 8-slice 256² study; module-scoped fixtures keep its runs to a handful.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import re
import resource
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml
from pacs import REPO, wait_for
from PIL import Image
from pydicom import dcmread
from small_study import generated_study

from gateway.config import RUNNER_KINDS, ConfigError, RunnerConfig, load_config
from gateway.preview_sc import DESCRIPTION, preview_secondary_capture
from gateway.runners import (
    STACK_BYTES,
    TIMED_OUT,
    CommandRunner,
    Runner,
    RunOutcome,
    WarmRunner,
    make_runner,
    map_command,
)
from gateway.spool import Spool
from gateway.store import DONE, DUPLICATE, FAILED, NEW, PENDING, READY, RECEIVED, REFUSED, RUNNING, SENDING, SENT, Store

HOST = "127.0.0.1"
SECONDARY_CAPTURE = "1.2.840.10008.5.1.4.1.1.7"

# --- configuration ---------------------------------------------------------------------------------------------


def valid_settings() -> dict[str, Any]:
    """The smallest configuration the node accepts (runner defaults: the repository's app.py and models/)."""
    return {"spool": "spool",
            "peers": [{"ae_title": "PACS", "host": HOST, "send_to": ["pacs"]}],
            "destinations": {"pacs": {"kind": "dimse", "ae_title": "PACS", "host": HOST, "port": 104}}}


def write_config(folder: Path, settings: Any, name: str = "node.yaml") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    path.write_text(yaml.safe_dump(settings))
    return path


def test_example_config_loads_and_runs_the_repository_app() -> None:
    """The shipped example is what an administrator copies: it must load as is and point at this clone."""
    config = load_config(REPO / "gateway" / "example-config.yaml")
    assert config.runner.kind in RUNNER_KINDS
    assert config.runner.app.resolve() == REPO / "app.py"
    assert config.runner.models.resolve() == REPO / "models"
    assert config.spool.is_absolute()
    assert config.peers and all(name in config.destinations for peer in config.peers for name in peer.send_to)


def test_valid_settings_load(tmp_path: Path) -> None:
    """The base of the error cases below is itself valid, so each case fails only for its own change."""
    config = load_config(write_config(tmp_path, valid_settings()))
    assert config.peer("PACS", HOST) is not None and config.peer("PACS", "10.0.0.9") is None
    assert config.destinations["pacs"].port == 104


def test_relative_paths_are_taken_from_the_config_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Not from the working directory: the node may be started from anywhere (a service manager, cron)."""
    site = tmp_path / "site"
    (site / "weights" / "detector").mkdir(parents=True)
    (site / "app.py").write_text("")
    write_config(site, {**valid_settings(), "spool": "data/spool",
                        "runner": {"kind": "subprocess", "models": "weights", "app": "app.py"}})
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    config = load_config(Path("../site/node.yaml"))
    assert config.spool.resolve() == site / "data" / "spool"
    assert config.database.resolve() == site / "data" / "spool" / "gateway.sqlite"
    assert config.runner.models.resolve() == site / "weights"
    assert config.runner.app.resolve() == site / "app.py"
    monkeypatch.chdir(tmp_path)  # the paths were fixed at load time, not left relative to the working directory
    assert config.spool.resolve() == site / "data" / "spool"


ERROR_CASES: list[tuple[str, dict[str, Any], tuple[str, ...]]] = [
    ("unknown top-level key", {"prot": 11112}, ("'prot'", "the file")),
    ("unknown runner key", {"runner": {"modles": "models"}}, ("'modles'", "runner")),
    ("unknown peer key", {"peers": [{"ae_title": "PACS", "sendto": ["pacs"]}]}, ("'sendto'", "peers[0]")),
    ("unknown destination key", {"destinations": {"pacs": {"kind": "dimse", "ae_title": "PACS", "host": HOST,
                                                           "port": 104, "aet": "X"}}}, ("'aet'", "destinations.pacs")),
    ("port above 65535", {"port": 70000}, ("'port'", "between 1 and 65535")),
    ("quiet time not a number", {"quiet_seconds": float("nan")}, ("'quiet_seconds'", "a number")),
    ("port infinite", {"port": float("inf")}, ("'port'", "an integer")),
    ("port zero", {"port": 0}, ("'port'", "between 1 and 65535")),
    ("port not an integer", {"port": 104.5}, ("'port'", "an integer")),
    ("port as a string", {"port": "11112"}, ("'port'", "an integer")),
    ("destination port", {"destinations": {"pacs": {"kind": "dimse", "ae_title": "PACS", "host": HOST,
                                                    "port": 99999}}}, ("destinations.pacs.port",)),
    ("send_to an unknown destination", {"peers": [{"ae_title": "PACS", "send_to": ["archive"]}]},
     ("peers[0].send_to", "'archive'")),
    ("a peer sending nowhere", {"peers": [{"ae_title": "PACS"}]}, ("peers[0].send_to", "empty")),
    ("map runner without image", {"runner": {"kind": "map"}}, ("runner.image", "map")),
    ("stow url not http", {"destinations": {"pacs": {"kind": "stow", "url": "ftp://pacs/dicom-web"}}},
     ("destinations.pacs.url",)),
    ("empty peers", {"peers": []}, ("'peers'",)),
    ("our AE title over 16 characters", {"ae_title": "ICHSEG-GATEWAY-01"}, ("'ae_title'", "AE title")),
    ("a peer's AE title over 16 characters", {"peers": [{"ae_title": "A" * 17, "send_to": ["pacs"]}]},
     ("peers[0].ae_title", "AE title")),
    ("missing models folder", {"runner": {"models": "no-such-models"}}, ("runner.models", "no-such-models")),
    ("missing app", {"runner": {"app": "no-such-app.py"}}, ("runner.app", "no-such-app.py")),
    ("boolean as a string", {"send_preview": "yes"}, ("'send_preview'", "true or false")),
    ("unknown runner kind", {"runner": {"kind": "docker"}}, ("'runner.kind'", "subprocess")),
]


@pytest.mark.parametrize(("change", "fragments"), [case[1:] for case in ERROR_CASES],
                         ids=[case[0] for case in ERROR_CASES])
def test_config_errors_name_the_file_and_the_key(tmp_path: Path, change: dict[str, Any],
                                                 fragments: tuple[str, ...]) -> None:
    path = write_config(tmp_path, {**valid_settings(), **change})
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    message = str(caught.value)
    assert str(path) in message
    for fragment in fragments:
        assert fragment in message, message


def test_yaml_syntax_error_names_the_file_and_the_line(tmp_path: Path) -> None:
    path = tmp_path / "node.yaml"
    path.write_text("ae_title: ICHSEG\nport: [11112\nspool: spool\n")
    with pytest.raises(ConfigError, match="not valid YAML") as caught:
        load_config(path)
    assert str(path) in str(caught.value) and "line" in str(caught.value)


def test_missing_config_file_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "absent.yaml"
    with pytest.raises(ConfigError, match="cannot read") as caught:
        load_config(path)
    assert str(path) in str(caught.value)


def test_config_not_utf8_is_a_configuration_error(tmp_path: Path) -> None:
    """A comment typed in a Latin-1 editor ("Hôpital") must stop the node with a message, not a traceback."""
    path = tmp_path / "node.yaml"
    path.write_bytes("# H\u00f4pital\n".encode("latin-1") + yaml.safe_dump(valid_settings()).encode())
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    assert str(path) in str(caught.value)


def test_command_line_with_a_bad_config_exits_2(tmp_path: Path) -> None:
    """What the administrator sees at start-up: status 2 and one line naming the file and the key."""
    path = write_config(tmp_path, {**valid_settings(), "prot": 11112})
    result = subprocess.run([sys.executable, "-m", "gateway", "--config", str(path)], cwd=REPO,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 2, result.stderr
    assert "configuration error" in result.stderr and str(path) in result.stderr and "'prot'" in result.stderr
    assert "Traceback" not in result.stderr


# --- store -----------------------------------------------------------------------------------------------------


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    opened = Store(tmp_path / "gateway.sqlite")
    yield opened
    opened.close()


def receive(store: Store, study_uid: str, sop_uids: list[str], now: float, calling_ae: str = "PACS",
            refuse_seconds: float = 30) -> int:
    """Instances arriving one second apart from ``now`` as the listener stores them; returns the study id."""
    ids = set()
    for offset, sop_uid in enumerate(sop_uids):
        study, kind = store.open_study(study_uid, calling_ae, HOST, sop_uid, refuse_seconds, now=now + offset)
        assert kind == NEW
        store.add_instance(study.id, sop_uid, 100, now=now + offset)
        ids.add(study.id)
    assert len(ids) == 1
    return ids.pop()


def run_to_sending(store: Store, study_id: int, now: float, sends: list[tuple[str, str]]) -> None:
    """Promote, claim and finish the study's run (it must be the only ready one)."""
    assert [study.id for study in store.promote_quiet_studies(30, now=now)] == [study_id]
    claimed = store.claim_ready()
    assert claimed is not None and claimed.id == study_id
    store.finish_run(study_id, 5.0, "hemorrhage detected", sends)


def test_duplicates_in_an_unfinished_study_are_not_counted(store: Store) -> None:
    """A PACS resends after a dropped association: same study, nothing counted twice."""
    study_id = receive(store, "1.2.3", ["1.1", "1.2"], now=1000)
    study, kind = store.open_study("1.2.3", "PACS", HOST, "1.1", 30, now=1005)
    assert (kind, study.id) == (DUPLICATE, study_id)
    store.promote_quiet_studies(30, now=1040)
    study, kind = store.open_study("1.2.3", "PACS", HOST, "1.2", 30, now=1041)  # also while ready
    assert (kind, study.id) == (DUPLICATE, study_id)
    assert store.study(study_id).instances == 2 and store.study(study_id).bytes == 200


def test_one_instance_on_two_associations_at_once_is_counted_once(store: Store) -> None:
    first, _ = store.open_study("1.2.3", "PACS", HOST, "1.1", 30, now=1000)
    second, kind = store.open_study("1.2.3", "PACS", HOST, "1.1", 30, now=1000)  # before the first is recorded
    assert kind == NEW and second.id == first.id
    store.add_instance(first.id, "1.1", 100, now=1000)
    store.add_instance(second.id, "1.1", 100, now=1000)
    assert store.study(first.id).instances == 1 and store.study(first.id).bytes == 100


def test_the_same_study_from_another_sender_is_its_own_study(store: Store) -> None:
    ours = receive(store, "1.2.3", ["1.1"], now=1000)
    theirs = receive(store, "1.2.3", ["1.1"], now=1000, calling_ae="OTHER")
    assert ours != theirs


def test_resend_after_the_study_is_done_opens_a_new_study(store: Store) -> None:
    """A study sent again on purpose (a re-read) gets a new run and a new SEG, not a silent 'duplicate'."""
    study_id = receive(store, "1.2.3", ["1.1", "1.2"], now=1000)
    run_to_sending(store, study_id, now=1040, sends=[])
    assert store.study(study_id).state == DONE
    again, kind = store.open_study("1.2.3", "PACS", HOST, "1.1", 30, now=2000)
    assert kind == NEW and again.id != study_id and again.state == RECEIVED


def test_instance_for_a_ready_study_puts_it_back_to_receiving(store: Store) -> None:
    """A late instance joins the study not yet started, whose quiet time starts again from that instance, even
    before the instance is recorded (its file is being written then)."""
    study_id = receive(store, "1.2.3", ["1.1"], now=100)
    assert [study.id for study in store.promote_quiet_studies(30, now=131)] == [study_id]
    study, kind = store.open_study("1.2.3", "PACS", HOST, "1.2", 30, now=200)
    assert kind == NEW and study.id == study_id
    assert store.study(study_id).state == RECEIVED
    assert store.promote_quiet_studies(30, now=200) == []  # the arriving instance is not yet on disk
    assert store.claim_ready() is None
    store.add_instance(study_id, "1.2", 100, now=201)
    assert store.promote_quiet_studies(30, now=230) == []
    assert [study.id for study in store.promote_quiet_studies(30, now=231)] == [study_id]
    assert store.study(study_id).instances == 2


def test_late_instance_restarts_the_quiet_time_of_a_study_still_receiving(store: Store) -> None:
    """Quiet for longer than the quiet time but not yet promoted (the run loop was busy): an instance arriving now
    keeps the study from being promoted while its file is written."""
    study_id = receive(store, "1.2.3", ["1.1"], now=100)
    study, kind = store.open_study("1.2.3", "PACS", HOST, "1.2", 30, now=200)
    assert kind == NEW and study.id == study_id
    assert store.promote_quiet_studies(30, now=200) == []
    store.add_instance(study_id, "1.2", 100, now=200.5)
    assert [study.id for study in store.promote_quiet_studies(30, now=230.5)] == [study_id]


def test_quiet_time_uses_recorded_arrivals_across_a_restart(tmp_path: Path) -> None:
    """After a crash the quiet time resumes from the last recorded arrival, not from the restart."""
    database = tmp_path / "gateway.sqlite"
    store = Store(database)
    early = receive(store, "1.2.3", ["1.1", "1.2"], now=1000)  # last arrival 1001
    late = receive(store, "4.5.6", ["4.1"], now=1020)
    assert store.promote_quiet_studies(30, now=1030) == []
    store.close()

    store = Store(database)
    try:
        assert store.study(early).state == RECEIVED and store.study(early).last_arrival == 1001
        assert [study.id for study in store.promote_quiet_studies(30, now=1031)] == [early]
        assert store.promote_quiet_studies(30, now=1049.9) == []
        assert [study.id for study in store.promote_quiet_studies(30, now=1050)] == [late]
        assert store.study(early).state == READY and store.study(late).state == READY
    finally:
        store.close()


def test_interrupted_runs_are_requeued_then_failed_once_out_of_attempts(tmp_path: Path) -> None:
    database = tmp_path / "gateway.sqlite"
    store = Store(database)
    study_id = receive(store, "1.2.3", ["1.1"], now=1000)
    store.promote_quiet_studies(30, now=1100)
    for attempt in (1, 2, 3):
        claimed = store.claim_ready()
        assert claimed is not None and claimed.attempts == attempt and claimed.state == RUNNING
        store.close()  # the node dies mid-run
        store = Store(database)
        requeued, failed = store.requeue_interrupted(max_attempts=3)
        if attempt < 3:
            assert [study.id for study in requeued] == [study_id] and failed == []
            assert store.study(study_id).state == READY
    assert requeued == [] and [study.id for study in failed] == [study_id]
    study = store.study(study_id)
    assert study.state == FAILED and "interrupted 3 times" in (study.error or "") and study.finished is not None
    assert store.claim_ready() is None
    store.close()


def test_refused_study_refuses_its_tail_then_a_later_resend_opens_a_new_study(store: Store) -> None:
    """Over a limit: the rest of the same push is refused too (no study of its own from its tail), and the study
    sent again later is served."""
    study_id = receive(store, "1.2.3", ["1.1"], now=time.time())
    store.refuse_study(study_id, "refused while receiving: more than 1 instances")
    refused_at = time.time()  # refuse_study records the wall-clock time
    for offset, sop_uid in ((3, "1.2"), (6, "1.3"), (9, "1.1")):  # each within 5 s of the previous one
        study, kind = store.open_study("1.2.3", "PACS", HOST, sop_uid, refuse_seconds=5, now=refused_at + offset)
        assert (kind, study.id) == (REFUSED, study_id)
    assert store.study(study_id).instances == 1 and store.study(study_id).state == FAILED
    study, kind = store.open_study("1.2.3", "PACS", HOST, "1.1", refuse_seconds=5, now=refused_at + 15)
    assert kind == NEW and study.id != study_id


def test_retry_send_backs_off_then_fails_the_study(store: Store) -> None:
    study_id = receive(store, "1.2.3", ["1.1"], now=1000)
    run_to_sending(store, study_id, now=1100, sends=[("pacs", "/spool/seg.dcm")])
    [send] = store.sends(study_id)
    assert send.state == PENDING and store.due_sends() == [send]
    delays, expected = (10.0, 100.0), (10.0, 100.0, 100.0)  # the last delay repeats
    for attempt, delay in enumerate(expected, start=1):
        before = time.time()
        assert store.retry_send(send.id, "association rejected", delays, max_attempts=4) is None
        after = time.time()
        [retried] = store.sends(study_id)
        assert retried.attempts == attempt and retried.state == PENDING and retried.error == "association rejected"
        assert before + delay <= retried.next_try <= after + delay
        assert store.due_sends(now=after) == [] and store.due_sends(now=after + delay) == [retried]
        assert store.study(study_id).state == SENDING
    failed = store.retry_send(send.id, "association rejected", delays, max_attempts=4)
    assert failed is not None and failed.id == study_id and failed.state == FAILED
    assert "send to pacs failed 4 times" in (failed.error or "")
    [given_up] = store.sends(study_id)
    assert given_up.state == FAILED and given_up.attempts == 4 and store.due_sends(now=time.time() + 1e6) == []


def test_study_is_done_only_after_its_last_send(store: Store) -> None:
    study_id = receive(store, "1.2.3", ["1.1"], now=1000)
    run_to_sending(store, study_id, now=1100, sends=[("pacs", "/s/seg.dcm"), ("pacs", "/s/sc.dcm"),
                                                     ("web", "/s/seg.dcm")])
    first, second, third = store.sends(study_id)
    assert store.mark_sent(second.id) is None and store.study(study_id).state == SENDING
    assert store.retry_send(first.id, "timeout", (1.0,), max_attempts=5) is None
    assert store.mark_sent(third.id) is None and store.study(study_id).state == SENDING
    done = store.mark_sent(first.id)  # after a failed attempt
    assert done is not None and done.id == study_id and done.state == DONE and done.finished is not None
    assert [send.state for send in store.sends(study_id)] == [SENT, SENT, SENT]
    assert store.count(DONE) == 1 and store.count(SENDING) == 0


def test_run_without_destinations_is_done_at_once(store: Store) -> None:
    study_id = receive(store, "1.2.3", ["1.1"], now=1000)
    run_to_sending(store, study_id, now=1100, sends=[])
    assert store.study(study_id).state == DONE and store.sends(study_id) == []


# --- spool -----------------------------------------------------------------------------------------------------


def test_write_instance_is_complete_and_leaves_no_partial(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool")
    data = os.urandom(3 * 1024**2 + 17)
    path = spool.write_instance(7, "1.2.840.99.1", data)
    assert path == spool.input_folder(7) / "1.2.840.99.1.dcm"
    assert path.read_bytes() == data
    assert path.stat().st_mode & 0o777 == 0o644
    assert sorted(p.name for p in spool.input_folder(7).iterdir()) == ["1.2.840.99.1.dcm"]
    assert spool.write_instance(7, "1.2.840.99.1", b"resent").read_bytes() == b"resent"  # a resend replaces it
    assert len(list(spool.input_folder(7).iterdir())) == 1


def test_remove_partials_removes_only_leftovers(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool")
    kept = [spool.write_instance(study_id, "1.2.3", b"DICM") for study_id in (1, 2)]
    leftovers = [spool.input_folder(1) / ".tmpabc.part", spool.input_folder(2) / ".tmpdef.part"]
    for leftover in leftovers:
        leftover.write_bytes(b"half an instance")
    assert spool.remove_partials() == 2
    assert not any(leftover.exists() for leftover in leftovers)
    assert all(path.read_bytes() == b"DICM" for path in kept)
    assert spool.remove_partials() == 0


@pytest.mark.parametrize("sop_uid", ["../x", "../../etc/passwd", "1.2/3", "/tmp/x", "", "1.2.3\x00"])
def test_unsafe_sop_instance_uid_is_refused(tmp_path: Path, sop_uid: str) -> None:
    """The file name comes from the sender: it must never reach outside the study's input folder."""
    spool = Spool(tmp_path / "spool")
    with pytest.raises(ValueError, match="not a valid UID"):
        spool.write_instance(1, sop_uid, b"DICM")
    assert [p for p in tmp_path.rglob("*") if p.is_file()] == []


# --- runners, with the real application ------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Run:
    outcome: RunOutcome
    output: Path
    log: Path


def runner_config(kind: str, recycle_after: int = 50, timeout_seconds: float = 300) -> RunnerConfig:
    return RunnerConfig(kind=kind, models=REPO / "models", app=REPO / "app.py", timeout_seconds=timeout_seconds,
                        recycle_after=recycle_after)


def run_study(runner: Runner, input_folder: Path, root: Path, name: str) -> Run:
    """One run as the node makes it: a fresh output folder, the log beside it."""
    output = root / name / "output"
    output.mkdir(parents=True)
    log = root / name / "run.log"
    return Run(runner.run(input_folder, output, log), output, log)


def log_tail(path: Path) -> str:
    return path.read_text(errors="replace")[-3000:] if path.exists() else f"(no {path.name})"


def assert_succeeded(run: Run) -> None:
    assert run.outcome.status == 0, (run.outcome, log_tail(run.log))
    assert run.outcome.message == ""
    assert {"ich_seg.dcm", "ich_report.json", "ich_preview.png"} <= {p.name for p in run.output.iterdir()}
    assert dcmread(run.output / "ich_seg.dcm", stop_before_pixels=True).Modality == "SEG"


def assert_refused(run: Run) -> None:
    assert run.outcome.status == 3, (run.outcome, log_tail(run.log))
    assert run.outcome.retry is False
    assert "input refused" in run.outcome.message
    assert not (run.output / "ich_seg.dcm").exists()


def alive(pid: int) -> bool:
    """Running (a zombie waiting for its parent to reap it counts as dead)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def processes_mentioning(text: str) -> list[int]:
    """Processes of ours whose command line contains ``text``."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if text in (entry / "cmdline").read_bytes().decode(errors="replace") and alive(int(entry.name)):
                    found.append(int(entry.name))
            except OSError:
                continue
    return found


@contextmanager
def small_stack() -> Iterator[None]:
    """An 8 MB stack limit (a shell's default) while children start: the runner must raise it itself."""
    soft, hard = resource.getrlimit(resource.RLIMIT_STACK)
    small = 8 * 1024**2 if hard == resource.RLIM_INFINITY else min(8 * 1024**2, hard)
    resource.setrlimit(resource.RLIMIT_STACK, (small, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_STACK, (soft, hard))


def stack_limit(pid: int) -> int:
    line = next(line for line in Path(f"/proc/{pid}/limits").read_text().splitlines()
                if line.startswith("Max stack size"))
    return int(line.split()[3])


def expected_stack() -> int:
    hard = resource.getrlimit(resource.RLIMIT_STACK)[1]
    return STACK_BYTES if hard == resource.RLIM_INFINITY else min(STACK_BYTES, hard)


@pytest.fixture(scope="module")
def small_study(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An 8-slice 256² positive study (its CT series folder); the runners only read it."""
    return generated_study(tmp_path_factory.mktemp("gateway-study") / "small") / "ct"


@pytest.fixture(scope="module")
def empty_input(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A study folder with nothing the app can read: refused (exit 3), never retried."""
    return tmp_path_factory.mktemp("empty-input")


@pytest.fixture(scope="module")
def subprocess_run(small_study: Path, tmp_path_factory: pytest.TempPathFactory) -> Run:
    """``python app.py`` once on the small study (its outputs also feed the preview test)."""
    root = tmp_path_factory.mktemp("subprocess-run")
    runner = make_runner(runner_config("subprocess"), root)
    assert isinstance(runner, CommandRunner)
    return run_study(runner, small_study, root, "study")


@pytest.fixture(scope="module")
def warm(tmp_path_factory: pytest.TempPathFactory) -> Iterator[WarmRunner]:
    """One warm worker shared by the warm tests, started under a small stack limit."""
    root = tmp_path_factory.mktemp("warm")
    runner = make_runner(runner_config("warm"), root)
    assert isinstance(runner, WarmRunner)
    with small_stack():
        runner.start()
    yield runner
    runner.close()


def test_map_command_is_monai_deploy_run(tmp_path: Path) -> None:
    """The packaged MAP (needs Docker, not here): the exact command, models inside the image."""
    config = dataclasses.replace(runner_config("map"), image="ich-seg-map:0.1.0")
    expected = ["monai-deploy", "run", "ich-seg-map:0.1.0", "-i", "/spool/in", "-o", "/spool/out"]
    assert map_command(config, Path("/spool/in"), Path("/spool/out")) == expected
    runner = make_runner(config, tmp_path)
    assert isinstance(runner, CommandRunner) and runner.command(Path("/spool/in"), Path("/spool/out")) == expected


def test_subprocess_runner_runs_the_app(subprocess_run: Run) -> None:
    assert_succeeded(subprocess_run)
    assert "ich_seg.dcm" in subprocess_run.log.read_text()  # the app's log went to the study's log


def test_subprocess_runner_reports_a_refused_input(empty_input: Path, tmp_path: Path) -> None:
    runner = make_runner(runner_config("subprocess"), tmp_path)
    assert_refused(run_study(runner, empty_input, tmp_path, "empty"))


def test_subprocess_runner_stops_a_run_at_the_timeout(small_study: Path, tmp_path: Path) -> None:
    """A hung app is a failed, retryable run, and nothing of it keeps running."""
    runner = make_runner(runner_config("subprocess", timeout_seconds=1), tmp_path)
    run = run_study(runner, small_study, tmp_path, "slow")
    assert run.outcome.status == TIMED_OUT and run.outcome.retry and "runner timeout" in run.outcome.message
    assert processes_mentioning(str(run.output)) == []


def test_warm_runner_runs_two_studies_in_one_worker(warm: WarmRunner, small_study: Path, tmp_path: Path) -> None:
    assert warm.process is not None
    pid = warm.process.pid
    assert stack_limit(pid) == expected_stack()  # raised by the runner from the 8 MB it was started with
    first = run_study(warm, small_study, tmp_path, "first")
    second = run_study(warm, small_study, tmp_path, "second")
    assert_succeeded(first)
    assert_succeeded(second)
    assert warm.process is not None and warm.process.pid == pid
    assert "ich_seg.dcm" in first.log.read_text() and "ich_seg.dcm" in second.log.read_text()


def test_warm_runner_reports_a_refused_input(warm: WarmRunner, empty_input: Path, tmp_path: Path) -> None:
    """The app's own reason comes back, and a refusal does not cost the worker."""
    if warm.process is None:
        warm.start()
    assert warm.process is not None
    pid = warm.process.pid
    assert_refused(run_study(warm, empty_input, tmp_path, "empty"))
    assert warm.process is not None and warm.process.pid == pid and alive(pid)


def test_warm_worker_killed_mid_study_is_a_failed_retryable_run(warm: WarmRunner, small_study: Path,
                                                                tmp_path: Path) -> None:
    """Killed mid-run (out of memory, a crash in native code): reported as a death within seconds, not as the
    timeout, and retryable."""
    if warm.process is None:
        warm.start()
    assert warm.process is not None
    pid = warm.process.pid
    log = tmp_path / "study" / "run.log"
    runs: list[Run] = []
    thread = threading.Thread(target=lambda: runs.append(run_study(warm, small_study, tmp_path, "study")))
    thread.start()
    wait_for(lambda: log.exists() and "ICH segmentation" in log.read_text(errors="replace"), 120,
             "the app to start on the study")
    os.kill(pid, signal.SIGKILL)
    thread.join(timeout=60)
    [run] = runs
    assert run.outcome.status == -signal.SIGKILL, run.outcome
    assert run.outcome.retry and "died" in run.outcome.message
    assert warm.process is None and not (run.output / "ich_seg.dcm").exists()


def test_killed_warm_worker_is_restarted_for_the_next_study(warm: WarmRunner, small_study: Path,
                                                            tmp_path: Path) -> None:
    if warm.process is None:
        warm.start()
    assert warm.process is not None
    pid = warm.process.pid
    os.kill(pid, signal.SIGKILL)  # e.g. the kernel's OOM killer between two studies
    os.waitid(os.P_PID, pid, os.WEXITED | os.WNOWAIT)  # dead, not reaped: the runner must find out by itself
    run = run_study(warm, small_study, tmp_path, "after-kill")
    assert_succeeded(run)
    assert warm.process is not None and warm.process.pid != pid and alive(warm.process.pid)


def test_warm_worker_is_recycled_after_recycle_after_studies(small_study: Path, empty_input: Path, tmp_path: Path,
                                                             caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="gateway.runner")
    runner = WarmRunner(runner_config("warm", recycle_after=1), tmp_path / "warm-worker.log")
    try:
        assert_succeeded(run_study(runner, small_study, tmp_path, "first"))
        assert runner.process is None  # stopped after its one study
        assert_refused(run_study(runner, empty_input, tmp_path, "second"))
    finally:
        runner.close()
    pids = [int(pid) for pid in re.findall(r"warm worker ready \(pid (\d+)\)", caplog.text)]
    assert len(pids) == 2 and pids[0] != pids[1], caplog.text
    assert not alive(pids[0]) and not alive(pids[1])
    assert caplog.text.count("warm worker recycled after 1 studies") == 2


# --- preview Secondary Capture ---------------------------------------------------------------------------------


def test_preview_secondary_capture_of_an_app_output(subprocess_run: Run, tmp_path: Path) -> None:
    assert_succeeded(subprocess_run)
    png, seg_path = subprocess_run.output / "ich_preview.png", subprocess_run.output / "ich_seg.dcm"
    target = tmp_path / "ich_preview_sc.dcm"
    assert preview_secondary_capture(png, seg_path, target) == target
    seg, sc = dcmread(seg_path, stop_before_pixels=True), dcmread(target)
    assert sc.SOPClassUID == SECONDARY_CAPTURE and sc.file_meta.MediaStorageSOPClassUID == SECONDARY_CAPTURE
    assert sc.StudyInstanceUID == seg.StudyInstanceUID and sc.PatientID == seg.PatientID
    assert sc.SeriesInstanceUID not in (seg.SeriesInstanceUID, seg.ReferencedSeriesSequence[0].SeriesInstanceUID)
    assert "AI-generated" in sc.SeriesDescription and sc.SeriesDescription == DESCRIPTION
    assert sc.BurnedInAnnotation == "YES"
    assert np.array_equal(sc.pixel_array, np.asarray(Image.open(png).convert("RGB")))

    validator = subprocess.run(["dciodvfy", str(target)], capture_output=True, text=True, timeout=120)
    errors = [line for line in (validator.stdout + validator.stderr).splitlines() if line.startswith("Error")]
    assert not errors, errors

    uid = sc.SOPInstanceUID  # written once: a resend is the same object
    assert preview_secondary_capture(png, seg_path, target) == target
    assert dcmread(target, stop_before_pixels=True).SOPInstanceUID == uid


# --- status command --------------------------------------------------------------------------------------------


def test_status_json_lists_a_study_with_its_sends(tmp_path: Path) -> None:
    config = write_config(tmp_path, valid_settings())
    store = Store(tmp_path / "spool" / "gateway.sqlite")
    study_id = receive(store, "1.2.826.0.1.3680043.99.1", ["1.1", "1.2"], now=1000)
    run_to_sending(store, study_id, now=1100, sends=[("pacs", "/spool/studies/1/output/ich_seg.dcm")])
    store.retry_send(store.sends(study_id)[0].id, "association rejected", (5.0,), max_attempts=10)
    store.close()
    result = subprocess.run([sys.executable, "-m", "gateway", "status", "--config", str(config), "--json"],
                            cwd=REPO, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    [study] = json.loads(result.stdout)
    assert study["id"] == study_id and study["study_uid"] == "1.2.826.0.1.3680043.99.1"
    assert study["state"] == SENDING and study["instances"] == 2 and study["result"] == "hemorrhage detected"
    [send] = study["sends"]
    assert send["destination"] == "pacs" and send["state"] == PENDING and send["attempts"] == 1
    assert send["error"] == "association rejected" and send["path"].endswith("ich_seg.dcm")


def test_status_before_the_first_start_creates_nothing(tmp_path: Path) -> None:
    config = write_config(tmp_path, valid_settings())
    for extra, expected in (([], "no database yet"), (["--json"], "[]")):
        result = subprocess.run([sys.executable, "-m", "gateway", "status", "--config", str(config), *extra],
                                cwd=REPO, capture_output=True, text=True, timeout=120)
        assert result.returncode == 0 and expected in result.stdout
    assert not (tmp_path / "spool").exists()
