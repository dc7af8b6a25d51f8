"""Ways to run the application on a study's folder: a process per study, a warm worker, or the packaged MAP.

Every runner returns the application's exit status and its error line; the node decides from the status whether
to retry (an input refusal, exit 3, is final). A runner never takes the node down with it: a crashed or hung
application (or worker) is a failed run.
"""

from __future__ import annotations

import ctypes
import json
import logging
import os
import resource
import selectors
import signal
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Protocol

from gateway.config import REPOSITORY, RunnerConfig

logger = logging.getLogger("gateway.runner")

EXIT_INPUT_REFUSED = 3  # the app's status for an input it will not process (ichseg.cli.EXIT_INPUT)
TIMED_OUT = -1000  # our status for a run stopped at the timeout
STACK_BYTES = 32 * 1024**2  # holoscan wants a 32 MB stack (what `ulimit -s 32768` gives the app elsewhere)
ERROR_MARK = "[ERROR]"
PR_SET_PDEATHSIG = 1


@dataclass(frozen=True)
class RunOutcome:
    """What a run ended with: the app's exit status (negative: killed by that signal), its error, the time."""

    status: int
    message: str
    seconds: float

    @property
    def retry(self) -> bool:
        """Whether another attempt can help: not when the app refused the input."""
        return self.status != EXIT_INPUT_REFUSED


class Runner(Protocol):
    def run(self, input_folder: Path, output_folder: Path, log_path: Path) -> RunOutcome: ...

    def close(self) -> None: ...


def make_runner(config: RunnerConfig, spool: Path) -> Runner:
    """The runner the configuration names."""
    if config.kind == "warm":
        return WarmRunner(config, spool / "warm-worker.log")
    if config.kind == "map":
        return CommandRunner(config, lambda i, o: map_command(config, i, o))
    return CommandRunner(config, lambda i, o: app_command(config, i, o))


def app_command(config: RunnerConfig, input_folder: Path, output_folder: Path) -> list[str]:
    """``python app.py -i … -o … -m …``: what a MAP runs, one process per study."""
    return [config.python, str(config.app), "-i", str(input_folder), "-o", str(output_folder), "-m",
            str(config.models)]


def map_command(config: RunnerConfig, input_folder: Path, output_folder: Path) -> list[str]:
    """``monai-deploy run IMAGE -i … -o …``: the packaged MAP (needs a Docker engine; its models are inside)."""
    return ["monai-deploy", "run", config.image, "-i", str(input_folder), "-o", str(output_folder)]


def _prepare_child() -> None:
    """In the child before exec: a 32 MB stack, and death with the node (a SIGKILLed node leaves no app behind
    to write into a study the restarted node runs again)."""
    ctypes.CDLL(None).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    _, hard = resource.getrlimit(resource.RLIMIT_STACK)
    limit = STACK_BYTES if hard == resource.RLIM_INFINITY else min(STACK_BYTES, hard)
    resource.setrlimit(resource.RLIMIT_STACK, (limit, hard))


def error_line(log_path: Path) -> str:
    """The app's last ERROR line (what an operator needs), else the log's last line."""
    try:
        lines = [line.strip() for line in log_path.read_text(errors="replace").splitlines() if line.strip()]
    except OSError:
        return ""
    errors = [line for line in lines if ERROR_MARK in line]
    line = (errors or lines or [""])[-1]
    return line.split(" - ", 1)[-1] if ERROR_MARK in line else line


class CommandRunner:
    """One process per study (``python app.py`` or ``monai-deploy run``), killed with its children at the timeout."""

    def __init__(self, config: RunnerConfig, command: Callable[[Path, Path], list[str]]) -> None:
        self.config = config
        self.command = command

    def run(self, input_folder: Path, output_folder: Path, log_path: Path) -> RunOutcome:
        argv = self.command(input_folder, output_folder)
        started = time.monotonic()
        with open(log_path, "wb") as log:
            process = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                       cwd=REPOSITORY, start_new_session=True,
                                       preexec_fn=_prepare_child)
            try:
                status = process.wait(timeout=self.config.timeout_seconds)
            except subprocess.TimeoutExpired:
                _kill_group(process)
                return RunOutcome(TIMED_OUT, f"stopped after {self.config.timeout_seconds:.0f} s (runner timeout)",
                                  time.monotonic() - started)
        message = "" if status == 0 else error_line(log_path) or f"exit status {status}"
        return RunOutcome(status, message, time.monotonic() - started)

    def close(self) -> None:
        """Nothing is kept between studies."""


