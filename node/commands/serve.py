"""``dicom-node serve``: run the node (``node.app.serve``)."""

from __future__ import annotations

import argparse
from dataclasses import replace
from typing import Any

from node.commands._common import EXIT_OK
from node.core.errors import ConfigError
from node.core.logs import setup_logging
from node.core.settings import Settings
from node.core.settings_check import check


def add(sub: Any) -> None:
    p = sub.add_parser("serve", help="run the node (receive, complete studies, process)")
    p.add_argument("--no-pipeline", action="store_true",
                   help="receive and complete only; workers run the stages (workers.enabled)")


def run(args: argparse.Namespace, settings: Settings) -> int:
    from node.app import serve

    if args.no_pipeline and not settings.workers.enabled:
        settings = replace(settings, workers=replace(settings.workers, enabled=True))
        problems = check(settings)
        if problems:
            raise ConfigError(problems)
    setup_logging(settings.node.log_level)
    serve(settings)
    return EXIT_OK
