"""The node's DICOM listener (pynetdicom): C-ECHO, C-STORE into the spool, allow-list, limits.

A C-STORE success is returned only once the instance is on disk (fsynced and renamed) and recorded in the
database: what the PACS was told is stored, is stored. CT instances (CT Image, Enhanced CT, Legacy Converted
Enhanced CT) are kept; any other storage class a PACS pushes along (a DICOMDIR's objects, an SR, a prior SEG) is
answered with success and not kept, so it never breaks a study.
"""

from __future__ import annotations

import logging
import threading
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from pydicom.uid import UID
from pynetdicom import AE, ALL_TRANSFER_SYNTAXES, AllStoragePresentationContexts, evt

from gateway.config import GatewayConfig
from gateway.sender import no_delay
from gateway.spool import Spool
from gateway.store import DUPLICATE, REFUSED, Store

logger = logging.getLogger("gateway.listener")

CT_STORAGE = {UID("1.2.840.10008.5.1.4.1.1.2"), UID("1.2.840.10008.5.1.4.1.1.2.1"),  # CT Image, Enhanced CT,
              UID("1.2.840.10008.5.1.4.1.1.2.2")}  # Legacy Converted Enhanced CT
VERIFICATION = "1.2.840.10008.1.1"
SUCCESS = 0x0000
NOT_AUTHORIZED = 0x0124  # Refused: not authorized (a known AE title from a host not allowed for it)
OUT_OF_RESOURCES = 0xA700
CANNOT_UNDERSTAND = 0xC000
REFUSED_SECONDS = 24 * 3600  # a study refused for a limit stays refused (its tail and PACS retries) this long


