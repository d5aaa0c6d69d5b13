"""A classifier's findings read as ONE finding (the predicted class) and the other classes'
probabilities: the reading the SR, the PDF, the ORU and summary.json share."""

from __future__ import annotations

import json
from pathlib import Path

from node.core.contract import Finding, ModelResult, ResultContext, classification
from node.core.manifest import CodedConcept
from node.pipeline.infer.registry import load_model
from node.pipeline.infer.summary import result_summary

GLIOMA = CodedConcept("393564001", "SCT", "Glioma")
NONE = CodedConcept("NOTUMOUR-DEMO", "99DCMNODE", "No tumour found")
PITUITARY = CodedConcept("254956000", "SCT", "Pituitary adenoma")


def _result(*probabilities: float) -> ModelResult:
    concepts = (GLIOMA, NONE, PITUITARY)
    return ModelResult("m", "1", findings=tuple(
        Finding(c, p) for c, p in zip(concepts, probabilities, strict=True)))


def test_the_most_probable_class_is_the_finding_the_others_keep_their_order() -> None:
    found = classification(_result(0.2, 0.7, 0.1))
    assert found is not None
    assert found.finding == Finding(NONE, 0.7)  # "no tumour" is a finding like any class
    assert found.others == (Finding(GLIOMA, 0.2), Finding(PITUITARY, 0.1))


def test_a_tie_goes_to_the_first_class_and_no_findings_is_no_classification() -> None:
    found = classification(_result(0.4, 0.4, 0.2))
    assert found is not None and found.finding.concept == GLIOMA
    assert classification(ModelResult("m", "1")) is None


def test_summary_json_names_the_predicted_finding(tumor_ctx: ResultContext) -> None:
    loaded = load_model(Path(__file__).resolve().parents[3] / "models" / "brain-tumor-demo",
                        "cpu")
    summary = json.loads(json.dumps(result_summary(loaded, tumor_ctx.result, "2.25.1")))
    best = max(tumor_ctx.result.findings, key=lambda f: f.probability)
    assert summary["predicted_finding"] == {
        "code": best.concept.value, "scheme": best.concept.scheme,
        "meaning": best.concept.meaning, "probability": round(best.probability, 6)}
    assert len(summary["findings"]) == 4
    assert result_summary(loaded, ModelResult("m", "1"), "2.25.1")["predicted_finding"] is None
