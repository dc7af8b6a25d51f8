"""The spool on disk: one folder per study request, instances written durably before they are acknowledged.

Layout under the configured ``spool`` folder::

    gateway.sqlite            the state (``gateway.store``)
    studies/<id>/input/       the instances received, <SOPInstanceUID>.dcm
    studies/<id>/output/      the application's outputs (SEG, report, preview); what is sent comes from here
    studies/<id>/run.log      the application's log of the last run
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

SAFE_NAME = set("0123456789.")


class Spool:
    """Paths and durable writes under the spool folder."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        (self.root / "studies").mkdir(parents=True, exist_ok=True)

    def study_folder(self, study_id: int) -> Path:
        return self.root / "studies" / str(study_id)

    def input_folder(self, study_id: int) -> Path:
        return self.study_folder(study_id) / "input"

    def output_folder(self, study_id: int) -> Path:
        return self.study_folder(study_id) / "output"

    def run_log(self, study_id: int) -> Path:
        return self.study_folder(study_id) / "run.log"

    def write_instance(self, study_id: int, sop_uid: str, data: bytes) -> Path:
        """Write, fsync, rename, fsync the folder: once this returns, the instance survives a power cut."""
        if not sop_uid or not set(sop_uid) <= SAFE_NAME:
            raise ValueError(f"SOP Instance UID {sop_uid!r} is not a valid UID")
        folder = self.input_folder(study_id)
        folder.mkdir(parents=True, exist_ok=True)
        target = folder / f"{sop_uid}.dcm"
        handle, name = tempfile.mkstemp(dir=folder, prefix=".", suffix=".part")
        try:
            with os.fdopen(handle, "wb") as stream:
                stream.write(data)
                stream.flush()
                os.fsync(stream.fileno())
            os.chmod(name, 0o644)
            os.replace(name, target)
        finally:
            Path(name).unlink(missing_ok=True)
        _fsync_folder(folder)
        return target

    def remove_partials(self) -> int:
        """Temporary files left by a crash mid-write (never acknowledged): removed at start-up; returns how many."""
        partials = list((self.root / "studies").glob("*/input/.*.part"))
        for partial in partials:
            partial.unlink(missing_ok=True)
        return len(partials)

    def study_ids(self) -> set[int]:
        """Ids of the study folders on disk."""
        return {int(path.name) for path in (self.root / "studies").iterdir() if path.name.isdigit()}

    def remove_study(self, study_id: int) -> None:
        shutil.rmtree(self.study_folder(study_id), ignore_errors=True)

    def free_bytes(self) -> int:
        return shutil.disk_usage(self.root).free


def _fsync_folder(folder: Path) -> None:
    descriptor = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)
