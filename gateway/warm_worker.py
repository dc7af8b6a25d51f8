"""The warm runner's worker: imports the application once, then runs it on one study per request.

Protocol (the node is the only client): one JSON object per line on stdin,
``{"input": …, "output": …, "models": …, "log": …}``; one JSON line back per request,
``{"status": exit status, "message": the app's error line, "seconds": …}``; the first line it writes is
``{"ready": true}`` once the stack is imported. End of stdin ends the worker. Everything the app prints goes to
the study's log file, never into the reply channel.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import logging
import os
import sys
import time
from pathlib import Path
from types import ModuleType
from typing import IO


class LastError(logging.Handler):
    """Keeps the last ERROR record's message: the reason a run failed, for the node's status."""

    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.message = ""

    def emit(self, record: logging.LogRecord) -> None:
        self.message = record.getMessage()


def load_app(path: Path) -> ModuleType:
    """Import ``app.py`` as a module (not as ``__main__``: its early check is for the command line)."""
    sys.path.insert(0, str(path.parent))
    spec = importlib.util.spec_from_file_location("ichseg_app", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def run_one(app: ModuleType, app_path: Path, request: dict, worker_log_fd: int) -> dict:
    """Run the app on one study with fds 1 and 2 pointing at the study's log."""
    last_error = LastError()
    logging.getLogger("ichseg.app").addHandler(last_error)
    started = time.monotonic()
    with open(request["log"], "ab") as log:
        sys.stdout.flush()
        sys.stderr.flush()
        os.dup2(log.fileno(), 1)
        os.dup2(log.fileno(), 2)
        try:
            status = app.main([sys.executable, str(app_path), "-i", request["input"], "-o", request["output"],
                               "-m", request["models"]])
        except SystemExit as stop:  # the SDK exits on a usage error
            status = stop.code if isinstance(stop.code, int) else (0 if stop.code is None else 2)
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os.dup2(worker_log_fd, 1)
            os.dup2(worker_log_fd, 2)
            logging.getLogger("ichseg.app").removeHandler(last_error)
    return {"status": status, "message": last_error.message if status else "",
            "seconds": round(time.monotonic() - started, 3)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--app", type=Path, required=True, help="the application's app.py")
    args = parser.parse_args(argv)
    replies: IO[str] = os.fdopen(os.dup(1), "w", buffering=1)
    worker_log_fd = os.dup(2)
    os.dup2(2, 1)  # stray prints must not corrupt the reply channel
    app = load_app(args.app.resolve())
    replies.write(json.dumps({"ready": True}) + "\n")
    for line in sys.stdin:
        if line.strip():
            replies.write(json.dumps(run_one(app, args.app.resolve(), json.loads(line), worker_log_fd)) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
