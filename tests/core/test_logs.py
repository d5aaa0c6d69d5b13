"""The node's log of one study is a short story a hospital can read.

A real ``serve`` process receives a CT study (dcmtk's storescu), runs lung-ct on it, stores the
results at dcmtk's storescp and sends the ORU to a real MLLP listener. Its log must then say, in
about ten lines, that the study was received, completed, de-identified, what the model found,
that the results were built, delivered and reported: no library chatter (highdicom's "copy
attributes of module" lines, APScheduler's "maximum number of running instances reached"
warnings while a model runs), no WARNING when nothing went wrong, no patient data.
"""

from __future__ import annotations

import logging
import re
import subprocess
from pathlib import Path
from typing import Any

import pydicom
import pytest

from node.core.keys import write_key_file
from node.hl7.listener import MllpListener
from tests.conftest import dcmtk, free_port
from tests.models.chest_phantom import chest_phantom, write_ct_series

REPO = Path(__file__).resolve().parents[2]
pytestmark = [pytest.mark.integration, pytest.mark.slow]

PATIENT_ID, PATIENT_NAME, ACCESSION = "MRN-7730021", "Storyteller^Lena", "ACC-26-9911"
#: the stages of one study, in the order they happen
STORY = (
    r"study #(\d+): receiving from STORESCU$",
    r"study #\1: RECEIVING -> COMPLETE \(quiet-period, 48 instances\)$",
    r"study #\1: COMPLETE -> DEIDENTIFIED \(48 instances de-identified",
    r"study #\1: lung-ct [0-9.]+: triage (ROUTINE|PRIORITY|URGENT); Right lung volume [0-9.]+ mL",
    r"study #\1: DEIDENTIFIED -> INFERRED \(models run: lung-ct\)$",
    r"study #\1: INFERRED -> BUILT \(\d+ deliveries queued for lung-ct\)$",
    r"job #\1: BUILT -> DELIVERED \(\d+ objects stored at pacs\)$",
    r"job #\1: DELIVERED -> REPORTED \(1 HL7 results acknowledged by emr\)$",
    r"job #\1: REPORTED -> DONE \(all delivered",
)
LINE = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} (?P<level>[A-Z]+) (?P<logger>[\w.]+)"
                  r"\[\d+\] (?P<message>.*)$")


def _study(folder: Path) -> tuple[str, list[Path]]:
    folder.mkdir()
    files = write_ct_series(chest_phantom(slices=48, size=160).volume, folder)
    for path in files:
        ds = pydicom.dcmread(path)
        ds.PatientID, ds.PatientName, ds.AccessionNumber = PATIENT_ID, PATIENT_NAME, ACCESSION
        ds.save_as(path, enforce_file_format=True)
    return str(pydicom.dcmread(files[0]).StudyInstanceUID), files


def _story(messages: list[str]) -> list[str]:
    """The messages that match the stages, in order; fails naming the first missing stage."""
    found, at, study_id = [], 0, ""
    for pattern in STORY:
        regex = re.compile(pattern.replace(r"\1", study_id) if study_id else pattern)
        for n in range(at, len(messages)):
            match = regex.search(messages[n])
            if match:
                study_id = study_id or match.group(1)
                found.append(messages[n])
                at = n + 1
                break
        else:
            pytest.fail(f"no log line for the stage {pattern!r} after {found[-1:]}:\n"
                        + "\n".join(messages))
    return found


def test_one_study_is_a_short_story(node_factory: Any, tmp_path: Path) -> None:
    study_uid, files = _study(tmp_path / "ct")
    key = tmp_path / "deid.key"
    write_key_file(key)  # a configured key: no start-up warning about creating one
    pacs_port = free_port()
    pacs = subprocess.Popen(
        [dcmtk("storescp"), "-aet", "PACS", "-od", str(tmp_path), "+B", str(pacs_port)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env={"TCP_NODELAY": "1"})
    try:
        with MllpListener(host="127.0.0.1", port=0, mode="AA", out=tmp_path / "oru.txt") as emr:
            node = node_factory({
                "completion": {"quiet_period_s": 0.5},
                "deid": {"key_file": str(key)},
                "models": {"dir": str(REPO / "models"), "enabled": ["lung-ct"], "device": "cpu"},
                "delivery": {"poll_interval_s": 0.2, "timeout_s": 10.0,
                             "dicom": [{"name": "pacs", "ae_title": "PACS",
                                        "host": "127.0.0.1", "port": pacs_port}],
                             "hl7": [{"name": "emr", "host": "127.0.0.1", "port": emr.port}]},
            })
            node.start()
            node.storescu(*files)
            row = node.wait_state(study_uid, "DONE", "FAILED", timeout=120)
            assert row["state"] == "DONE", row
            node.stop()
    finally:
        pacs.terminate()
        pacs.wait(timeout=10)

    text = node.log()
    lines = text.splitlines()
    parsed = [LINE.match(line) for line in lines]
    assert all(parsed), [line for line, m in zip(lines, parsed, strict=True) if not m]
    records = [m for m in parsed if m is not None]
    messages = [m["message"] for m in records]
    story = _story(messages)
    about_the_study = [m for m in messages if re.match(r"(study|job) #\d+", m)]
    assert len(about_the_study) <= 12, "\n".join(about_the_study)
    assert len(story) == len(about_the_study), "\n".join(about_the_study)
    # besides the study: a few lines of starting (listening; a new ledger's schema) and
    # stopping, nothing else
    others = [m for m in messages if m not in about_the_study]
    assert len(others) <= 5 and any(m.startswith("dicom-node ") for m in others), others
    assert not [m for m in records if m["level"] != "INFO"], text
    assert not [m for m in records if m["logger"].split(".")[0] != "node"], text
    for secret in (PATIENT_ID, PATIENT_NAME, "Storyteller", ACCESSION, study_uid):
        assert secret not in text


def test_library_warnings_keep_no_text_and_broker_errors_are_one_line() -> None:
    """highdicom warns about a person name by quoting it (a patient's name in the log); a broker
    restart makes Celery log connection errors with tracebacks. Through the node's log handler:
    the warning's category and place only, the broker error as one line."""
    import io
    import warnings

    from node.core.logs import LibraryLines

    out = io.StringIO()
    handler = logging.StreamHandler(out)
    handler.addFilter(LibraryLines())
    handler.setFormatter(logging.Formatter("%(levelname)s %(name)s %(message)s"))
    root = logging.getLogger()
    root.addHandler(handler)
    logging.captureWarnings(False)  # anew: an earlier in-process serve may have turned it on
    logging.captureWarnings(True)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("always")
            warnings.warn('The string "DOE^JOHN" is unlikely to represent the intended person '
                          "name", UserWarning, stacklevel=1)
        try:
            raise BrokenPipeError(32, "Broken pipe")
        except BrokenPipeError:
            logging.getLogger("celery.worker.loops").exception("Error cleaning up after event loop")
    finally:
        logging.captureWarnings(False)
        root.removeHandler(handler)
    text = out.getvalue()
    assert "DOE" not in text and "UserWarning at core/test_logs.py:" in text, text
    assert "Traceback" not in text, text
    assert ("ERROR celery.worker.loops Error cleaning up after event loop (BrokenPipeError: "
            "[Errno 32] Broken pipe)") in text, text
