"""``dicom-node hl7-listen``: a minimal MLLP listener that keeps what it receives."""

from __future__ import annotations

import argparse
from typing import Any

from node.core.settings import Settings


def add(sub: Any) -> None:
    hl = sub.add_parser("hl7-listen", help="a minimal MLLP listener that writes what it receives")
    hl.add_argument("--host", default="127.0.0.1")
    hl.add_argument("--port", type=int, default=2575)
    hl.add_argument("--out", required=True, metavar="FILE", help="file the messages are added to")
    hl.add_argument("--mode", default="AA",
                    choices=["AA", "AE", "AR", "silent", "drop", "garbage", "wrong-id", "cut",
                             "hangup", "flood"],
                    help="how to answer (default AA: accept; the last five play a broken EMR)")


def run(args: argparse.Namespace, settings: Settings) -> int:
    from node.hl7.listener import main as listen

    return listen(["--host", args.host, "--port", str(args.port), "--out", args.out,
                   "--mode", args.mode])
