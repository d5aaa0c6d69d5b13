"""Reading a stored instance for de-identification and writing its de-identified copy.

De-identification changes a few dozen of an instance's elements and leaves the rest as read:
pydicom keeps those as raw elements (their bytes as in the file). ``save_as`` still encodes each
element through its general writer, about 10 µs apiece, which made writing the copy the largest
part of de-identifying a CT slice. :func:`write_instance` writes a raw element's bytes behind a
header it packs itself (the same 8 or 12 bytes pydicom writes) and hands every other element to
pydicom's own ``write_data_element``; the File Meta Information the same way, with its group
length, where pydicom's ``write_file_meta_info`` would add nothing to it (else that function
writes it). The bytes are exactly those of ``save_as(enforce_file_format=True)``
(tests/pipeline/deid/test_golden.py pins them).

Only a little endian, not deflated data set, written in the encoding and character set it was
read in, takes this way (what the node receives and writes, native or compressed); anything else
is written by ``save_as`` itself.
"""

from __future__ import annotations

import copy
import struct
from collections.abc import Mapping, Sequence
from pathlib import Path

import pydicom
from pydicom.charset import convert_encodings, default_encoding
from pydicom.dataelem import DataElement, RawDataElement
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_data_element, write_file_meta_info
from pydicom.tag import BaseTag
from pydicom.uid import UID

from node.core import at_rest

_UNDEFINED = 0xFFFFFFFF
#: explicit VRs with a 2-byte reserved field and a 4-byte length (PS3.5 7.1.2)
_LONG_VRS = frozenset({"OB", "OD", "OF", "OL", "OV", "OW", "SQ", "SV", "UC", "UN", "UR", "UT",
                       "UV"})
_GROUP_LENGTH = 0x00020000
#: what validate_file_meta(enforce_standard=True) adds when missing or requires
_META_REQUIRED = ("FileMetaInformationVersion", "MediaStorageSOPClassUID",
                  "MediaStorageSOPInstanceUID", "TransferSyntaxUID", "ImplementationClassUID")
#: (File Meta keyword, data set keyword): dcmwrite makes the first follow the second
_MEDIA_STORAGE = (("MediaStorageSOPClassUID", "SOPClassUID"),
                  ("MediaStorageSOPInstanceUID", "SOPInstanceUID"))
_IMPLICIT = struct.Struct("<HHI")
_EXPLICIT_SHORT = struct.Struct("<HH2sH")
_EXPLICIT_LONG = struct.Struct("<HH2sHI")


def read_instance(path: Path) -> pydicom.Dataset:
    """One stored instance, read for de-identification (encrypted or not)."""
    return at_rest.dcmread(path)


def write_instance(ds: pydicom.Dataset, path: Path) -> None:
    """One de-identified instance as a DICOM file (encrypted when storage is)."""
    data = encode(ds)
    if data is None:
        at_rest.save_dataset(ds, path)
    else:
        at_rest.write_bytes(path, data)


def encode(ds: Dataset) -> bytes | None:
    """The file ``ds.save_as(..., enforce_file_format=True)`` writes, or None where this
    module leaves it to ``save_as`` (see the module docstring)."""
    meta: Dataset | None = getattr(ds, "file_meta", None)
    if meta is None:
        return None
    syntax = meta.get("TransferSyntaxUID")
    if not (isinstance(syntax, UID) and syntax.is_transfer_syntax and not syntax.is_private
            and syntax.is_little_endian and not syntax.is_deflated):
        return None  # none, private, big endian or deflated
    implicit = syntax.is_implicit_VR
    charset = ds.get("SpecificCharacterSet")
    if ds.original_encoding != (implicit, True) or ds.original_character_set != (
            convert_encodings(charset) if charset else default_encoding):
        return None  # a new encoding or character set: save_as converts every element
    elements = dict(ds.items())
    if any(tag >> 16 in (0, 2) for tag in elements):
        return None  # save_as refuses these; let it say so
    out = DicomBytesIO()
    out.is_little_endian, out.is_implicit_VR = True, implicit
    _file_header(out, ds, meta)
    # retired group lengths: save_as leaves them out (PS3.5 7.2)
    tags = [tag for tag in sorted(elements) if tag & 0xFFFF or tag >> 16 <= 6]
    _write_elements(out, ds, elements, tags, charset or default_encoding)
    return out.getvalue()


