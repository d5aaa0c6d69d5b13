"""Alert payloads and e-mails say what was found: a classifier's one finding, not every class."""

from __future__ import annotations

from node.core.contract import ResultContext
from node.pipeline.build.alerts import alert_payload
from node.pipeline.deliver.notify import email_text


def test_a_classifier_alert_names_one_finding_and_the_other_probabilities(
        tumor_ctx: ResultContext) -> None:
    payload = alert_payload(tumor_ctx, job_id=7, node_ae="DICOM_NODE", include_identifiers=False)
    classes = tumor_ctx.result.findings
    best = max(classes, key=lambda f: f.probability)
    assert payload["finding"]["meaning"] == best.concept.meaning
    assert {f["meaning"] for f in payload["other_classes"]} == {
        f.concept.meaning for f in classes if f is not best}
    assert "study" not in payload  # no identifiers unless asked for
    _, body = email_text(payload)
    assert body.count("Finding:") == 1
    assert body.count("Probability of ") == len(classes) - 1


def test_a_segmentation_alert_has_measurements_and_no_finding(brain_ctx: ResultContext) -> None:
    payload = alert_payload(brain_ctx, job_id=8, node_ae="DICOM_NODE", include_identifiers=True)
    assert payload["finding"] is None and payload["other_classes"] == []
    assert payload["measurements"]
    _, body = email_text(payload)
    assert "Finding:" not in body and "Measurement: Brain volume" in body
    assert payload["study"]["study_instance_uid"] == str(brain_ctx.sources[0].StudyInstanceUID)
