"""``dicom-node serve``: run the node (``node.app.serve``)."""

from __future__ import annotations

import argparse
from typing import Any

from node.app import serve
from node.commands._common import EXIT_OK
from node.core.logs import setup_logging
from node.core.settings import Settings


def add(sub: Any) -> None:
    sub.add_parser("serve", help="run the node (receive, complete studies, process)")


def run(args: argparse.Namespace, settings: Settings) -> int:
    setup_logging(settings.node.log_level)
    serve(settings)
    return EXIT_OK