class Listener:
    """Accepts associations from the allow-list and stores CT instances durably into the spool."""

    def __init__(self, config: GatewayConfig, store: Store, spool: Spool) -> None:
        self.config = config
        self.store = store
        self.spool = spool
        self.server: Any = None
        self._writing: Counter[int] = Counter()  # study id → instances being written now
        self._writing_lock = threading.Lock()

    def busy_studies(self) -> frozenset[int]:
        """Studies with an instance being written: not complete, whatever their quiet time says."""
        with self._writing_lock:
            return frozenset(study_id for study_id, count in self._writing.items() if count)

    @contextmanager
    def _writing_into(self, study_id: int) -> Iterator[None]:
        with self._writing_lock:
            self._writing[study_id] += 1
        try:
            yield
        finally:
            with self._writing_lock:
                self._writing[study_id] -= 1

    def start(self) -> None:
        ae = AE(ae_title=self.config.ae_title)
        for context in AllStoragePresentationContexts:
            syntax = str(context.abstract_syntax)
            ae.add_supported_context(syntax, ALL_TRANSFER_SYNTAXES if syntax in CT_STORAGE else context.transfer_syntax)
        ae.add_supported_context(VERIFICATION)
        ae.require_called_aet = self.config.require_called_aet
        ae.require_calling_aet = sorted({peer.ae_title for peer in self.config.peers})
        ae.maximum_pdu_size = 0  # no limit: fewer, larger PDUs for 0.5 MB slices
        handlers: list[Any] = [(evt.EVT_C_STORE, self.handle_store), (evt.EVT_C_ECHO, self.handle_echo),
                    (evt.EVT_CONN_OPEN, self.handle_open), (evt.EVT_REJECTED, self.handle_rejected)]
        self.server = ae.start_server((self.config.bind_address, self.config.port), block=False,
                                      evt_handlers=handlers)
        self.server.verify_request = self.allowed_host
        logger.info("listening as %s on %s:%d (calling AEs allowed: %s)", self.config.ae_title,
                    self.config.bind_address, self.config.port, ", ".join(ae.require_calling_aet))

    def stop(self) -> None:
        """Accept no more associations and cut those in progress (their unacknowledged instances are resent)."""
        if self.server is not None:
            for assoc in list(self.server.active_associations):
                assoc.abort()
            self.server.shutdown()
            self.server = None

    def allowed_host(self, request: Any, address: tuple[str, int]) -> bool:
        """Connections are closed before any DICOM is read from hosts no peer may come from, and while the spool's
        disk is below its reserve (the sender retries later; nothing of a study is half taken)."""
        if not any(peer.host is None for peer in self.config.peers) and \
                address[0] not in {p.host for p in self.config.peers}:
            logger.warning("connection from %s refused: no peer is allowed from this host", address[0])
            return False
        if self.spool.free_bytes() < self.config.limits.min_free_disk_bytes:
            logger.error("connection from %s refused: less than %d bytes free in the spool "
                         "(limits.min_free_disk_bytes)", address[0], self.config.limits.min_free_disk_bytes)
            return False
        return True

    def handle_open(self, event: Any) -> None:
        no_delay(event.assoc)

    def handle_rejected(self, event: Any) -> None:
        logger.warning("association from %s (%s) to %s refused", event.assoc.requestor.ae_title,
                       event.assoc.requestor.address, event.assoc.acceptor.ae_title)

    def handle_echo(self, event: Any) -> int:
        logger.info("C-ECHO from %s (%s)", event.assoc.requestor.ae_title, event.assoc.requestor.address)
        return SUCCESS

    def handle_store(self, event: Any) -> int:
        """Store one instance; the returned status is what the PACS is told."""
        calling, host = event.assoc.requestor.ae_title, event.assoc.requestor.address
        sop_class, sop_uid = UID(str(event.request.AffectedSOPClassUID)), str(event.request.AffectedSOPInstanceUID)
        if self.config.peer(calling, host) is None:
            logger.warning("C-STORE from %s at %s refused: not allowed from this host", calling, host)
            return NOT_AUTHORIZED
        if sop_class not in CT_STORAGE:
            logger.info("%s from %s not kept (%s is not CT)", sop_uid, calling, sop_class.name)
            return SUCCESS
        try:
            study_uid = str(event.dataset.StudyInstanceUID)
            data = event.encoded_dataset()
        except Exception as error:  # any decoding problem is the sender's
            logger.warning("C-STORE %s from %s: cannot read the dataset (%s)", sop_uid, calling, error)
            return CANNOT_UNDERSTAND
        study, outcome = self.store.open_study(study_uid, calling, host, sop_uid, refuse_seconds=REFUSED_SECONDS)
        if outcome == DUPLICATE:
            return SUCCESS
        if outcome == REFUSED:
            logger.warning("%s of study %d from %s refused: %s", sop_uid, study.id, calling, study.error)
            return OUT_OF_RESOURCES
        with self._writing_into(study.id):
            over = self.over_limit(study.instances, study.bytes, len(data))
            if over:
                logger.error("study %d (%s) from %s refused: %s", study.id, study_uid, calling, over)
                self.store.refuse_study(study.id, f"refused while receiving: {over}")
                self.spool.remove_study(study.id)
                return OUT_OF_RESOURCES
            try:
                self.spool.write_instance(study.id, sop_uid, data)
            except (OSError, ValueError) as error:
                logger.error("C-STORE %s from %s not stored: %s", sop_uid, calling, error)
                return OUT_OF_RESOURCES if isinstance(error, OSError) else CANNOT_UNDERSTAND
            self.store.add_instance(study.id, sop_uid, len(data))
        return SUCCESS

    def over_limit(self, instances: int, size: int, incoming: int) -> str:
        """Which limit one more instance of ``incoming`` bytes would break ("" when none)."""
        limits = self.config.limits
        if instances + 1 > limits.max_instances_per_study:
            return f"more than {limits.max_instances_per_study} instances (limits.max_instances_per_study)"
        if size + incoming > limits.max_bytes_per_study:
            return f"more than {limits.max_bytes_per_study} bytes (limits.max_bytes_per_study)"
        if self.spool.free_bytes() - incoming < limits.min_free_disk_bytes:
            return f"less than {limits.min_free_disk_bytes} bytes would be left free (limits.min_free_disk_bytes)"
        return ""
