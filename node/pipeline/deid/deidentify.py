"""The de-identification stage: ``deidentify(ds, profile, keys) -> DeidResult``.

Pure: no database, no files, no sockets. It modifies and returns the data set it was given and
lists the pseudonyms it created, which the orchestrator stores (encrypted) for
re-identification. Every attribute of PS3.15 Table E.1-1 gets its resolved action, in sequences
at any depth; private attributes are removed unless the Retain Safe Private option keeps them;
UIDs are replaced by keyed pseudonyms (consistently, also inside references); Patient Name,
Patient ID and Accession Number are replaced by keyed pseudonyms. Errors never quote values.
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from pydicom.datadict import dictionary_VR
from pydicom.dataelem import DataElement, RawDataElement, empty_value_for_VR
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence
from pydicom.tag import BaseTag, Tag

from node import __version__
from node.core import patients
from node.core.keys import DeidKeys
from node.core.pseudonyms import Pseudonym
from node.pipeline.deid import iod
from node.pipeline.deid.pixels import clean_pixels
from node.pipeline.deid.profile import (
    BASIC_PROFILE_CODE,
    CLEAN_PIXEL_DATA_CODE,
    Action,
    Profile,
)

PATIENT_NAME, PATIENT_ID, ACCESSION = Tag(0x00100010), Tag(0x00100020), Tag(0x00080050)
ISSUER_OF_PATIENT_ID = Tag(0x00100021)
SOP_CLASS = Tag(0x00080016)
#: plain ints, not Tags: a Tag's own __eq__ makes each set lookup a Python call
_PSEUDONYM_TAGS = frozenset({0x00100010, 0x00100020, 0x00080050})
_DEID_TAGS = frozenset({0x00120062, 0x00120063, 0x00120064, 0x00280303})
_PRIVATE_BIT = 0x00010000  # the lowest bit of the group: set in private (odd) groups
_TEXT_VRS = {"LO", "SH", "ST", "LT", "UT", "UC", "PN", "CS", "AE"}
_NUMBER_VRS = {"FL", "FD", "SL", "SS", "UL", "US", "SV", "UV", "DS", "IS"}
_BINARY_VRS = {"OB", "OW", "OD", "OF", "OL", "OV", "UN"}
_DUMMY_TEXT = "ANONYMIZED"
_DUMMY = {"DA": "19000101", "DT": "19000101000000", "TM": "000000", "AS": "000Y",
          "DS": "0", "IS": "0"}
_LONG_DIGITS = re.compile(r"\d[\d\s./-]{4,}\d")

#: terms shorter than this are not scrubbed from free text (they would hit ordinary words)
_MIN_TERM = 3


@dataclass(frozen=True)
class DeidResult:
    dataset: Dataset
    pseudonyms: tuple[Pseudonym, ...]
    pixels_cleaned: bool


class _Run:
    """State of one de-identification: the pseudonyms made and what counts as PHI text."""

    def __init__(self, ds: Dataset, profile: Profile, keys: DeidKeys) -> None:
        self.profile = profile
        self.keys = keys
        self.pseudonyms: dict[tuple[str, str], Pseudonym] = {}
        patient = patients.patient_text(_text(ds, ISSUER_OF_PATIENT_ID), _text(ds, PATIENT_ID))
        self.patient_key = patient
        self.shift = dt.timedelta(
            days=keys.date_shift_days(patient, profile.settings.max_date_shift_days))
        self._source = ds
        #: Types of the sequences of this SOP Class's IOD (see node.pipeline.deid.iod)
        self.types = iod.sequence_types(_text(ds, SOP_CLASS))
        self._terms: list[str] | None = None

    @property
    def terms(self) -> list[str]:
        """Identifying values to scrub from text the Clean options keep (found on first use)."""
        if self._terms is None:
            self._terms = _phi_terms(self._source)
        return self._terms

    # -- pseudonyms ---------------------------------------------------------------------

    def _remember(self, kind: str, pseudonym: str, original: str) -> str:
        self.pseudonyms.setdefault((kind, pseudonym), Pseudonym(kind, pseudonym, original))
        return pseudonym

    def uid(self, original: str) -> str:
        if not original or self.profile.settings.retain_uids:
            return original
        return self._remember("uid", self.keys.uid(original), original)

    def patient_id(self, original: str) -> str:
        return self._remember("patient_id", patients.patient_pseudonym(self.keys, self.patient_key),
                              original)

    def patient_name(self, original: str) -> str:
        code = self.keys.code("pid", self.patient_key, 13)
        return self._remember("patient_name", f"ANONYMOUS^{code}", original)

    def accession(self, original: str) -> str:
        if not original:
            return original
        return self._remember("accession", patients.accession_pseudonym(self.keys, original),
                              original)

    # -- walking --------------------------------------------------------------------------

    def apply(self, ds: Dataset, path: iod.Path = ()) -> None:
        """Apply the profile to ``ds``, the top level or an item of the sequences in ``path``.

        Walks the raw elements (``Dataset.items()``) with plain-integer tags: an element that
        is removed or kept is never converted, and each tag's action is looked up once per
        profile (Profile.action remembers it).
        """
        action_of = self.profile.action
        creators = False
        for tag, raw in list(ds.items()):
            number = int(tag)
            if number in _DEID_TAGS:
                continue
            if number & _PRIVATE_BIT:  # odd group
                creators = creators or 0x0010 <= (number & 0xFFFF) <= 0x00FF
                self._private(ds, tag)
                continue
            if number >> 16 == 0x0002:  # File Meta group inside a data set: not part of it
                del ds[tag]
                continue
            if number in _PSEUDONYM_TAGS:
                self._pseudonym(ds[tag])
                continue
            action = action_of(number)
            if action is Action.REMOVE:
                del ds[tag]  # its value is never decoded
            elif action is None or action is Action.KEEP:
                if _raw_vr(raw, tag) == "SQ":
                    self._sequence(ds, ds[tag], action, path)
                # kept values stay raw
            else:
                self._replace(ds, tag, _raw_vr(raw, tag), action, path)
        if creators:
            self._drop_orphan_creators(ds)
        _drop_unconditioned(ds)

    def _replace(self, ds: Dataset, tag: BaseTag, vr: str, action: Action,
                 path: iod.Path) -> None:
        """Z, D, U or C on one element. An emptied or dummy value needs nothing of the old
        one, so the element is replaced without decoding it (its VR is known and not
        ambiguous); the others decode the value they transform."""
        if vr == "SQ":
            self._sequence(ds, ds[tag], action, path)
        elif action is Action.EMPTY and " " not in vr:
            ds[tag] = DataElement(tag, vr, empty_value_for_VR(vr))
        elif action is Action.DUMMY and vr != "UI" and " " not in vr:
            ds[tag] = DataElement(tag, vr, _dummy_value(vr))
        else:
            self._act(ds, ds[tag], action)

    def _sequence(self, ds: Dataset, elem: DataElement, action: Action | None,
                  path: iod.Path) -> None:
        """A sequence by its action and by its Type where it sits in this IOD.

        Z, or the Z of X/Z: zero items where the IOD makes it Type 2, else removed (an empty
        Type 3 sequence is invalid). D (also of X/D, X/Z/D): zero items where it is Type 2,
        removed where it is optional, and where it is Type 1 a valid item: a dummy code for a
        code sequence, or its items de-identified by their attributes' own actions when the
        table names every one of them; otherwise (an SR content tree, whose Text Value the
        table does not name) zero items, invalid but never a leak. Kept, cleaned and U
        sequences are walked; one that its items' actions leave with no content is removed,
        or kept with zero items where it is Type 2.
        """
        here = (*path, elem.keyword or str(elem.tag))
        kind = self.types.get(here)
        if action is Action.EMPTY or action is Action.DUMMY:
            if iod.may_be_empty(kind):
                elem.value = Sequence([])
            elif not iod.required(kind):
                del ds[elem.tag]
            elif action is Action.DUMMY and any(_is_code(item) for item in elem.value):
                elem.value = Sequence([_dummy_code()])  # the code itself may identify
            elif all(self._covered(item) for item in elem.value):
                self._walk(ds, elem, here, kind)
            else:  # e.g. an SR content tree: free text the table does not name (Text Value)
                elem.value = Sequence([])
            return
        self._walk(ds, elem, here, kind)

    def _covered(self, item: Dataset) -> bool:
        """Every attribute of the item has an action in the table (so walking it replaces
        whatever identifies), private ones aside (those are removed)."""
        tags: list[BaseTag] = list(item.keys())
        return all(tag.is_private or self.profile.action(int(tag)) is not None for tag in tags)

    def _walk(self, ds: Dataset, elem: DataElement, here: iod.Path, kind: str | None) -> None:
        items = list(elem.value)
        for item in items:
            self.apply(item, here)
        kept = [item for item in items if len(item)]
        if kept or not items:
            if len(kept) < len(items):
                elem.value = Sequence(kept)
        elif iod.may_be_empty(kind):
            elem.value = Sequence([])
        elif not iod.required(kind):
            del ds[elem.tag]
        # Type 1 with every item emptied: left as it is (nothing valid to put in its place)

    def _act(self, ds: Dataset, elem: DataElement, action: Action) -> None:
        if action is Action.EMPTY:
            _empty(elem)
        elif action is Action.DUMMY:
            self._dummy(elem)
        elif action is Action.UID:
            self._uids(elem)
        elif action is Action.CLEAN:
            self._clean(ds, elem)

    def _uids(self, elem: DataElement) -> None:
        if elem.VR != "UI":
            _empty(elem)
            return
        if elem.VM > 1:
            elem.value = [self.uid(str(v)) for v in elem.value]
        elif elem.value:
            elem.value = self.uid(str(elem.value))

    def _pseudonym(self, elem: DataElement) -> None:
        original = str(elem.value or "").strip()
        if elem.tag == PATIENT_ID:
            elem.value = self.patient_id(original)
        elif elem.tag == PATIENT_NAME:
            elem.value = self.patient_name(original)
        else:
            elem.value = self.accession(original)

    def _dummy(self, elem: DataElement) -> None:
        if elem.VR == "UI":
            self._uids(elem)
        else:
            elem.value = _dummy_value(elem.VR)

    def _clean(self, ds: Dataset, elem: DataElement) -> None:
        vr = elem.VR
        if vr in {"DA", "DT"}:
            if self.profile.settings.retain_long_modified_dates:
                elem.value = _shift(elem.value, self.shift, vr)
            else:
                _empty(elem)
        elif vr == "TM":
            if not self.profile.settings.retain_long_modified_dates:
                _empty(elem)
        elif vr in _TEXT_VRS or vr in {"UR"}:
            elem.value = _scrub_value(elem.value, self.terms)
        elif vr == "UI":
            self._uids(elem)
        elif vr in _BINARY_VRS:  # graphics, structured binary content: not cleanable here
            del ds[elem.tag]

    # -- private attributes ---------------------------------------------------------------

    def _private(self, ds: Dataset, tag: BaseTag) -> None:
        if tag.is_private_creator:
            return  # decided once the block's elements are known (_drop_orphan_creators)
        if self.profile.settings.retain_safe_private and self._safe(ds, tag):
            return
        del ds[tag]

    def _safe(self, ds: Dataset, tag: BaseTag) -> bool:
        creator_tag = Tag(tag.group, tag.element >> 8)
        if creator_tag not in ds:
            return False
        creator = str(ds[creator_tag].value).strip()
        key = f"{creator}|{tag.group:04X}|{tag.element & 0xFF:02X}"
        return key.upper() in {s.upper() for s in self.profile.settings.safe_private}

    @staticmethod
    def _drop_orphan_creators(ds: Dataset) -> None:
        tags = list(ds.keys())
        kept_blocks = {(t.group, t.element >> 8) for t in tags
                       if t.is_private and not t.is_private_creator}
        for tag in [t for t in tags if t.is_private_creator]:
            if (tag.group, tag.element) not in kept_blocks:
                del ds[tag]


def deidentify(ds: Dataset, profile: Profile, keys: DeidKeys) -> DeidResult:
    """De-identify ``ds`` in place by ``profile``; see the module docstring."""
    run = _Run(ds, profile, keys)
    pixels_cleaned = clean_pixels(ds, profile.settings)
    run.apply(ds)
    _mark(ds, profile, pixels_cleaned)
    meta = getattr(ds, "file_meta", None)
    if meta is not None and "SOPInstanceUID" in ds:
        meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    return DeidResult(ds, tuple(run.pseudonyms.values()), pixels_cleaned)


def _mark(ds: Dataset, profile: Profile, pixels_cleaned: bool) -> None:
    """Patient Identity Removed, De-identification Method (+ codes), Longitudinal Temporal."""
    codes = [BASIC_PROFILE_CODE, *profile.option_codes]
    if pixels_cleaned:
        codes.append(CLEAN_PIXEL_DATA_CODE)
    _set(ds, 0x00120062, "CS", "YES")  # Patient Identity Removed
    _set(ds, 0x00120063, "LO",  # De-identification Method
         [f"dicom-node {__version__}"[:64]] + [m[:64] for _, m in codes])
    items = []
    for value, meaning in codes:
        item = Dataset()
        _set(item, 0x00080100, "SH", value)  # Code Value
        _set(item, 0x00080102, "SH", "DCM")  # Coding Scheme Designator
        _set(item, 0x00080104, "LO", meaning)  # Code Meaning
        items.append(item)
    _set(ds, 0x00120064, "SQ", Sequence(items))  # De-identification Method Code Sequence
    settings = profile.settings
    _set(ds, 0x00280303, "CS", (  # Longitudinal Temporal Information Modified
        "UNMODIFIED" if settings.retain_long_full_dates
        else "MODIFIED" if settings.retain_long_modified_dates
        else "REMOVED"
    ))


def _set(ds: Dataset, tag: int, vr: str, value: Any) -> None:
    """``ds.<keyword> = value`` without the keyword lookup: a new element with the
    dictionary's VR where there is none, else the present one's value replaced."""
    if tag in ds:
        ds[tag].value = value
    else:
        ds[tag] = DataElement(tag, vr, value)


# ------------------------------------------------------------------------------------ helpers


def _vr(ds: Dataset, tag: BaseTag) -> str:
    """The element's VR without converting its value (implicit VR: from the dictionary)."""
    return _raw_vr(ds.get_item(tag), tag)


