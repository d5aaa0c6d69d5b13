"""Reading a Part 10 file's File Meta Information by hand (PS3.10 7.1).

The sender sends a file as it is on disk (see ``node.scp.sender``). Of the file it needs only
what the meta group says: the SOP Class, SOP Instance and Transfer Syntax UIDs, and where the data
set starts. :func:`read_file_meta` reads just that, with ``struct``; the data set itself is never
parsed. A file without usable meta information raises :class:`NotPart10`, and the sender then
tries pydicom, which reads some such files.
"""

from __future__ import annotations

import struct
from pathlib import Path
from typing import NamedTuple


class NotPart10(ValueError):
    """The file has no usable File Meta Information (PS3.10 7.1)."""


class FileMeta(NamedTuple):
    """What :func:`read_file_meta` found."""

    sop_class: str
    sop_instance: str
    tsyntax: str
    #: where the data set (after the File Meta Information) starts in the file
    offset: int


# Explicit VR elements with a 2-byte reserved field and a 4-byte length (PS3.5 7.1.2).
_LONG_VRS = frozenset(
    {b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"SV", b"UC", b"UN", b"UR", b"UT", b"UV"}
)
_META_UIDS = {0x0002: "sop_class", 0x0003: "sop_instance", 0x0010: "tsyntax"}
_META_MAX = 1 << 16


def read_file_meta(path: Path) -> FileMeta:
    """Read a Part 10 file's File Meta Information: its three UIDs and where the data set starts.

    The meta group follows a 128-byte preamble and ``DICM``, in Explicit VR Little Endian, and
    starts with its group length (PS3.10 7.1). Raises NotPart10 if it is missing, malformed or
    lacks one of the UIDs (pydicom may still read such a file); OSError if unreadable.
    """
    with open(path, "rb") as f:
        head = f.read(144)
        if len(head) < 144 or head[128:132] != b"DICM" or head[132:138] != b"\x02\x00\x00\x00UL":
            raise NotPart10("no DICM prefix or no File Meta Information Group Length")
        (group_length,) = struct.unpack_from("<I", head, 140)
        if group_length > _META_MAX:
            raise NotPart10("File Meta Information Group Length too large")
        meta = f.read(group_length + 2)
    if len(meta) < group_length or meta[group_length:group_length + 2] == b"\x02\x00":
        raise NotPart10("File Meta Information Group Length does not match the group")
    found = _meta_uids(memoryview(meta)[:group_length])
    missing = [name for name in _META_UIDS.values() if not found.get(name)]
    if missing:
        raise NotPart10(f"File Meta Information lacks {', '.join(missing)}")
    return FileMeta(found["sop_class"], found["sop_instance"], found["tsyntax"],
                    offset=144 + group_length)


def _meta_uids(meta: memoryview) -> dict[str, str]:
    pos, found = 0, {}
    while pos < len(meta):
        if pos + 8 > len(meta):
            raise NotPart10("File Meta Information ends inside an element")
        group, element = struct.unpack_from("<HH", meta, pos)
        if group != 0x0002:
            raise NotPart10("File Meta Information Group Length does not match the group")
        if bytes(meta[pos + 4:pos + 6]) in _LONG_VRS:
            (length,) = struct.unpack_from("<I", meta, pos + 8)
            pos += 12
        else:
            (length,) = struct.unpack_from("<H", meta, pos + 6)
            pos += 8
        if pos + length > len(meta):
            raise NotPart10("File Meta Information ends inside an element")
        if element in _META_UIDS:
            value = bytes(meta[pos:pos + length]).rstrip(b"\x00 ").decode("ascii", "replace")
            found[_META_UIDS[element]] = value
        pos += length
    return found
