"""What an uploaded file is, judged by its content (magic bytes), never by its name.

A name can lie (a text file renamed ``.png``); the first bytes of the formats the node takes
in cannot: DICOM Part 10 has "DICM" after its 128-byte preamble (PS3.10 section 7.1), a zip
starts with a local file header "PK\\x03\\x04" (APPNOTE 4.3.7), NIfTI-1 holds sizeof_hdr = 348
in its first four bytes and "n+1\\0" at offset 344 (nifti1.h), PNG has its 8-byte signature
(RFC 2083 section 3.1), JPEG starts with SOI and a marker (FF D8 FF). A gzip stream
(1F 8B, RFC 1952) is taken only as a compressed NIfTI.
"""

from __future__ import annotations

import struct
from enum import StrEnum


class Kind(StrEnum):
    DICOM = "dicom"
    ZIP = "zip"
    NIFTI = "nifti"
    NIFTI_GZ = "nifti-gz"
    PNG = "png"
    JPEG = "jpeg"
    UNKNOWN = "unknown"


def is_nifti1(head: bytes) -> bool:
    """A NIfTI-1 single-file header: sizeof_hdr 348 (either byte order) and magic n+1."""
    if len(head) < 348:
        return False
    little, big = struct.unpack("<i", head[:4])[0], struct.unpack(">i", head[:4])[0]
    return 348 in (little, big) and head[344:348] == b"n+1\x00"


def kind_of(data: bytes) -> Kind:
    """The file's kind from its first bytes."""
    if len(data) >= 132 and data[128:132] == b"DICM":
        return Kind.DICOM
    if data.startswith(b"PK\x03\x04"):
        return Kind.ZIP
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        return Kind.PNG
    if data.startswith(b"\xff\xd8\xff"):
        return Kind.JPEG
    if data.startswith(b"\x1f\x8b"):
        return Kind.NIFTI_GZ
    if is_nifti1(data):
        return Kind.NIFTI
    return Kind.UNKNOWN
