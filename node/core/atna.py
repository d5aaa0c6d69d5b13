"""DICOM audit messages (PS3.15 Annex A.5, the IHE ATNA format), built as XML: pure functions.

Each builder returns the ``AuditMessage`` document as bytes (UTF-8, no declaration) for one
event: it touches no socket and no database. Child elements are written in the order of the
schema of PS3.15 A.5.1 (RELAX NG; element order counts there), which tests/core/audit_message.rnc
transcribes and the tests validate every message against with jing.

Coded values (PS3.16, DICOM 2024 editions; codeSystemName "DCM" unless said):

* EventID, CID 400 "Audit Event ID": 110102 Begin Transferring DICOM Instances, 110103 DICOM
  Instances Accessed, 110104 DICOM Instances Transferred, 110112 Query, 110113 Security
  Alert, 110114 User Authentication;
* EventTypeCode, CID 401 "Audit Event Type Code": 110122 Login, 110123 Logout, 110126 Node
  Authentication;
* RoleIDCode, CID 402 "Audit Active Participant Role ID Code": 110150 Application, 110152
  Destination Role ID, 110153 Source Role ID;
* ParticipantObjectIDTypeCode, CID 403 "Audit Participant Object ID Type Code": 110180 Study
  Instance UID, 110181 SOP Class UID, 110182 Node ID;
* AuditSourceTypeCode, CID 404 "Audit Source Type Code" (the RFC 3881 5.4 values): 4
  Application Server Process;
* ParticipantObjectTypeCode (RFC 3881 5.5.1, PS3.15 A.5.2.5): 2 System Object;
  ParticipantObjectTypeCodeRole (RFC 3881 5.5.2): 3 Report, 13 Security Resource;
  NetworkAccessPointTypeCode (RFC 3881 5.3.5): 1 machine name, 2 IP address;
  EventOutcomeIndicator (PS3.15 A.5.2.1): 0 success, 4 minor failure, 8 serious failure.

Patient identity is never put into a message: the ledger keeps none to put there. A.5.3.4 asks
DICOM Instances Transferred for a Patient participant object; it is left out for that reason
(the schema allows it). The study is named by its Study Instance UID: the audit repository is
the hospital's own record of who touched which study, the one place outside the ledger allowed
to hold it (it never appears in the node's log lines, its API or its CSV export).
"""

from __future__ import annotations

import base64
import ipaddress
import xml.etree.ElementTree as ET
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import IntEnum


@dataclass(frozen=True)
class Code:
    """A coded value: csd-code, codeSystemName and originalText (the schema requires all three)."""

    code: str
    meaning: str
    scheme: str = "DCM"


# PS3.16 CID 400 Audit Event ID
BEGIN_TRANSFERRING = Code("110102", "Begin Transferring DICOM Instances")
INSTANCES_ACCESSED = Code("110103", "DICOM Instances Accessed")
INSTANCES_TRANSFERRED = Code("110104", "DICOM Instances Transferred")
QUERY = Code("110112", "Query")
SECURITY_ALERT = Code("110113", "Security Alert")
USER_AUTHENTICATION = Code("110114", "User Authentication")
# PS3.16 CID 401 Audit Event Type Code
LOGIN = Code("110122", "Login")
LOGOUT = Code("110123", "Logout")
NODE_AUTHENTICATION = Code("110126", "Node Authentication")
# PS3.16 CID 402 Audit Active Participant Role ID Code
APPLICATION = Code("110150", "Application")
DESTINATION = Code("110152", "Destination Role ID")
SOURCE = Code("110153", "Source Role ID")
# PS3.16 CID 403 Audit Participant Object ID Type Code
STUDY_INSTANCE_UID = Code("110180", "Study Instance UID")
SOP_CLASS_UID = Code("110181", "SOP Class UID")
NODE_ID = Code("110182", "Node ID")
# PS3.16 CID 404 Audit Source Type Code (RFC 3881 5.4)
APPLICATION_SERVER_PROCESS = Code("4", "Application Server Process")


class Outcome(IntEnum):
    """EventOutcomeIndicator (PS3.15 A.5.2.1)."""

    SUCCESS = 0
    MINOR_FAILURE = 4
    SERIOUS_FAILURE = 8


