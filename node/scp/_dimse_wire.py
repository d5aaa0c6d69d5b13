"""Byte-level DICOM for C-STORE: PDU length caps, command sets, C-STORE responses, File Meta.

The receive path (``node.scp._inbound``) and the sender (``node.scp._store_wire``) both pack and
parse command sets here.

Pure functions over bytes (PS3.8 9.3 PDU headers and lengths; PS3.7 Annex E command sets,
always Implicit VR Little Endian; PS3.8 9.3.5 P-DATA-TF PDUs; PS3.10 7.1 File Meta Information,
Explicit VR Little Endian). They replace,
for the one message the node receives in bulk, pynetdicom's encode/decode through pydicom
``Dataset`` objects (about 0.3 ms for the File Meta and 0.6 ms for a response each time).
"""

from __future__ import annotations

import re
import struct

from pynetdicom import PYNETDICOM_IMPLEMENTATION_UID, PYNETDICOM_IMPLEMENTATION_VERSION

C_STORE_RQ = 0x0001
C_STORE_RSP = 0x8001
C_ECHO_RQ = 0x0030
NO_DATA_SET = 0x0101

# (0000,xxxx) elements read from a request
AFFECTED_SOP_CLASS = 0x0002
COMMAND_FIELD = 0x0100
MESSAGE_ID = 0x0110
DATA_SET_TYPE = 0x0800
AFFECTED_SOP_INSTANCE = 0x1000
PRIORITY = 0x0700
# (0000,xxxx) elements of a response
MESSAGE_ID_RESPONDED_TO = 0x0120
STATUS = 0x0900
DATA_SET_FOLLOWS = 0x0001

_ELEMENT = struct.Struct("<HHL")
# digits and dots, as PS3.5 9.1 allows them (components with leading zeros, seen in the wild, too)
_REQUEST_UID = re.compile(rb"[0-9]+(\.[0-9]+)*")

P_DATA_TF = 0x04
PDU_NAMES = {
    0x01: "A-ASSOCIATE-RQ", 0x02: "A-ASSOCIATE-AC", 0x03: "A-ASSOCIATE-RJ", 0x04: "P-DATA-TF",
    0x05: "A-RELEASE-RQ", 0x06: "A-RELEASE-RP", 0x07: "A-ABORT",
}
#: A-ASSOCIATE-RQ/AC: presentation contexts, user information; a few KB in practice.
ASSOCIATION_PDU_MAX = 64 * 2**10
#: A-ASSOCIATE-RJ, A-RELEASE-RQ/RP, A-ABORT have a fixed length of 4 (PS3.8 9.3.4, 9.3.6-9.3.8).
FIXED_PDU_LENGTH = 4
#: P-DATA-TF when the node announces no maximum (scp.max_pdu_bytes = 0).
UNLIMITED_P_DATA_MAX = 64 * 2**20


class PduRefused(ValueError):
    """A PDU the node does not read: unknown type, or longer than its type allows."""


def pdu_limit(pdu_type: int, max_pdu: int) -> int:
    """The longest PDU (its header's length field) the node reads of ``pdu_type``.

    ``max_pdu`` is the node's announced Maximum Length Received (0: none), which PS3.8 9.3.5
    makes the limit of a P-DATA-TF PDU's length.
    """
    if pdu_type == P_DATA_TF:
        return max_pdu or UNLIMITED_P_DATA_MAX
    if pdu_type in (0x01, 0x02):
        return ASSOCIATION_PDU_MAX
    return FIXED_PDU_LENGTH


def check_pdu_header(head: bytes | bytearray, max_pdu: int) -> tuple[int, int]:
    """(type, length) of a 6-byte PDU header; :class:`PduRefused` if the node won't read it."""
    pdu_type, length = head[0], int.from_bytes(head[2:6], "big")
    if pdu_type not in PDU_NAMES:
        raise PduRefused(f"unknown PDU type 0x{pdu_type:02X}")
    limit = pdu_limit(pdu_type, max_pdu)
    if length > limit:
        raise PduRefused(f"{PDU_NAMES[pdu_type]} PDU of {length} bytes, more than the {limit} "
                         "its type allows here")
    return pdu_type, length


