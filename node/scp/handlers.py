"""Event handlers on the association threads: check the caller, file the data, answer.

Nothing else runs here: no pixel decoding, no inference, no sending. The C-STORE handler gets
the data set already streamed to ``incoming/`` by pynetdicom (``STORE_RECV_CHUNKED_DATASET``),
reads its header, fsyncs and renames it into the spool, commits the ledger row and answers.
C-STOREs received by :mod:`node.scp._inbound` (all of them, normally) call :meth:`ScpHandlers.store`
directly with a :class:`Received`; pynetdicom's EVT_C_STORE is the fallback. When a peer that
sends whole studies releases its association, :meth:`ScpHandlers.released` marks the studies it
delivered in the ledger and rings the completion sweep's doorbell.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Collection
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from node.core import metrics
from node.core.errors import LedgerUnavailable, OutOfResources
from node.core.ledger import Ledger, ReceivedInstance, StoreOutcome
from node.core.series_rules import matching_rules
from node.core.settings import Settings
from node.core.spool import Spool
from node.core.timers import Doorbell
from node.scp import exchange
from node.scp.acl import check_association
from node.scp.admission import PEERS
from node.scp.identify import Unidentifiable, identify
from node.scp.status import REJECTED_PERMANENT, SOURCE_SERVICE_USER, Status

log = logging.getLogger("node.scp")
#: the metrics' reason for each failure status identify() answers with
_REJECTION = {Status.DATASET_DOES_NOT_MATCH_SOP_CLASS: metrics.Rejection.SOP_CLASS_MISMATCH}


@dataclass(frozen=True)
class Received:
    """A data set received in full into ``path`` (a file in ``incoming/``) and its request."""

    path: Path
    sop_class_uid: str  # the request's Affected SOP Class UID
    sop_instance_uid: str  # the request's Affected SOP Instance UID
    transfer_syntax: str  # of the presentation context it came in
    calling: str  # calling AE title
    peer: str  # peer address
    #: told (study UID, SOP class UID) once the instance is filed: the association's audit
    #: tally (node.scp.exchange)
    on_stored: Callable[[str, str], None] | None = None


@dataclass
class ScpHandlers:
    settings: Settings
    spool: Spool
    ledger: Ledger
    #: rung once a whole-study sender's release is marked (the completion sweep's)
    bell: Doorbell | None = None
    _io: ThreadPoolExecutor = field(
        default_factory=lambda: ThreadPoolExecutor(max_workers=8, thread_name_prefix="fsync")
    )

    def __post_init__(self) -> None:
        self._whole_study_senders = frozenset(
            ae.strip() for ae in self.settings.completion.whole_study_senders)

    def on_requested(self, event: Any) -> None:
        """EVT_REQUESTED: reject callers that the allow-list or the called AE title refuse."""
        assoc = event.assoc
        primitive = assoc.requestor.primitive
        calling = str(primitive.calling_ae_title).strip()
        called = str(primitive.called_ae_title).strip()
        host = str(assoc.requestor.address)
        reason = check_association(
            called_ae_title=called,
            calling_ae_title=calling,
            peer_host=host,
            own_ae_title=self.settings.node.ae_title,
            require_called_ae_title=self.settings.scp.require_called_ae_title,
            allowed=self.settings.scp.allowed_callers,
        )
        if reason is not None:  # one line per address and reason a minute, not one per attempt
            PEERS.warning(
                host, f"rejected {reason.name}",
                "association rejected: calling AE %r from %s, called AE %r: %s",
                calling, host, called, reason.name.lower().replace("_", " "),
            )
            assoc.acse.send_reject(REJECTED_PERMANENT, SOURCE_SERVICE_USER, int(reason))
            assoc.kill()  # waits until the DUL has sent the A-ASSOCIATE-RJ, as pynetdicom does
            exchange.rejected(self, calling=calling, called=called, host=host,
                              reason=reason.name.lower().replace("_", " "))
            metrics.association(metrics.Association.REJECTED)

    def on_association(self, event: Any) -> None:
        """EVT_ACCEPTED, EVT_REJECTED (pynetdicom's own refusals) and EVT_ABORTED: counted."""
        metrics.association(metrics.Association(event.event.name[4:].lower()))

    def on_store(self, event: Any) -> int:
        """EVT_C_STORE (a C-STORE that :mod:`node.scp._inbound` left to pynetdicom)."""
        req = event.request
        return self.store(Received(
            path=Path(event.dataset_path),
            sop_class_uid=str(req.AffectedSOPClassUID or ""),
            sop_instance_uid=str(req.AffectedSOPInstanceUID or ""),
            transfer_syntax=str(event.context.transfer_syntax),
            calling=str(event.assoc.requestor.ae_title).strip(),
            peer=str(event.assoc.requestor.address),
        ))

    def store(self, rcv: Received) -> int:
        """File one received data set; return a DIMSE status, success only once durable."""
        try:
            return self._store(rcv)
        except Exception as exc:
            log.exception("C-STORE from %s failed unexpectedly (%s)", rcv.calling,
                          type(exc).__name__)
            self._quarantine(rcv, f"internal error ({type(exc).__name__})")
            metrics.instance_rejected(metrics.Rejection.INTERNAL_ERROR)
            return int(Status.PROCESSING_FAILURE)

    def _store(self, rcv: Received) -> int:
        path, calling = rcv.path, rcv.calling
        try:
            self.spool.check_free_space()
        except OutOfResources as exc:
            log.error("C-STORE from %s refused: %s", calling, exc)
            metrics.instance_rejected(metrics.Rejection.DISK_FULL)
            return int(Status.OUT_OF_RESOURCES)
        # Flush the data to disk while the header is read (fsync releases the GIL); the file is
        # placed, and the row committed, only once it is synced.
        synced = self._io.submit(self.spool.settle, path)  # fsync, or encrypt and sync
        try:
            ident = identify(path, rcv.sop_class_uid, rcv.sop_instance_uid, rcv.transfer_syntax)
        except Unidentifiable as exc:
            synced.result()
            log.warning("C-STORE from %s quarantined: %s", calling, exc)
            self._quarantine(rcv, str(exc))
            metrics.instance_rejected(
                _REJECTION.get(exc.status, metrics.Rejection.CANNOT_UNDERSTAND))
            return int(exc.status)
        relative = self.spool.relative_path(ident.study_instance_uid, ident.sop_instance_uid)
        instance = ReceivedInstance(
            sop_instance_uid=ident.sop_instance_uid,
            sop_class_uid=ident.sop_class_uid,
            study_instance_uid=ident.study_instance_uid,
            series_instance_uid=ident.series_instance_uid,
            transfer_syntax_uid=rcv.transfer_syntax,
            modality=ident.modality,
            matched_rules=matching_rules(
                self.settings.completion.required_series, ident.modality, ident.series_description
            ),
            size_bytes=path.stat().st_size,
            calling_ae_title=calling,
        )
        try:
            # synced before the ledger's transaction: on SQLite its write lock is the node's
            # one lock, and associations that waited there for each other's fsyncs took turns
            synced.result()
            outcome = self.ledger.record_instance(
                instance, relative, lambda: self.spool.place(path, relative))
        except (LedgerUnavailable, OSError) as exc:
            log.error("C-STORE from %s not stored: %s", calling, exc)
            metrics.instance_rejected(metrics.Rejection.NOT_RECORDED)
            return int(Status.OUT_OF_RESOURCES)
        if outcome is StoreOutcome.REOPENED:
            log.info("a completed study received a new instance and was re-opened")
        if rcv.on_stored is not None:
            rcv.on_stored(ident.study_instance_uid, ident.sop_class_uid)
        metrics.instance_received()
        return int(Status.SUCCESS)

    def released(self, calling: str, study_uids: Collection[str]) -> None:
        """The peer released its association (A-RELEASE) after filing instances of
        ``study_uids``. From a whole-study sender (``completion.whole_study_senders``) those
        studies are marked in the ledger (committed here), then the completion sweep is rung:
        they complete now. An abort or a dropped connection never comes here: the quiet period
        decides; so it does when the mark cannot be written."""
        if not study_uids or calling.strip() not in self._whole_study_senders:
            return
        try:
            marked = self.ledger.mark_released(study_uids)
        except LedgerUnavailable as exc:
            log.error("release of an association from %s not noted, its studies wait their "
                      "quiet period: %s", calling, exc)
            return
        if marked and self.bell is not None:
            self.bell.ring()

    def _quarantine(self, rcv: Received, reason: str) -> None:
        if not rcv.path.exists():
            return
        size = rcv.path.stat().st_size
        name = self.spool.quarantine(rcv.path)
        try:
            self.ledger.record_quarantine(
                reason=reason,
                path=name,
                size_bytes=size,
                sop_class_uid=_uid_or_none(rcv.sop_class_uid),
                sop_instance_uid=_uid_or_none(rcv.sop_instance_uid),
                calling_ae_title=rcv.calling,
                peer_address=rcv.peer,
            )
        except LedgerUnavailable as exc:
            log.error("quarantined file %s could not be recorded in the ledger: %s", name, exc)


def _uid_or_none(value: Any) -> str | None:
    text = str(value or "").strip()
    return text[:64] if text else None
