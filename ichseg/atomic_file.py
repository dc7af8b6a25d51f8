"""Write-then-rename for every output file, so a reader (PACS forwarder, viewer, script) never sees half a file."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; when the block succeeds, rename it onto ``path`` (else delete it).

    The file ends up 0644: mkstemp makes 0600, which a PACS forwarder running as another user cannot read.
    """
    path = Path(path)
    handle, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(handle)
    temporary = Path(name)
    try:
        yield temporary
        os.chmod(temporary, 0o644)
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)


def write_bytes_atomically(path: Path, data: bytes) -> None:
    """``path.write_bytes(data)`` through ``atomic_path``."""
    with atomic_path(path) as temporary:
        temporary.write_bytes(data)