def _write_elements(out: DicomBytesIO, ds: Dataset,
                    elements: Mapping[BaseTag, DataElement | RawDataElement],
                    tags: Sequence[BaseTag], encodings: str | list[str]) -> None:
    """``tags`` of ``ds`` in that order: a raw element behind a header packed here, any other
    by pydicom's write_data_element."""
    implicit = out.is_implicit_VR
    for tag in tags:
        elem = elements[tag]
        if (isinstance(elem, RawDataElement) and elem.value is not None
                and elem.length != _UNDEFINED):
            out.write(_raw_header(elem, len(elem.value), implicit))
            out.write(elem.value)
        else:  # changed, undefined length, or still on disk (get_item reads it)
            write_data_element(out, ds.get_item(tag), encodings)


def _file_header(out: DicomBytesIO, ds: Dataset, meta: Dataset) -> None:
    """Preamble, 'DICM' and File Meta Information as ``dcmwrite(enforce_file_format=True)``
    writes them for ``ds``."""
    preamble = getattr(ds, "preamble", None) or b"\x00" * 128
    if len(preamble) != 128:
        raise ValueError("the preamble must be 128 bytes long")
    out.write(preamble)
    out.write(b"DICM")
    if not _meta_as_is(out, ds, meta):
        _meta_by_pydicom(out, ds, meta)


def _meta_as_is(out: DicomBytesIO, ds: Dataset, meta: Dataset) -> bool:
    """The File Meta Information where ``write_file_meta_info`` would add or change nothing
    but its group length: every element it requires present, with a value, the Media
    Storage UIDs those of the data set. Returns False (nothing written) otherwise."""
    for keyword in _META_REQUIRED:
        if keyword not in meta or meta[keyword].is_empty:
            return False
    if "ImplementationVersionName" not in meta:
        return False
    for meta_keyword, keyword in _MEDIA_STORAGE:
        value = ds.get(keyword)
        if value and value != meta.get(meta_keyword):
            return False
    elements = dict(meta.items())
    if any(tag >> 16 != 0x0002 for tag in elements):
        return False  # write_file_meta_info refuses these; let it say so
    body = DicomBytesIO()
    body.is_little_endian, body.is_implicit_VR = True, False
    _write_elements(body, meta, elements, sorted(t for t in elements if t != _GROUP_LENGTH),
                    default_encoding)
    out.write(_EXPLICIT_SHORT.pack(0x0002, 0x0000, b"UL", 4))
    out.write(struct.pack("<I", body.tell()))
    out.write(body.getvalue())
    return True


def _meta_by_pydicom(out: DicomBytesIO, ds: Dataset, meta: Dataset) -> None:
    """``write_file_meta_info`` on a copy of ``meta`` (it adds what the standard requires and
    the group length; dcmwrite too leaves ``ds.file_meta`` as it was), its Media Storage
    UIDs brought in line with the data set first, as dcmwrite does."""
    copied = FileMetaDataset({tag: copy.copy(elem) for tag, elem in meta.items()})
    for meta_keyword, keyword in _MEDIA_STORAGE:
        value = ds.get(keyword)
        if copied.get(meta_keyword) is None or (value and value != copied.get(meta_keyword)):
            setattr(copied, meta_keyword, value)
    write_file_meta_info(out, copied, enforce_standard=True)


def _raw_header(elem: RawDataElement, length: int, implicit: bool) -> bytes:
    group, element = elem.tag >> 16, elem.tag & 0xFFFF
    if implicit:
        return _IMPLICIT.pack(group, element, length)
    vr = str(elem.VR)
    if vr in _LONG_VRS:
        return _EXPLICIT_LONG.pack(group, element, vr.encode(), 0, length)
    return _EXPLICIT_SHORT.pack(group, element, vr.encode(), length)
