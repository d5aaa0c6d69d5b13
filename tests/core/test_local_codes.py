"""The node's own codes: whole (never cut), within HL7's CE.1 (20), one table for SR and ORU."""

from __future__ import annotations

import re
from pathlib import Path

from node.core import local_codes
from node.core.contract import UNCERTAINTY_METHODS
from node.core.local_codes import meaning, name_code, probability_of
from node.core.manifest import EXPLAIN_METHODS, CodedConcept, load_manifest

REPO = Path(__file__).resolve().parents[2]
CODE = re.compile(r"[A-Z0-9]+(-[A-Z0-9]+)*")


def test_names_that_fit_read_as_themselves() -> None:
    assert name_code("Right lung volume").value == "RIGHT-LUNG-VOLUME"
    assert name_code("Brain volume") == CodedConcept("BRAIN-VOLUME", "99DCMNODE", "Brain volume")


def test_a_name_too_long_gets_an_opaque_code_not_a_cut_one() -> None:
    first = name_code("Emphysema index LAA%-950")  # 'EMPHYSEMA-INDEX-LAA-950': 23 characters
    second = name_code("Emphysema index LAA%-910")  # the same first 20 characters
    assert re.fullmatch(r"N-[0-9A-F]{12}", first.value)
    assert first.value != second.value
    assert first == name_code("Emphysema index LAA%-950")  # stable
    assert first.meaning == "Emphysema index LAA%-950"


def test_probability_codes_name_their_class() -> None:
    glioma = probability_of(CodedConcept("393564001", "SCT", "Glioma"))
    assert glioma == CodedConcept("P-393564001", "99DCMNODE", "Probability of Glioma")
    long_value = probability_of(CodedConcept("1.2.3.4.5.6.7.8.9.10.11", "99X", "Odd"))
    assert re.fullmatch(r"P-[0-9A-F]{12}", long_value.value)
    assert probability_of(CodedConcept("a b", "99X", "x")).value != "P-a b"


def test_meanings_fit_a_code_meaning_dropping_the_parenthetical_first() -> None:
    assert meaning("Probability of No tumour found (unvalidated demonstration classifier)") == (
        "Probability of No tumour found")
    long = meaning("word " * 30)
    assert len(long) <= 64 and long.endswith(" ...") and "wor ..." not in long
    assert meaning("short (kept)") == "short (kept)"


def test_every_code_of_the_shipped_models_fits_whole() -> None:
    fixed = [local_codes.SUMMARY, local_codes.REPORT_PDF, local_codes.INFERENCE,
             *(local_codes.explanation_method(m) for m in EXPLAIN_METHODS.values()),
             *(local_codes.uncertainty_method(k) for k in UNCERTAINTY_METHODS)]
    assert {c.value: c.meaning for c in fixed} == local_codes.TABLE
    made = [*fixed, name_code("Heatmap share")]
    for model in ("brain-mask", "lung-ct", "brain-tumor-demo"):
        manifest = load_manifest(REPO / "models" / model)
        made += [name_code(m.name) for m in manifest.measurements]
        made += [probability_of(f.concept) for f in manifest.findings]
    for c in made:
        assert CODE.fullmatch(c.value) and len(c.value) <= 20, c
        assert c.scheme == "99DCMNODE" and 0 < len(c.meaning) <= 64, c
    assert len({c.value for c in made}) == len({(c.value, c.meaning) for c in made})