def _raw_vr(elem: DataElement | RawDataElement, tag: BaseTag) -> str:
    vr = elem.VR
    if vr:
        return str(vr)
    try:
        return str(dictionary_VR(tag))
    except KeyError:
        return "UN"


def _text(ds: Dataset, tag: BaseTag) -> str:
    elem = ds.get(tag)
    return "" if elem is None or elem.value is None else str(elem.value).strip()


def _is_code(item: Dataset) -> bool:
    return "CodeValue" in item or "CodeMeaning" in item


def _dummy_code() -> Dataset:
    """A code that names nothing (PS3.16 8.2: a coding scheme designator starting with 99 is
    local), for a Type 1 code sequence whose codes the profile replaces."""
    item = Dataset()
    item.CodeValue = _DUMMY_TEXT
    item.CodingSchemeDesignator = "99DEID"
    item.CodeMeaning = _DUMMY_TEXT
    return item


def _drop_unconditioned(ds: Dataset) -> None:
    """Remove a conditional attribute whose condition the profile has taken away (its
    controlling attribute removed or emptied): see iod.PRESENT_ONLY_WITH."""
    for dependent, controller in iod.PRESENT_ONLY_WITH:
        if dependent in ds and not _text(ds, Tag(controller)):
            del ds[dependent]


