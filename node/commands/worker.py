"""``dicom-node worker``: run stages as Celery tasks (``node.app.work``, ``[workers]``)."""

from __future__ import annotations

import argparse
from typing import Any

from node.commands._common import EXIT_OK
from node.core.errors import ConfigError
from node.core.logs import setup_logging
from node.core.settings import Settings

#: the stages a worker can take (``celery_runner.WORKER_STAGES``; spelled out so that ``--help``
#: does not import the pipeline; a test holds the two equal)
_NAMES = "deidentify,infer,build,deliver"


def add(sub: Any) -> None:
    p = sub.add_parser("worker", help="run pipeline stages as Celery tasks (scaled out)")
    p.add_argument("--stages", default=_NAMES, metavar="S[,S]",
                   help=f"the stages whose queues this worker takes (default: {_NAMES})")
    p.add_argument("--models", metavar="NAME[,NAME]",
                   help="the models this worker runs (default: models.enabled); its inference "
                        "queue is named after them")


def run(args: argparse.Namespace, settings: Settings) -> int:
    from node.app import work
    from node.pipeline.celery_runner import WORKER_STAGES
    from node.pipeline.flow import Stage

    names = [n.strip() for n in args.stages.split(",") if n.strip()]
    unknown = [n for n in names if n not in {s.value for s in WORKER_STAGES}]
    if unknown or not names:
        raise ConfigError([f"--stages: expected some of {_NAMES}, got {args.stages!r}"])
    models = (tuple(m.strip() for m in args.models.split(",") if m.strip())
              if args.models is not None else None)
    if Stage.INFER.value in names and not (models or settings.models.enabled):
        raise ConfigError(["--stages infer: no model to run (models.enabled or --models)"])
    if settings.database_url.startswith("sqlite"):
        raise ConfigError(["node.database_url: a worker needs the ledger the receiving node "
                           "uses, on PostgreSQL"])
    setup_logging(settings.node.log_level)
    work(settings, [Stage(n) for n in names], models)
    return EXIT_OK
