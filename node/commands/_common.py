"""What the commands share: exit statuses, the ledger a ledger command opens, table printing."""

from __future__ import annotations

from collections.abc import Sequence

from node.app import open_ledger
from node.core.ledger import Ledger
from node.core.settings import Settings

EXIT_OK, EXIT_ERROR, EXIT_CONFIG = 0, 1, 2


def current_ledger(settings: Settings) -> Ledger:
    """The ledger, refused in one line when its schema needs migrations (``migrate``)."""
    from node.core.migrations import require_current

    ledger = open_ledger(settings)
    require_current(ledger.engine)
    return ledger


def print_table(table: Sequence[Sequence[str]]) -> None:
    widths = [max(len(row[i]) for row in table) for i in range(len(table[0]))]
    for row in table:
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip())


def when(value: object) -> str:
    return "" if value is None else str(value)[:19]
