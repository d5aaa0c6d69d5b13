"""``dicom-node check-config``: what serve would refuse, one line per problem (preflight)."""

from __future__ import annotations

import argparse
from typing import Any

from node.commands._common import EXIT_OK
from node.core.errors import ConfigError
from node.core.settings import Settings


def add(sub: Any) -> None:
    cc = sub.add_parser("check-config", help="find every problem serve would refuse to start "
                        "with, one line each (nothing is started)")
    cc.add_argument("--connect", action="store_true",
                    help="also connect to the database and C-ECHO or reach every destination")


def run(args: argparse.Namespace, settings: Settings) -> int:
    from node.preflight import preflight

    problems = preflight(settings, connect=args.connect)
    if problems:
        raise ConfigError(problems)
    d = settings.delivery
    destinations = sum(len(x) for x in (d.dicom, d.stow, d.hl7, d.webhooks, d.email))
    print(f"config OK ({settings.source}): var_dir {settings.var_path}, ledger "
          f"{settings.database_url.split(':', 1)[0]}, {len(settings.models.enabled)} models "
          f"loaded, {destinations} destinations"
          + (" (database and destinations answered)" if args.connect else ""))
    return EXIT_OK
