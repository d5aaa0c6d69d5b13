"""STOW-RS responses mapped onto per-instance outcomes (the live test is in test_delivery.py)."""

from __future__ import annotations

from node.pipeline.deliver.stow import FAILED, FAILURE_REASON, REFERENCED, SOP_UID, outcomes


def _seq(*items: dict) -> dict:
    return {"vr": "SQ", "Value": list(items)}


def _ref(uid: str, reason: int | None = None) -> dict:
    item = {SOP_UID: {"vr": "UI", "Value": [uid]}}
    if reason is not None:
        item[FAILURE_REASON] = {"vr": "US", "Value": [reason]}
    return item


def test_partial_success_is_told_apart_per_instance() -> None:
    body = {REFERENCED: _seq(_ref("1")), FAILED: _seq(_ref("2", 0xA700), _ref("3", 0xC000))}
    result = outcomes("pacs", 202, body, ["1", "2", "3", "4"])
    assert [r[0] for r in result] == ["delivered", "transient", "permanent", "transient"]
    assert result[2][1] == "pacs: failed, reason 0xC000 (HTTP 202)"


def test_http_errors_without_a_body_apply_to_every_instance() -> None:
    assert [r[0] for r in outcomes("p", 503, {}, ["1", "2"])] == ["transient"] * 2
    assert [r[0] for r in outcomes("p", 404, {}, ["1"])] == ["permanent"]
    assert [r[0] for r in outcomes("p", 409, {}, ["1"])] == ["permanent"]
    assert [r[0] for r in outcomes("p", 200, {}, ["1"])] == ["delivered"]
