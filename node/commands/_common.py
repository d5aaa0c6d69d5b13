"""What the commands share: exit statuses, the ledger a ledger command opens, table printing."""

from __future__ import annotations

import getpass
from collections.abc import Sequence

from node.core import audit
from node.core.ledger import Ledger, open_ledger
from node.core.settings import Settings

EXIT_OK, EXIT_ERROR, EXIT_CONFIG = 0, 1, 2


def current_ledger(settings: Settings) -> Ledger:
    """The ledger, refused in one line when its schema needs migrations (``migrate``)."""
    from node.core.migrations import require_current

    ledger = open_ledger(settings)
    require_current(ledger.engine)
    return ledger


def audit_cli(ledger: Ledger, settings: Settings, action: str, outcome: str, *,
              study_id: int | None = None, detail: str = "") -> None:
    """An action taken from the command line is an audit record like one through the API: the
    operating-system account that ran it, from "cli"; sent on to the audit repository by the
    running ``serve`` when forwarding is on."""
    try:
        who = getpass.getuser()
    except (KeyError, OSError):  # no name for this uid (a container's bare uid)
        who = "uid-unknown"
    audit.record(ledger.engine, audit.Entry(action=action, outcome=outcome, user=f"os:{who}",
                                            address="cli", study_id=study_id, detail=detail),
                 forward=settings.audit.enabled)


def print_table(table: Sequence[Sequence[str]]) -> None:
    widths = [max(len(row[i]) for row in table) for i in range(len(table[0]))]
    for row in table:
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip())


def when(value: object) -> str:
    return "" if value is None else str(value)[:19]
