"""Send a stored result file to a destination: C-STORE (pynetdicom) or DICOMweb STOW-RS.

The file sent is the one stored in the spool, so a resend after a failure or a crash is the same object (same SOP
Instance UID): the PACS sees one SEG, never two.
"""

from __future__ import annotations

import socket
import urllib.error
import urllib.request
import uuid
from pathlib import Path

from pydicom import dcmread
from pynetdicom import AE, Association

from gateway.config import Destination


class SendError(RuntimeError):
    """A send that did not end with the destination's success; the message says what happened."""


def send_file(path: Path, destination: Destination, calling_ae: str) -> None:
    """Deliver ``path`` to ``destination`` or raise ``SendError``."""
    if destination.kind == "stow":
        stow(path, destination)
    else:
        c_store(path, destination, calling_ae)


def no_delay(assoc: Association) -> None:
    """TCP_NODELAY on an association's socket: without it each small PDU waits ≈ 40 ms for the peer's ACK."""
    sock = getattr(getattr(assoc.dul, "socket", None), "socket", None)
    if sock is not None:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


def c_store(path: Path, destination: Destination, calling_ae: str) -> None:
    dataset = dcmread(path)
    ae = AE(ae_title=calling_ae)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = destination.timeout_seconds
    ae.connection_timeout = destination.timeout_seconds  # a host that drops packets: not the kernel's ≈ 2 min
    ae.add_requested_context(dataset.SOPClassUID, dataset.file_meta.TransferSyntaxUID)
    where = f"{destination.name} ({destination.ae_title}@{destination.host}:{destination.port})"
    assoc = ae.associate(destination.host, destination.port, ae_title=destination.ae_title)
    if not assoc.is_established:
        raise SendError(f"{where}: association {'rejected' if assoc.is_rejected else 'failed'}")
    try:
        no_delay(assoc)
        status = assoc.send_c_store(dataset)
    finally:
        assoc.release()
    code = getattr(status, "Status", None)
    if code is None:
        raise SendError(f"{where}: no C-STORE response (connection lost or timed out)")
    if code not in (0x0000, 0xB000, 0xB007, 0xB006, 0x0111):  # success, with warnings, or already held (a resend
        # of the same SOP instance after a crash: 0x0111 Duplicate SOP Instance means it is there)
        raise SendError(f"{where}: C-STORE status 0x{code:04X}")


def stow(path: Path, destination: Destination) -> None:
    """STOW-RS of one instance (multipart/related; type="application/dicom") to ``<url>/studies``."""
    boundary = uuid.uuid4().hex
    body = (f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode() + path.read_bytes()
            + f"\r\n--{boundary}--\r\n".encode())
    request = urllib.request.Request(
        f"{destination.url}/studies", data=body, method="POST",
        headers={"Content-Type": f'multipart/related; type="application/dicom"; boundary={boundary}',
                 "Accept": "application/dicom+json"})
    try:
        with urllib.request.urlopen(request, timeout=destination.timeout_seconds) as response:
            if response.status not in (200, 202):
                raise SendError(f"{destination.name} ({destination.url}): STOW-RS HTTP {response.status}")
    except urllib.error.HTTPError as error:
        raise SendError(f"{destination.name} ({destination.url}): STOW-RS HTTP {error.code}") from error
    except (urllib.error.URLError, OSError) as error:
        raise SendError(f"{destination.name} ({destination.url}): {error}") from error
