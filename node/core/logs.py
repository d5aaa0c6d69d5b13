"""Logging set-up. Log lines name ledger ids, AE titles, states and reasons: never patient data.

A study should read as a short story in the log: received, complete, de-identified, each
model's result, built, delivered, reported, done. Libraries that narrate their own work at INFO
(highdicom logs every module it copies into a result object, about 90 lines a study) are held to
WARNING, so what they say is only what went wrong.
"""

from __future__ import annotations

import logging
import re
import sys

from node.core.contract import ModelResult

#: libraries whose INFO lines say nothing an operator needs
QUIET = ("pynetdicom", "apscheduler", "highdicom", "alembic", "fpdf", "PIL", "urllib3",
         "fontTools")
#: loggers of the broker client (Celery, kombu, py-amqp), whose connection errors during a
#: broker restart are one line each, not a traceback: the worker reconnects by itself
BROKER_LOGGERS = ("celery", "kombu", "amqp")
#: "path:line: Category: text" as ``warnings.formatwarning`` writes a warning
_WARNING_HEAD = re.compile(r"^(?P<where>.+?):(?P<line>\d+): (?P<category>\w+): ")
#: measurements named in a model's log line, at most
MAX_MEASUREMENTS = 4


class LibraryLines(logging.Filter):
    """What libraries say, made safe and short for the node's log.

    - A warning (routed through logging by ``setup_logging``) keeps its category and where it was
      raised, never its text: libraries quote the values they warn about, and those can be
      patient data (highdicom's check of a person name quotes the patient's name).
    - A connection error logged with a traceback by the broker client while the broker restarts
      is one line with the error's name: the worker reconnects, nothing needs debugging.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        if record.name == "py.warnings":
            found = _WARNING_HEAD.match(record.getMessage())
            where = ("a library" if found is None else
                     f"{found['category']} at {_short(found['where'])}:{found['line']}")
            record.msg, record.args = (
                "%s (its text is not logged: a library's warning may quote patient data)", (where,))
        elif (record.exc_info and record.name.startswith(BROKER_LOGGERS)
              and _is_connection_error(record.exc_info[1])):
            error = record.exc_info[1]
            record.msg, record.args = "%s (%s: %s)", (
                record.getMessage(), type(error).__name__, error)
            record.exc_info, record.exc_text = None, None
        return True


def _short(path: str) -> str:
    """The last two parts of a file's path (``highdicom/base.py``): the library and module."""
    return "/".join(path.replace("\\", "/").split("/")[-2:])


def _is_connection_error(error: BaseException | None) -> bool:
    from amqp.exceptions import RecoverableConnectionError

    return isinstance(error, OSError | EOFError | RecoverableConnectionError)


def setup_logging(level: str = "INFO") -> None:
    root = logging.getLogger()
    if getattr(root, "_dicom_node", False):
        root.setLevel(level)
        return
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        logging.Formatter("%(asctime)s %(levelname)s %(name)s[%(process)d] %(message)s")
    )
    handler.addFilter(LibraryLines())
    logging.captureWarnings(True)  # through the filter above, not straight to stderr
    root.addHandler(handler)
    root.setLevel(level)
    root._dicom_node = True  # type: ignore[attr-defined]
    for name in QUIET:
        logging.getLogger(name).setLevel(logging.WARNING)


def result_line(result: ModelResult) -> str:
    """A model result in one line: triage, the first measurements, the most likely finding.

    E.g. 'triage PRIORITY; Right lung volume 2210.4 mL, Left lung volume 1950.2 mL'. Values are
    the model's own output about the image, never identifiers.
    """
    parts = [f"triage {result.triage.value}"]
    values = [f"{m.name} {m.value:.1f} {m.unit}" for m in result.measurements[:MAX_MEASUREMENTS]]
    if len(result.measurements) > MAX_MEASUREMENTS:
        values.append(f"{len(result.measurements) - MAX_MEASUREMENTS} more")
    if values:
        parts.append(", ".join(values))
    if result.findings:
        top = max(result.findings, key=lambda f: f.probability)
        parts.append(f"most likely {top.concept.meaning} ({100.0 * top.probability:.1f} %)")
    return "; ".join(parts)
