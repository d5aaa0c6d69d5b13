"""The node's own codes (coding scheme ``99DCMNODE``), in one place, for the SR and the ORU.

The node reports a few concepts no standard terminology codes: its text summary, its PDF
report, its method (an AI model's inference), a classifier's probability of one class, a
measurement a model names but does not code, and the ends of a measurement's interval with the
method that estimated it (test-time augmentation). Their codes are made here and nowhere else,
so that the SR and the HL7 message use the same code for the same thing.

Every code fits the shortest field that carries it **without being cut**: HL7 v2.5.1 CE.1 and
CE.4 (ST, 20 characters). (DICOM's Code Value holds 16; highdicom writes a longer value as Long
Code Value, which the standard allows.) A code made from a name is the name in capitals with
``-`` between its words when that fits; otherwise, rather than a prefix that reads like a
mistake and may collide with another name's, an opaque code ``N-`` + 12 hexadecimal digits of
the name's SHA-256: stable, unique in practice, and its meaning (the name) travels beside it.

Code meanings go into DICOM's Code Meaning (LO, 64 characters): a longer one loses its trailing
parenthetical first (the class names of the demonstration model carry one), then words.
"""

from __future__ import annotations

import hashlib
import re

from node.core.manifest import CodedConcept

SCHEME = "99DCMNODE"
#: HL7 v2.5.1 CE.1/CE.4 (ST 20): the tightest field a local code goes into
MAX_CODE = 20
#: DICOM Code Meaning (LO)
MAX_MEANING = 64

#: the node's fixed codes: code value -> code meaning
TABLE: dict[str, str] = {
    "AI-SUMMARY": "AI result summary",
    "AI-REPORT-PDF": "AI result report (PDF)",
    "AI-INFERENCE": "AI model inference",
    "GRAD-CAM": "Grad-CAM class activation map",
    "GRAD-CAM-PP": "Grad-CAM++ class activation map",
    "SCORE-CAM": "Score-CAM class activation map",
    "TTA-FLIPS": "Test-time augmentation (mirror flips)",
}
SUMMARY = CodedConcept("AI-SUMMARY", SCHEME, TABLE["AI-SUMMARY"])
REPORT_PDF = CodedConcept("AI-REPORT-PDF", SCHEME, TABLE["AI-REPORT-PDF"])
INFERENCE = CodedConcept("AI-INFERENCE", SCHEME, TABLE["AI-INFERENCE"])

#: a heatmap's method as a reader sees it (``Heatmap.method``) -> its code in TABLE
_EXPLANATION_CODES = {"Grad-CAM": "GRAD-CAM", "Grad-CAM++": "GRAD-CAM-PP", "Score-CAM": "SCORE-CAM"}

#: an uncertainty method's key (``contract.UNCERTAINTY_METHODS``) -> its code in TABLE
_UNCERTAINTY_CODES = {"flips": "TTA-FLIPS"}

_NOT_CODE = re.compile(r"[^A-Z0-9]+")
_CODE = re.compile(r"[A-Z0-9]+(-[A-Z0-9]+)*")
_TRAILING_PARENTHETICAL = re.compile(r"\s*\([^()]*\)\s*$")


def is_local(c: CodedConcept) -> bool:
    return c.scheme == SCHEME


def name_code(name: str) -> CodedConcept:
    """The node's code of a named value (a measurement without a concept of its own)."""
    return CodedConcept(_code(name, "N-"), SCHEME, meaning(name))


def probability_of(c: CodedConcept) -> CodedConcept:
    """'Probability of <class>': a classifier's probability of one class, not a finding.

    The code is ``P-`` and the class's code value when that fits (``P-393564001``), else
    opaque (``P-`` + 12 hex digits of the class's scheme and value)."""
    value = f"P-{c.value}"
    if len(value) > MAX_CODE or not _CODE.fullmatch(c.value):
        value = "P-" + _digest(f"{c.scheme}|{c.value}")
    return CodedConcept(value, SCHEME, meaning(f"Probability of {c.meaning}"))


def explanation_method(name: str) -> CodedConcept:
    """The code of a heatmap's method (e.g. 'Grad-CAM++'); another name gets its name code."""
    code = _EXPLANATION_CODES.get(name)
    return CodedConcept(code, SCHEME, TABLE[code]) if code else name_code(name)


def uncertainty_method(key: str) -> CodedConcept:
    """The code of how a measurement's interval was estimated (e.g. "flips")."""
    code = _UNCERTAINTY_CODES.get(key)
    return CodedConcept(code, SCHEME, TABLE[code]) if code else name_code(key)


def interval_limit(name: str, side: str, level: float) -> CodedConcept:
    """'<name>, lower 95% limit' (``side`` "lower" or "upper"): one end of a measurement's
    interval, reported beside the measurement as a value of its own."""
    return name_code(f"{name}, {side} {100.0 * level:g}% limit")


def meaning(text: str) -> str:
    """``text`` as a Code Meaning of at most 64 characters (parenthetical, then words dropped)."""
    text = " ".join(text.split())
    while len(text) > MAX_MEANING and _TRAILING_PARENTHETICAL.search(text):
        text = _TRAILING_PARENTHETICAL.sub("", text)
    if len(text) > MAX_MEANING:
        text = text[:MAX_MEANING - 4].rsplit(" ", 1)[0] + " ..."
    return text


def _code(name: str, prefix: str) -> str:
    words = _NOT_CODE.sub("-", name.upper()).strip("-")
    return words if words and len(words) <= MAX_CODE else prefix + _digest(name)


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:12].upper()
