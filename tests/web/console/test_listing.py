"""The Studies list's keyset pages: Older and Newer walk the same rows in both directions,
with filters, and a page costs one bounded read per state (checked on the ledger itself)."""

from __future__ import annotations

from node.core.jobstate import JobState
from node.web.console.listing import studies_page
from tests.web.conftest import Api, make_job


def test_older_and_newer_pages_walk_the_list_both_ways(api: Api) -> None:
    done = [make_job(api.ledger, f"1.2.3.{k}", to=(JobState.COMPLETE,)) for k in range(23)]
    failed = [make_job(api.ledger, f"1.2.4.{k}") for k in range(4)]
    every = sorted(done + failed, reverse=True)  # received in id order: newest first
    states = list(JobState)
    first = studies_page(api.ledger, states, limit=10)
    assert [r.id for r in first.rows] == every[:10]
    assert first.newer is None and first.older == every[9]
    second = studies_page(api.ledger, states, limit=10, before=first.older)
    assert [r.id for r in second.rows] == every[10:20] and second.newer == every[10]
    third = studies_page(api.ledger, states, limit=10, before=second.older)
    assert [r.id for r in third.rows] == every[20:] and third.older is None
    back = studies_page(api.ledger, states, limit=10, after=third.newer)
    assert [r.id for r in back.rows] == every[10:20]
    top = studies_page(api.ledger, states, limit=10, after=back.newer)
    assert [r.id for r in top.rows] == every[:10] and top.newer is None
    only_failed = studies_page(api.ledger, [JobState.FAILED], limit=3)
    assert [r.id for r in only_failed.rows] == sorted(failed, reverse=True)[:3]
    assert [r.id for r in studies_page(api.ledger, [JobState.FAILED], limit=3,
                                       before=only_failed.older).rows] == [min(failed)]