class BadCommand(ValueError):
    """A command set that is not well-formed Implicit VR Little Endian group 0000."""


def parse_command(data: bytes | bytearray | memoryview) -> dict[int, bytes]:
    """Return the command set's elements as {element number: raw value}."""
    elements: dict[int, bytes] = {}
    offset, end = 0, len(data)
    while offset < end:
        if offset + 8 > end:
            raise BadCommand("truncated element header")
        group, element, length = _ELEMENT.unpack_from(data, offset)
        offset += 8
        if group != 0 or offset + length > end:
            raise BadCommand("element outside group 0000 or past the end")
        elements[element] = bytes(data[offset : offset + length])
        offset += length
    return elements


def us_value(elements: dict[int, bytes], element: int) -> int | None:
    value = elements.get(element)
    return int.from_bytes(value, "little") if value is not None and len(value) == 2 else None


def ui_value(elements: dict[int, bytes], element: int) -> str:
    return elements.get(element, b"").rstrip(b"\x00 ").decode("ascii", "replace")


def request_uid(elements: dict[int, bytes], element: int) -> str | None:
    """A UID element of a request, or None when it is missing, empty or not a UID."""
    value = elements.get(element, b"").rstrip(b"\x00 ")
    if not 0 < len(value) <= 64 or not _REQUEST_UID.fullmatch(value):
        return None
    return value.decode("ascii")


def uid_bytes(value: str) -> bytes:
    """A UID value, padded with NUL to even length."""
    raw = value.encode("ascii")
    return raw + b"\x00" if len(raw) % 2 else raw


def element(tag_element: int, value: bytes) -> bytes:
    """One group-0000 element, Implicit VR Little Endian."""
    return _ELEMENT.pack(0, tag_element, len(value)) + value


def us(value: int) -> bytes:
    return struct.pack("<H", value)


def command_set(*elements: bytes) -> bytes:
    """The elements behind their Command Group Length (0000,0000)."""
    body = b"".join(elements)
    return element(0x0000, struct.pack("<L", len(body))) + body


def store_response_pdu(
    context_id: int, message_id: int, sop_class: str, sop_instance: str, status: int
) -> bytes:
    """A whole P-DATA-TF PDU carrying one C-STORE-RSP command set (no data set)."""
    command = command_set(
        element(AFFECTED_SOP_CLASS, uid_bytes(sop_class)),
        element(COMMAND_FIELD, us(C_STORE_RSP)),
        element(MESSAGE_ID_RESPONDED_TO, us(message_id)),
        element(DATA_SET_TYPE, us(NO_DATA_SET)),
        element(STATUS, us(status)),
        element(AFFECTED_SOP_INSTANCE, uid_bytes(sop_instance)),
    )
    pdv = struct.pack(">LBB", len(command) + 2, context_id, 0x03) + command  # last command part
    return struct.pack(">BBL", 0x04, 0, len(pdv)) + pdv


def _explicit(element: int, vr: bytes, value: bytes) -> bytes:
    if vr == b"OB":
        return struct.pack("<HH2sHL", 2, element, vr, 0, len(value)) + value
    return struct.pack("<HH2sH", 2, element, vr, len(value)) + value


def file_meta(sop_class: str, sop_instance: str, transfer_syntax: str) -> bytes:
    """Preamble, "DICM" and the File Meta group pynetdicom writes for a received data set."""
    version = PYNETDICOM_IMPLEMENTATION_VERSION.encode("ascii")
    group = b"".join((
        _explicit(0x0001, b"OB", b"\x00\x01"),
        _explicit(0x0002, b"UI", uid_bytes(sop_class)),
        _explicit(0x0003, b"UI", uid_bytes(sop_instance)),
        _explicit(0x0010, b"UI", uid_bytes(transfer_syntax)),
        _explicit(0x0012, b"UI", uid_bytes(str(PYNETDICOM_IMPLEMENTATION_UID))),
        _explicit(0x0013, b"SH", version + b" " * (len(version) % 2)),
    ))
    length = _explicit(0x0000, b"UL", struct.pack("<L", len(group)))
    return b"\x00" * 128 + b"DICM" + length + group