class WarmRunner:
    """A long-lived worker (``python -m gateway.warm_worker``) that has imported the stack once.

    Recycled after ``recycle_after`` studies, restarted when it dies or hangs; its own log is ``log_path``, each
    study's log goes to that study's folder.
    """

    def __init__(self, config: RunnerConfig, log_path: Path) -> None:
        self.config = config
        self.log_path = log_path
        self.process: subprocess.Popen[bytes] | None = None
        self.runs = 0

    def start(self) -> None:
        """Start the worker and wait until it has imported the application (≈ 4 s on 2 cores)."""
        self.close()
        log = open(self.log_path, "ab")  # noqa: SIM115 (the worker keeps it open)
        self.process = subprocess.Popen(
            [self.config.python, "-m", "gateway.warm_worker", "--app", str(self.config.app)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=log, cwd=REPOSITORY,
            start_new_session=True, preexec_fn=_prepare_child)
        log.close()
        self.runs = 0
        reply = self._read_reply(self.config.timeout_seconds)
        if reply is None or not reply.get("ready"):
            self.close()
            raise RuntimeError(f"the warm worker did not start; see {self.log_path}")
        logger.info("warm worker ready (pid %d)", self.process.pid)

    def run(self, input_folder: Path, output_folder: Path, log_path: Path) -> RunOutcome:
        started = time.monotonic()
        if self.process is None or self.process.poll() is not None:
            try:
                self.start()
            except (OSError, RuntimeError) as error:
                return RunOutcome(1, str(error), time.monotonic() - started)
        assert self.process is not None and self.process.stdin is not None
        request = {"input": str(input_folder), "output": str(output_folder), "models": str(self.config.models),
                   "log": str(log_path)}
        try:
            self.process.stdin.write((json.dumps(request) + "\n").encode())
            self.process.stdin.flush()
        except OSError:
            self.close()
            return RunOutcome(1, "the warm worker died before the study was sent", time.monotonic() - started)
        reply = self._read_reply(self.config.timeout_seconds)
        seconds = time.monotonic() - started
        if reply is None:
            try:  # end of file comes before a dying worker can be waited for: give it a moment, else it is hung
                died: int | None = self.process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                died = None
            if died is None:
                _kill_group(self.process)
            self.close()
            if died is None:
                return RunOutcome(TIMED_OUT, f"stopped after {self.config.timeout_seconds:.0f} s (runner timeout)",
                                  seconds)
            return RunOutcome(died if died < 0 else 1, f"the warm worker died (status {died}); see {log_path}",
                              seconds)
        self.runs += 1
        if self.runs >= self.config.recycle_after:
            logger.info("warm worker recycled after %d studies", self.runs)
            self.close()
        return RunOutcome(int(reply["status"]), str(reply.get("message", "")), seconds)

    def _read_reply(self, timeout: float) -> dict | None:
        """One JSON line from the worker, or None on timeout or end of file."""
        assert self.process is not None and self.process.stdout is not None
        stream: IO[bytes] = self.process.stdout
        with selectors.DefaultSelector() as selector:
            selector.register(stream, selectors.EVENT_READ)
            if not selector.select(timeout):
                return None
        line = stream.readline()
        return json.loads(line) if line else None

    def close(self) -> None:
        """Stop the worker: end of input first (it exits between studies), then the whole process group."""
        process, self.process = self.process, None
        if process is None:
            return
        if process.stdin is not None:
            try:
                process.stdin.close()
            except OSError:
                pass
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            _kill_group(process)
        if process.stdout is not None:
            process.stdout.close()


def _kill_group(process: subprocess.Popen[bytes]) -> None:
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    process.wait()
