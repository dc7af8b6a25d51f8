"""The node: listener, study assembly, one run at a time, and sends on their own thread.

Threads: pynetdicom's (one per association) store instances; ``_run_loop`` turns quiet studies ready and runs the
application on them one by one (a 2-core box runs one study at a time); ``_send_loop`` delivers results with
back-off, so a destination that is down never holds up inference. ``stop`` (SIGTERM) stops accepting, lets the
run in progress finish, and leaves pending sends for the next start.
"""

from __future__ import annotations

import json
import logging
import shutil
import threading
import time
from pathlib import Path

from gateway.config import GatewayConfig
from gateway.listener import Listener
from gateway.preview_sc import preview_secondary_capture
from gateway.runners import Runner, WarmRunner, make_runner
from gateway.sender import SendError, send_file
from gateway.spool import Spool
from gateway.store import DONE, FAILED, Store, Study
from ichseg.report import PREVIEW_NAME, REPORT_NAME, SEG_NAME

logger = logging.getLogger("gateway")

PREVIEW_SC_NAME = "ich_preview_sc.dcm"
POLL_SECONDS = 0.2


class Node:
    """One DICOM node in front of the application (see README "Connect to your PACS")."""

    def __init__(self, config: GatewayConfig, runner: Runner | None = None) -> None:
        self.config = config
        self.spool = Spool(config.spool)
        self.store = Store(config.database)
        self.runner = runner or make_runner(config.runner, config.spool)
        self.listener = Listener(config, self.store, self.spool)
        self.stopping = threading.Event()
        self.threads: list[threading.Thread] = []

    def start(self) -> None:
        """Recover what a crash left, start listening, start the run and send threads."""
        partials = self.spool.remove_partials()
        requeued, failed = self.store.requeue_interrupted(self.config.runner.max_attempts)
        for study in requeued:
            logger.info("study %d (%s): run interrupted, queued again", study.id, study.study_uid)
        for study in failed:
            logger.error("study %d (%s): failed, interrupted %d times", study.id, study.study_uid, study.attempts)
        if partials:
            logger.info("removed %d partly written instance(s) (never acknowledged)", partials)
        for study_id in self.store.empty_abandoned_studies():  # opened, never given an instance, before a crash
            self.spool.remove_study(study_id)
        finished = self.store.ids(DONE) | (set() if self.config.keep_failed else self.store.ids(FAILED))
        for study_id in finished & self.spool.study_ids():  # a crash between delivery and clean-up
            self.spool.remove_study(study_id)
        self.listener.start()
        for target, name in ((self._run_loop, "runs"), (self._send_loop, "sends")):
            thread = threading.Thread(target=target, name=name, daemon=True)
            thread.start()
            self.threads.append(thread)

    def stop(self) -> None:
        """Drain: no new associations, the current run finishes, then everything stops."""
        logger.info("stopping: no new associations; the run in progress finishes")
        self.listener.stop()
        self.stopping.set()
        for thread in self.threads:
            thread.join()
        self.runner.close()
        self.store.close()
        logger.info("stopped")

    # --- runs --------------------------------------------------------------------------------------------------

    def _run_loop(self) -> None:
        if isinstance(self.runner, WarmRunner):
            try:
                self.runner.start()  # the first study should not wait for the imports
            except (OSError, RuntimeError) as error:
                logger.error("%s (it is started again for the next study)", error)
        while not self.stopping.is_set():
            for study in self.store.promote_quiet_studies(self.config.quiet_seconds,
                                                          busy=self.listener.busy_studies()):
                logger.info("study %d (%s) from %s: %d instances, %.1f MB, ready", study.id, study.study_uid,
                            study.calling_ae, study.instances, study.bytes / 1e6)
            claimed = self.store.claim_ready()
            if claimed is None:
                self.stopping.wait(POLL_SECONDS)
                continue
            try:
                self._run(claimed)
            except Exception as error:  # the run thread must outlive any one study
                logger.exception("study %d: the node failed running it", claimed.id)
                self.store.fail_run(claimed.id, 0.0, f"node error: {error}",
                                    claimed.attempts < self.config.runner.max_attempts)

    def _run(self, study: Study) -> None:
        logger.info("study %d: running the application (attempt %d, %s runner)", study.id, study.attempts,
                    self.config.runner.kind)
        output = self.spool.output_folder(study.id)
        shutil.rmtree(output, ignore_errors=True)
        output.mkdir(parents=True)
        outcome = self.runner.run(self.spool.input_folder(study.id), output, self.spool.run_log(study.id))
        if outcome.status != 0:
            retry = outcome.retry and study.attempts < self.config.runner.max_attempts
            state = self.store.fail_run(study.id, outcome.seconds, outcome.message, retry)
            logger.error("study %d: run failed after %.1f s (status %d): %s → %s", study.id, outcome.seconds,
                         outcome.status, outcome.message, state)
            if state == "failed" and not self.config.keep_failed:
                self.spool.remove_study(study.id)
            return
        files = [output / SEG_NAME]
        if self.config.send_preview:
            try:
                files.append(preview_secondary_capture(output / PREVIEW_NAME, files[0], output / PREVIEW_SC_NAME))
            except (OSError, ValueError) as error:
                logger.error("study %d: preview not sent (%s)", study.id, error)
        peer = self.config.peer(study.calling_ae, study.peer_host)
        if peer is None:  # the configuration changed since the study came in
            self.store.fail_run(study.id, outcome.seconds, f"{study.calling_ae} is no longer an allowed peer", False)
            logger.error("study %d: %s is no longer in peers; results kept in %s", study.id, study.calling_ae, output)
            return
        destinations = peer.send_to
        summary = result_summary(output / REPORT_NAME)
        self.store.finish_run(study.id, outcome.seconds, summary,
                              [(name, str(path)) for name in destinations for path in files])
        logger.info("study %d: %s in %.1f s; sending to %s", study.id, summary, outcome.seconds,
                    ", ".join(destinations) or "nobody")

    # --- sends -------------------------------------------------------------------------------------------------

    def _send_loop(self) -> None:
        while not self.stopping.is_set():
            for send in self.store.due_sends():
                if self.stopping.is_set():
                    return
                destination = self.config.destinations.get(send.destination)
                started = time.monotonic()
                try:
                    if destination is None:
                        raise SendError(f"destination '{send.destination}' is no longer configured")
                    send_file(Path(send.path), destination, self.config.ae_title)
                except Exception as error:  # any failure of one send is that send's, retried; the thread goes on
                    failed = self.store.retry_send(send.id, str(error), self.config.send_retry_seconds,
                                                   self.config.max_send_attempts)
                    logger.warning("study %d: send to %s failed (attempt %d): %s%s", send.study_id, send.destination,
                                   send.attempts + 1, error, "; giving up" if failed else "; will retry")
                    continue
                logger.info("study %d: %s sent to %s in %.2f s", send.study_id, Path(send.path).name,
                            send.destination, time.monotonic() - started)
                done = self.store.mark_sent(send.id)
                if done is not None:
                    logger.info("study %d: done", done.id)
                    self.spool.remove_study(done.id)
            self.stopping.wait(POLL_SECONDS)


def result_summary(report_path: Path) -> str:
    """One line from the app's report: the result and the volume."""
    try:
        report = json.loads(report_path.read_text())
    except (OSError, ValueError):
        return "result unknown (no report)"
    volume = report.get("hemorrhage_volume_ml")
    return f"{report.get('result', 'result unknown')}" + (f", {volume:.1f} mL" if isinstance(volume, int | float)
                                                          else "")