# ------------------------------------------------------------------- A-ASSOCIATE-RQ, checked

_UID_ITEMS = {0x10: "application context", 0x30: "abstract syntax", 0x40: "transfer syntax",
              0x52: "implementation class UID"}
_PREFIXED_UID_ITEMS = {0x54: "role selection", 0x56: "SOP class extended negotiation",
                       0x57: "SOP class common extended negotiation"}
_AE_TITLE = re.compile(rb"[\x20-\x5b\x5d-\x7e]*")  # PS3.5 6.2: default character set, no "\"
_ITEM = struct.Struct(">BBH")


def association_rq_problem(body: bytes | bytearray) -> str | None:
    """What makes an A-ASSOCIATE-RQ body (PS3.8 9.3.2) unfit to negotiate, or None.

    Checked before pynetdicom decodes it: its decoder and pydicom log a warning (and a
    traceback, for non-ASCII bytes) for every malformed UID and AE title, so a peer sending
    mutated requests filled the log. The items' structure, the AE titles and every UID the
    request carries must be well-formed; the rest is left to pynetdicom.
    """
    if len(body) < 68:
        return "shorter than its fixed fields"
    for name, field in (("called", body[4:20]), ("calling", body[20:36])):
        if not _AE_TITLE.fullmatch(field) or not field.strip():
            return f"the {name} AE title is empty or not in the default character set"
    try:
        items = _all_items(body)
    except BadCommand as exc:
        return str(exc)
    for item_type, value in items:
        problem = _item_problem(item_type, value)
        if problem:
            return problem
    return None


def _all_items(body: bytes | bytearray) -> list[tuple[int, bytes | bytearray]]:
    """The request's items and the sub-items of its presentation contexts and user information."""
    items = _items(body, 68)
    for item_type, value in list(items):
        if item_type == 0x20:
            if len(value) < 4:
                raise BadCommand("a presentation context item is too short")
            items += _items(value, 4)
        elif item_type == 0x50:
            items += _items(value, 0)
    return items


def _items(data: bytes | bytearray, offset: int) -> list[tuple[int, bytes | bytearray]]:
    items = []
    while offset < len(data):
        if offset + 4 > len(data):
            raise BadCommand("an item header is cut off")
        item_type, _, length = _ITEM.unpack_from(data, offset)
        if offset + 4 + length > len(data):
            raise BadCommand(f"item 0x{item_type:02X} runs past the end of its parent")
        items.append((item_type, data[offset + 4 : offset + 4 + length]))
        offset += 4 + length
    return items


def _item_problem(item_type: int, value: bytes | bytearray) -> str | None:
    if item_type in _UID_ITEMS and not _is_uid(value):
        return f"its {_UID_ITEMS[item_type]} is not a UID"
    if item_type in _PREFIXED_UID_ITEMS:
        length = int.from_bytes(value[:2], "big") if len(value) >= 2 else -1
        if not 0 <= length <= len(value) - 2 or not _is_uid(value[2 : 2 + length]):
            return f"the UID of its {_PREFIXED_UID_ITEMS[item_type]} item is not a UID"
    if item_type == 0x55 and not (0 < len(value) <= 16 and _AE_TITLE.fullmatch(value)):
        return "its implementation version name is not 1 to 16 characters of the default set"
    return None


def _is_uid(value: bytes | bytearray) -> bool:
    value = bytes(value).rstrip(b"\x00 ")
    return 0 < len(value) <= 64 and _REQUEST_UID.fullmatch(value) is not None