class Action:
    """EventActionCode (RFC 3881 5.1.2)."""

    CREATE, READ, UPDATE, DELETE, EXECUTE = "C", "R", "U", "D", "E"


@dataclass(frozen=True)
class Source:
    """Who reports: AuditSourceIdentification (AuditSourceID: the node's AE title)."""

    source_id: str
    site_id: str = ""


@dataclass(frozen=True)
class Participant:
    """An ActiveParticipant: a user, the node or a peer application."""

    user_id: str
    requestor: bool
    address: str = ""
    role: Code | None = None
    #: an AE title goes in AlternativeUserID, as PS3.15 A.5.2.2 asks for DICOM applications
    ae_title: str = ""


@dataclass(frozen=True)
class Study:
    """A study as a participant object: its UID and, per SOP class, how many instances
    (an empty class UID: not known, only the count)."""

    uid: str
    sop_classes: Sequence[tuple[str, int]] = ()


def _code(parent: ET.Element, tag: str, code: Code) -> ET.Element:
    return ET.SubElement(parent, tag, {"csd-code": code.code, "codeSystemName": code.scheme,
                                       "originalText": code.meaning})


def _when(at: datetime) -> str:
    aware = at if at.tzinfo else at.replace(tzinfo=UTC)
    return aware.astimezone(UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")


def _message(event: Code, action: str, outcome: Outcome, at: datetime,
             types: Sequence[Code], source: Source, participants: Sequence[Participant],
             description: str = "") -> ET.Element:
    root = ET.Element("AuditMessage")
    ident = ET.SubElement(root, "EventIdentification", {
        "EventActionCode": action, "EventDateTime": _when(at),
        "EventOutcomeIndicator": str(int(outcome))})
    _code(ident, "EventID", event)
    for code in types:
        _code(ident, "EventTypeCode", code)
    if description:
        ET.SubElement(ident, "EventOutcomeDescription").text = description
    for p in participants:
        attrs = {"UserID": p.user_id or "-", "UserIsRequestor": "true" if p.requestor else "false"}
        if p.ae_title:
            attrs["AlternativeUserID"] = f"AETITLES={p.ae_title}"
        if p.address:
            attrs["NetworkAccessPointID"] = p.address
            attrs["NetworkAccessPointTypeCode"] = "2" if _is_ip(p.address) else "1"
        elem = ET.SubElement(root, "ActiveParticipant", attrs)
        if p.role is not None:
            _code(elem, "RoleIDCode", p.role)
    src = ET.SubElement(root, "AuditSourceIdentification", {"AuditSourceID": source.source_id})
    if source.site_id:
        src.set("AuditEnterpriseSiteID", source.site_id)
    _code(src, "AuditSourceTypeCode", APPLICATION_SERVER_PROCESS)
    return root


def _is_ip(address: str) -> bool:
    try:
        ipaddress.ip_address(address)
    except ValueError:
        return False
    return True


def _study(root: ET.Element, study: Study) -> None:
    """A.5.3.4's "Studies being transferred": System Object (2), role Report (3), its UID, and
    one SOPClass element per class with its number of instances."""
    obj = ET.SubElement(root, "ParticipantObjectIdentification", {
        "ParticipantObjectID": study.uid, "ParticipantObjectTypeCode": "2",
        "ParticipantObjectTypeCodeRole": "3"})
    _code(obj, "ParticipantObjectIDTypeCode", STUDY_INSTANCE_UID)
    for sop_class, count in study.sop_classes:
        attrs = {"NumberOfInstances": str(count)}
        if sop_class:
            attrs["UID"] = sop_class
        ET.SubElement(obj, "SOPClass", attrs)


def _bytes(root: ET.Element) -> bytes:
    data: bytes = ET.tostring(root, encoding="utf-8", xml_declaration=False)
    return data


def user_authentication(*, at: datetime, source: Source, user: str, address: str,
                        logout: bool, success: bool, node: str) -> bytes:
    """110114 User Authentication (A.5.3.13): a login, a failed login or a logout; the user
    is the requestor, the node the application that authenticated them."""
    return _bytes(_message(
        USER_AUTHENTICATION, Action.EXECUTE,
        Outcome.SUCCESS if success else Outcome.MINOR_FAILURE, at,
        [LOGOUT if logout else LOGIN], source,
        [Participant(user, True, address),
         Participant(node, False, role=APPLICATION)]))


def instances_transferred(*, at: datetime, source: Source, sender: Participant,
                          receiver: Participant, study: Study | None, received: bool,
                          success: bool = True, description: str = "") -> bytes:
    """110104 DICOM Instances Transferred (A.5.3.4): C when the node received (it created its
    copies), R when it sent (the receiver read the node's objects)."""
    root = _message(
        INSTANCES_TRANSFERRED, Action.CREATE if received else Action.READ,
        Outcome.SUCCESS if success else Outcome.MINOR_FAILURE, at, [], source,
        [_as(sender, SOURCE), _as(receiver, DESTINATION)], description)
    if study is not None:
        _study(root, study)
    return _bytes(root)


def instances_accessed(*, at: datetime, source: Source, user: Participant, node: Participant,
                       study: Study | None, action: str, success: bool = True,
                       description: str = "") -> bytes:
    """110103 DICOM Instances Accessed (A.5.3.3): a user read (R), changed (U: a retry, a
    force-complete, a quarantined object released) or deleted (D) the node's objects of a
    study, through the API, the console or the command line; the user is the requestor, the
    node the application. ``description`` says what was done, in the node's words."""
    root = _message(INSTANCES_ACCESSED, action,
                    Outcome.SUCCESS if success else Outcome.MINOR_FAILURE, at, [], source,
                    [user, _as(node, APPLICATION)], description)
    if study is not None:
        _study(root, study)
    return _bytes(root)


def begin_transferring(*, at: datetime, source: Source, sender: Participant,
                       receiver: Participant, study: Study | None) -> bytes:
    """110102 Begin Transferring DICOM Instances (A.5.3.2): a transfer started."""
    root = _message(BEGIN_TRANSFERRING, Action.EXECUTE, Outcome.SUCCESS, at, [], source,
                    [_as(sender, SOURCE), _as(receiver, DESTINATION)])
    if study is not None:
        _study(root, study)
    return _bytes(root)


def query(*, at: datetime, source: Source, requestor: Participant, responder: Participant,
          sop_class: str, query_dataset: bytes, transfer_syntax: str,
          success: bool = True) -> bytes:
    """110112 Query (A.5.3.10): the SOP class queried, the request's identifier (base64) and
    its transfer syntax as a detail."""
    root = _message(QUERY, Action.EXECUTE,
                    Outcome.SUCCESS if success else Outcome.MINOR_FAILURE, at, [], source,
                    [_as(requestor, SOURCE), _as(responder, DESTINATION)])
    obj = ET.SubElement(root, "ParticipantObjectIdentification", {
        "ParticipantObjectID": sop_class, "ParticipantObjectTypeCode": "2",
        "ParticipantObjectTypeCodeRole": "3"})
    _code(obj, "ParticipantObjectIDTypeCode", SOP_CLASS_UID)
    ET.SubElement(obj, "ParticipantObjectQuery").text = base64.b64encode(query_dataset).decode()
    ET.SubElement(obj, "ParticipantObjectDetail", {
        "type": "TransferSyntax", "value": base64.b64encode(transfer_syntax.encode()).decode()})
    return _bytes(root)


def security_alert(*, at: datetime, source: Source, reporter: Participant, peer: Participant,
                   subject: str, alert: str, event_type: Code = NODE_AUTHENTICATION) -> bytes:
    """110113 Security Alert (A.5.3.11), e.g. a peer refused by the allow-list: the node that
    reports it and the peer that caused it; the peer's address is the alert subject (Node ID,
    role Security Resource), with the node's words as its Alert Description."""
    root = _message(SECURITY_ALERT, Action.EXECUTE, Outcome.MINOR_FAILURE, at, [event_type],
                    source, [reporter, peer], alert)
    obj = ET.SubElement(root, "ParticipantObjectIdentification", {
        "ParticipantObjectID": subject or "-", "ParticipantObjectTypeCode": "2",
        "ParticipantObjectTypeCodeRole": "13"})
    _code(obj, "ParticipantObjectIDTypeCode", NODE_ID)
    ET.SubElement(obj, "ParticipantObjectDetail", {
        "type": "Alert Description", "value": base64.b64encode(alert.encode()).decode()})
    return _bytes(root)


def _as(p: Participant, role: Code) -> Participant:
    return Participant(p.user_id, p.requestor, p.address, role, p.ae_title)
