"""The node's state in SQLite (WAL, synchronous FULL): studies, their instances and the sends of their results.

Everything the node promised is recorded here before it is promised (a C-STORE success is returned only after its
instance row is committed), and everything it still owes is found here after a crash: studies still receiving
resume their quiet-time timers from the recorded arrival times, running studies are re-queued, pending sends
resume.

A study moves through ``received → ready → running → sending → done``, or ends ``failed`` with the error.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

RECEIVED, READY, RUNNING, SENDING, DONE, FAILED = "received", "ready", "running", "sending", "done", "failed"
UNFINISHED = (RECEIVED, READY, RUNNING, SENDING)
PENDING, SENT = "pending", "sent"
NEW, DUPLICATE, REFUSED = "new", "duplicate", "refused"  # what an arriving instance is

SCHEMA = """
CREATE TABLE IF NOT EXISTS studies (
    id INTEGER PRIMARY KEY AUTOINCREMENT,  -- never reused: a spool folder name is never ambiguous
    study_uid TEXT NOT NULL,
    calling_ae TEXT NOT NULL,
    peer_host TEXT NOT NULL,
    state TEXT NOT NULL,
    instances INTEGER NOT NULL DEFAULT 0,
    bytes INTEGER NOT NULL DEFAULT 0,
    first_arrival REAL NOT NULL,
    last_arrival REAL NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    run_started REAL,
    run_seconds REAL,
    finished REAL,
    result TEXT,
    error TEXT,
    over_limit INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS studies_state ON studies(state);
CREATE INDEX IF NOT EXISTS studies_uid ON studies(study_uid, calling_ae);
CREATE TABLE IF NOT EXISTS instances (
    study_id INTEGER NOT NULL REFERENCES studies(id),
    sop_uid TEXT NOT NULL,
    bytes INTEGER NOT NULL,
    received REAL NOT NULL,
    PRIMARY KEY (study_id, sop_uid)
);
CREATE TABLE IF NOT EXISTS sends (
    id INTEGER PRIMARY KEY,
    study_id INTEGER NOT NULL REFERENCES studies(id),
    destination TEXT NOT NULL,
    path TEXT NOT NULL,
    state TEXT NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    next_try REAL NOT NULL,
    sent REAL,
    error TEXT
);
CREATE INDEX IF NOT EXISTS sends_state ON sends(state, next_try);
"""


@dataclass(frozen=True)
class Study:
    """One received study (one StudyInstanceUID from one calling AE, one request)."""

    id: int
    study_uid: str
    calling_ae: str
    peer_host: str
    state: str
    instances: int
    bytes: int
    first_arrival: float
    last_arrival: float
    attempts: int
    run_started: float | None
    run_seconds: float | None
    finished: float | None
    result: str | None
    error: str | None
    over_limit: int


@dataclass(frozen=True)
class Send:
    """One result file owed to one destination."""

    id: int
    study_id: int
    destination: str
    path: str
    state: str
    attempts: int
    next_try: float
    sent: float | None
    error: str | None


class Store:
    """Thread-safe access to the database: one connection, one lock, each method one transaction."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self._connection = sqlite3.connect(path, check_same_thread=False, isolation_level=None, timeout=30)
        self._connection.row_factory = sqlite3.Row
        self._lock = threading.RLock()
        with self._lock:
            self._connection.execute("PRAGMA journal_mode=WAL")
            self._connection.execute("PRAGMA synchronous=FULL")
            self._connection.executescript(SCHEMA)

    def close(self) -> None:
        with self._lock:
            self._connection.close()

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            self._connection.execute("BEGIN IMMEDIATE")
            try:
                yield self._connection
            except BaseException:
                self._connection.execute("ROLLBACK")
                raise
            self._connection.execute("COMMIT")

    # --- receiving ---------------------------------------------------------------------------------------------

    def open_study(self, study_uid: str, calling_ae: str, peer_host: str, sop_uid: str, refuse_seconds: float,
                   now: float | None = None) -> tuple[Study, str]:
        """The study an arriving instance belongs to, and what the instance is: ``NEW``, ``DUPLICATE`` or ``REFUSED``.

        An instance already held by an unfinished request of the same study and sender is a duplicate (a PACS
        re-sending after a dropped association). A study refused for a limit keeps being refused while its
        instances keep coming (until ``refuse_seconds`` of quiet), so its tail does not become a study of its own.
        New instances join the request still receiving (or one that became ready but has not started: it goes
        back to receiving); otherwise they open a new request.
        """
        now = time.time() if now is None else now
        with self._transaction() as db:
            duplicate = db.execute(
                "SELECT s.* FROM studies s JOIN instances i ON i.study_id = s.id WHERE s.study_uid = ? AND "
                f"s.calling_ae = ? AND i.sop_uid = ? AND s.state IN ({_marks(UNFINISHED)}) LIMIT 1",
                (study_uid, calling_ae, sop_uid, *UNFINISHED)).fetchone()
            if duplicate is not None:
                return _study(duplicate), DUPLICATE
            latest = db.execute("SELECT * FROM studies WHERE study_uid = ? AND calling_ae = ? ORDER BY id DESC LIMIT 1",
                                (study_uid, calling_ae)).fetchone()
            if latest is not None and latest["over_limit"] and now - latest["last_arrival"] < refuse_seconds:
                db.execute("UPDATE studies SET last_arrival = ? WHERE id = ?", (now, latest["id"]))
                return _study(latest), REFUSED
            if latest is None or latest["state"] not in (RECEIVED, READY):
                cursor = db.execute(
                    "INSERT INTO studies (study_uid, calling_ae, peer_host, state, first_arrival, last_arrival) "
                    "VALUES (?, ?, ?, ?, ?, ?)", (study_uid, calling_ae, peer_host, RECEIVED, now, now))
                latest = db.execute("SELECT * FROM studies WHERE id = ?", (cursor.lastrowid,)).fetchone()
            else:  # its quiet time restarts now: not promoted (and run) while this instance is being written
                db.execute("UPDATE studies SET state = ?, last_arrival = MAX(last_arrival, ?) WHERE id = ?",
                           (RECEIVED, now, latest["id"]))
            return _study(latest), NEW

    def add_instance(self, study_id: int, sop_uid: str, size: int, now: float | None = None) -> None:
        """Record an instance whose file is already on disk (the caller returns success after this)."""
        now = time.time() if now is None else now
        with self._transaction() as db:
            inserted = db.execute("INSERT OR IGNORE INTO instances (study_id, sop_uid, bytes, received) "
                                  "VALUES (?, ?, ?, ?)", (study_id, sop_uid, size, now)).rowcount
            if not inserted:  # the same instance on two associations at once: counted once
                return
            db.execute("UPDATE studies SET instances = instances + 1, bytes = bytes + ?, last_arrival = ?, "
                       "state = CASE WHEN state = ? THEN ? ELSE state END WHERE id = ?",
                       (size, now, READY, RECEIVED, study_id))

    def promote_quiet_studies(self, quiet_seconds: float, now: float | None = None,
                              busy: frozenset[int] = frozenset()) -> list[Study]:
        """Studies with no new instance for ``quiet_seconds`` become ready; returns them. ``busy``: studies with an
        instance being written right now (never promoted under it, however slow the write)."""
        now = time.time() if now is None else now
        with self._transaction() as db:
            rows = [row for row in db.execute(
                "SELECT * FROM studies WHERE state = ? AND last_arrival <= ? AND instances > 0",
                (RECEIVED, now - quiet_seconds)).fetchall() if row["id"] not in busy]
            for row in rows:
                db.execute("UPDATE studies SET state = ? WHERE id = ?", (READY, row["id"]))
        return [_study(row) for row in rows]

    def empty_abandoned_studies(self) -> list[int]:
        """At start-up (nothing is being received): studies opened but never given an instance (a crash between the
        two) are removed; ids returned."""
        with self._transaction() as db:
            ids = [row["id"] for row in db.execute("SELECT id FROM studies WHERE state = ? AND instances = 0",
                                                   (RECEIVED,))]
            db.executemany("DELETE FROM studies WHERE id = ?", [(study_id,) for study_id in ids])
        return ids

    # --- running -----------------------------------------------------------------------------------------------

    def requeue_interrupted(self, max_attempts: int) -> tuple[list[Study], list[Study]]:
        """At start-up: runs cut short by a crash go back to ready, or fail once out of attempts."""
        with self._transaction() as db:
            rows = db.execute("SELECT * FROM studies WHERE state = ?", (RUNNING,)).fetchall()
            requeued, failed = [], []
            for row in rows:
                if row["attempts"] >= max_attempts:
                    db.execute("UPDATE studies SET state = ?, error = ?, finished = ? WHERE id = ?",
                               (FAILED, f"interrupted {row['attempts']} times", time.time(), row["id"]))
                    failed.append(_study(row))
                else:
                    db.execute("UPDATE studies SET state = ? WHERE id = ?", (READY, row["id"]))
                    requeued.append(_study(row))
        return requeued, failed

    def claim_ready(self) -> Study | None:
        """The oldest ready study, now running (one attempt more), or None."""
        with self._transaction() as db:
            row = db.execute("SELECT * FROM studies WHERE state = ? ORDER BY last_arrival, id LIMIT 1",
                             (READY,)).fetchone()
            if row is None:
                return None
            db.execute("UPDATE studies SET state = ?, attempts = attempts + 1, run_started = ?, error = NULL "
                       "WHERE id = ?", (RUNNING, time.time(), row["id"]))
            return _study(db.execute("SELECT * FROM studies WHERE id = ?", (row["id"],)).fetchone())

    def finish_run(self, study_id: int, seconds: float, result: str, sends: list[tuple[str, str]]) -> None:
        """The run succeeded: record its result and owe each (destination, file) a send, in one transaction."""
        now = time.time()
        with self._transaction() as db:
            db.executemany("INSERT INTO sends (study_id, destination, path, state, next_try) VALUES (?, ?, ?, ?, ?)",
                           [(study_id, destination, path, PENDING, now) for destination, path in sends])
            db.execute("UPDATE studies SET state = ?, run_seconds = ?, result = ?, finished = ? WHERE id = ?",
                       (SENDING if sends else DONE, seconds, result, None if sends else now, study_id))

    def fail_run(self, study_id: int, seconds: float, error: str, retry: bool) -> str:
        """The run failed: back to ready when ``retry``, else failed; returns the new state."""
        state = READY if retry else FAILED
        with self._transaction() as db:
            db.execute("UPDATE studies SET state = ?, run_seconds = ?, error = ?, finished = ? WHERE id = ?",
                       (state, seconds, error, None if retry else time.time(), study_id))
        return state

    def refuse_study(self, study_id: int, error: str) -> None:
        """Fail a study over a limit while receiving; its further instances are refused too (``open_study``)."""
        now = time.time()
        with self._transaction() as db:
            db.execute("UPDATE studies SET state = ?, error = ?, finished = ?, last_arrival = ?, over_limit = 1 "
                       "WHERE id = ?", (FAILED, error, now, now, study_id))

    # --- sending -----------------------------------------------------------------------------------------------

    def due_sends(self, now: float | None = None) -> list[Send]:
        now = time.time() if now is None else now
        with self._lock:
            rows = self._connection.execute("SELECT * FROM sends WHERE state = ? AND next_try <= ? ORDER BY next_try",
                                            (PENDING, now)).fetchall()
        return [Send(**dict(row)) for row in rows]

    def mark_sent(self, send_id: int) -> Study | None:
        """A send succeeded; when it was the study's last, the study is done and returned."""
        now = time.time()
        with self._transaction() as db:
            db.execute("UPDATE sends SET state = ?, sent = ?, attempts = attempts + 1, error = NULL WHERE id = ?",
                       (SENT, now, send_id))
            study_id = db.execute("SELECT study_id FROM sends WHERE id = ?", (send_id,)).fetchone()[0]
            left = db.execute("SELECT COUNT(*) FROM sends WHERE study_id = ? AND state != ?",
                              (study_id, SENT)).fetchone()[0]
            if left:
                return None
            db.execute("UPDATE studies SET state = ?, finished = ? WHERE id = ? AND state = ?",
                       (DONE, now, study_id, SENDING))
            return _study(db.execute("SELECT * FROM studies WHERE id = ?", (study_id,)).fetchone())

    def retry_send(self, send_id: int, error: str, delays: tuple[float, ...], max_attempts: int) -> Study | None:
        """A send failed: try again after the next back-off delay, or give up (the study fails) and return it."""
        with self._transaction() as db:
            row = db.execute("SELECT * FROM sends WHERE id = ?", (send_id,)).fetchone()
            attempts = row["attempts"] + 1
            if attempts < max_attempts:
                delay = delays[min(attempts - 1, len(delays) - 1)]
                db.execute("UPDATE sends SET attempts = ?, next_try = ?, error = ? WHERE id = ?",
                           (attempts, time.time() + delay, error, send_id))
                return None
            db.execute("UPDATE sends SET attempts = ?, state = ?, error = ? WHERE id = ?",
                       (attempts, FAILED, error, send_id))
            db.execute("UPDATE studies SET state = ?, error = ?, finished = ? WHERE id = ?",
                       (FAILED, f"send to {row['destination']} failed {attempts} times: {error}", time.time(),
                        row["study_id"]))
            return _study(db.execute("SELECT * FROM studies WHERE id = ?", (row["study_id"],)).fetchone())

    # --- reading -----------------------------------------------------------------------------------------------

    def study(self, study_id: int) -> Study:
        with self._lock:
            return _study(self._connection.execute("SELECT * FROM studies WHERE id = ?", (study_id,)).fetchone())

    def studies(self, limit: int = 50) -> list[Study]:
        with self._lock:
            rows = self._connection.execute("SELECT * FROM studies ORDER BY id DESC LIMIT ?", (limit,)).fetchall()
        return [_study(row) for row in rows]

    def sends(self, study_id: int) -> list[Send]:
        with self._lock:
            rows = self._connection.execute("SELECT * FROM sends WHERE study_id = ? ORDER BY id",
                                            (study_id,)).fetchall()
        return [Send(**dict(row)) for row in rows]

    def ids(self, *states: str) -> set[int]:
        """Ids of the studies in any of ``states``."""
        with self._lock:
            return {row[0] for row in self._connection.execute(
                f"SELECT id FROM studies WHERE state IN ({_marks(states)})", states)}

    def count(self, state: str) -> int:
        with self._lock:
            return self._connection.execute("SELECT COUNT(*) FROM studies WHERE state = ?", (state,)).fetchone()[0]


def _marks(values: tuple[str, ...]) -> str:
    return ", ".join("?" for _ in values)


def _study(row: sqlite3.Row) -> Study:
    return Study(**dict(row))
