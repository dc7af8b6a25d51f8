"""Per-stage console progress and timings, shared by the start-up checks and the operators of one run so the report
can list them."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from contextlib import contextmanager

logger = logging.getLogger("ichseg.app")


class StageClock:
    """Seconds spent in each named stage of one application run, in the order the stages ran."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        """Log the start and end of a stage and record its wall time (not recorded if it fails)."""
        logger.info("%s ...", name)
        started = time.perf_counter()
        yield
        self.seconds[name] = round(time.perf_counter() - started, 3)
        logger.info("%s done in %.1f s", name, self.seconds[name])
