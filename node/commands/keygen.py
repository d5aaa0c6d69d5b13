"""``dicom-node keygen``: create a new de-identification key file (owner-only)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from node.commands._common import EXIT_OK
from node.core.keys import write_key_file
from node.core.settings import Settings


def add(sub: Any) -> None:
    kg = sub.add_parser("keygen", help="create a new de-identification key file")
    kg.add_argument("--out", required=True, metavar="PATH")


def run(args: argparse.Namespace, settings: Settings) -> int:
    write_key_file(Path(args.out))
    print(f"wrote a new de-identification key to {args.out} (owner-only); keep a backup")
    return EXIT_OK
