"""The ``dicom-node`` command: one module per sub-command, each calling what the node runs.

Every module has ``add(sub)`` (its arguments) and ``run(args, settings) -> exit status``.
Problems the user can fix are one line on stderr and an exit status, never a traceback:
settings problems exit 2, everything else the node refuses exits 1.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from types import ModuleType

from sqlalchemy.exc import SQLAlchemyError

from node import __version__
from node.commands import (
    check_config,
    deidentify,
    evaluate,
    force_complete,
    hl7_listen,
    import_,
    infer,
    keygen,
    migrate,
    quarantine,
    retry,
    serve,
    status,
    token,
    user,
    worker,
)
from node.commands._common import EXIT_CONFIG, EXIT_ERROR
from node.core.errors import ConfigError, NodeError
from node.core.settings_load import load_settings

#: sub-command name -> its module, in the order ``--help`` lists them
COMMANDS: dict[str, ModuleType] = {
    "serve": serve, "status": status, "migrate": migrate, "retry": retry,
    "hl7-listen": hl7_listen, "check-config": check_config, "force-complete": force_complete,
    "deidentify": deidentify, "infer": infer, "keygen": keygen, "worker": worker,
    "user": user, "token": token, "quarantine": quarantine, "import": import_,
    "evaluate": evaluate,
}


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="dicom-node",
        description="A DICOM node: receives studies, runs AI on them, returns the results.",
    )
    p.add_argument("--version", action="version", version=f"dicom-node {__version__}")
    p.add_argument(
        "--config", metavar="PATH", default=os.environ.get("DICOM_NODE_CONFIG"),
        help="TOML settings file (default: $DICOM_NODE_CONFIG, else built-in defaults)",
    )
    sub = p.add_subparsers(dest="command", required=True)
    for module in COMMANDS.values():
        module.add(sub)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        settings = load_settings(args.config)
    except ConfigError as exc:
        for problem in exc.problems:
            print(f"config error: {problem}", file=sys.stderr)
        return EXIT_CONFIG
    try:
        status: int = COMMANDS[args.command].run(args, settings)
        return status
    except ConfigError as exc:
        for problem in exc.problems:
            print(f"config error: {problem}", file=sys.stderr)
        return EXIT_CONFIG
    except NodeError as exc:
        print(f"dicom-node: {exc}", file=sys.stderr)
        return EXIT_ERROR
    except SQLAlchemyError as exc:
        print(f"dicom-node: the ledger database cannot be used ({type(exc).__name__}: "
              f"{str(getattr(exc, 'orig', exc)).strip().splitlines()[0]})", file=sys.stderr)
        return EXIT_ERROR
    except OSError as exc:  # the machine said no (disk, permissions): one line, no traceback
        where = f": {exc.filename}" if exc.filename else ""
        print(f"dicom-node: {exc.strerror or type(exc).__name__}{where}", file=sys.stderr)
        return EXIT_ERROR