def _dummy_value(vr: str) -> Any:
    """The D action's value for a VR other than UI (UIDs get pseudonyms)."""
    if vr in _DUMMY:
        return _DUMMY[vr]
    if vr in _NUMBER_VRS:
        return 0
    if vr in _BINARY_VRS:
        return b""
    if vr in _TEXT_VRS or vr == "UR":
        return _DUMMY_TEXT
    return Sequence([]) if vr == "SQ" else empty_value_for_VR(vr)


def _empty(elem: DataElement) -> None:
    """A zero-length value, held as pydicom reads one back ('' for text, None for numbers)."""
    elem.value = Sequence([]) if elem.VR == "SQ" else empty_value_for_VR(elem.VR)


def _shift(value: Any, shift: dt.timedelta, vr: str) -> Any:
    if value is None or value == "":
        return value
    values = list(value) if isinstance(value, list | tuple) else [value]
    out = [_shift_one(str(v), shift, vr) for v in values]
    return out if len(out) > 1 else out[0]


def _shift_one(text: str, shift: dt.timedelta, vr: str) -> str:
    try:
        day = dt.datetime.strptime(text[:8], "%Y%m%d").date()
    except ValueError:
        return _DUMMY[vr]  # not a full date: a dummy, never the original
    return (day - shift).strftime("%Y%m%d") + (text[8:] if vr == "DT" else "")


_TERM_TAGS = frozenset((
    0x00100020, 0x00080050, 0x00100021, 0x00100030, 0x00101040, 0x00102154, 0x00080080,
    0x00080081, 0x00081010, 0x00101000, 0x00101002,
))


def _phi_terms(ds: Dataset) -> list[str]:
    """Identifying values found in the data set, to scrub from free text (Clean options):
    every person name's parts and the identifying attributes in _TERM_TAGS, at any depth."""
    found: set[str] = set()

    def walk(d: Dataset) -> None:
        for tag, raw in list(d.items()):
            vr = _raw_vr(raw, tag)
            if vr == "SQ":
                for item in d[tag].value:
                    walk(item)
            elif vr == "PN" or int(tag) in _TERM_TAGS:
                value = d[tag].value
                if not value:
                    continue
                for v in value if isinstance(value, list | tuple) else [value]:
                    found.add(str(v))
                    if vr == "PN":
                        found.update(re.split(r"[\^=\s,]+", str(v)))

    walk(ds)
    return sorted((t.strip() for t in found if len(t.strip()) >= _MIN_TERM), key=len, reverse=True)


def _scrub_value(value: Any, terms: Iterable[str]) -> Any:
    if isinstance(value, list | tuple):
        return [_scrub(str(v), terms) for v in value]
    return _scrub(str(value), terms) if value is not None else value


def _scrub(text: str, terms: Iterable[str]) -> str:
    for term in terms:
        text = re.sub(re.escape(term), "", text, flags=re.IGNORECASE)
    text = _LONG_DIGITS.sub("", text)
    return re.sub(r"\s{2,}", " ", text).strip()
