"""The API in-process over a real spool (key file, optionally encrypted at rest): instances
placed and quarantined the way the receive path does it (settle, place inside the ledger's
transaction; quarantine + row), for the quarantine and identity tests."""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import io
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pydicom
from fastapi.testclient import TestClient

from node.core import at_rest, db
from node.core.accounts import Role
from node.core.keys import write_key_file
from node.core.ledger import Ledger, ReceivedInstance
from node.core.settings import DeliverySettings, StorageSettings
from node.core.spool import Spool, open_spool
from node.web.app import create_app
from node.web.context import WebContext
from tests.data import UID_PREFIX, sample_file
from tests.web.conftest import PASSWORD, Api, web_settings

#: the fixture patient: every value must stay out of operator and admin responses
PATIENT = {"name": "Identity^Testpatient", "patient_id": "MRN-4417", "birth_date": "19610203",
           "accession_number": "ACC-99812", "study_date": "20261201",
           "study_description": "CT THORAX"}


@dataclass
class SpoolApi(Api):
    spool: Spool


@contextlib.contextmanager
def spool_api(tmp_path: Path, *, encrypt: bool = False,
              delivery: DeliverySettings | None = None) -> Iterator[SpoolApi]:
    engine = db.make_engine(f"sqlite:///{tmp_path / 'ledger.sqlite3'}")
    db.create_schema(engine)
    write_key_file(tmp_path / "deid.key")  # the embedded default key file under var_dir
    settings = dataclasses.replace(web_settings(tmp_path),
                                   storage=StorageSettings(encrypt=encrypt),
                                   delivery=delivery or DeliverySettings())
    ctx = WebContext.of(Ledger(engine), settings, {})
    for role in Role:
        ctx.accounts.add_user(role.value, role, PASSWORD)
    spool = open_spool(settings)
    spool.prepare()
    try:
        with TestClient(create_app(ctx)) as client:
            yield SpoolApi(ctx, client, spool)
    finally:
        at_rest.configure(spool.keys.files, encrypt=False)  # process-wide: back to plain
        engine.dispose()


def patient_ct(**values: str) -> pydicom.Dataset:
    """pydicom's real CT_small.dcm in a new study, with the fixture patient (or ``values``)."""
    ds = pydicom.dcmread(sample_file("CT_small.dcm"))
    ds.StudyInstanceUID = pydicom.uid.generate_uid(UID_PREFIX)
    ds.SeriesInstanceUID = pydicom.uid.generate_uid(UID_PREFIX)
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = \
        pydicom.uid.generate_uid(UID_PREFIX)
    p = {**PATIENT, **values}
    ds.PatientName, ds.PatientID, ds.PatientBirthDate = p["name"], p["patient_id"], \
        p["birth_date"]
    ds.AccessionNumber, ds.StudyDate, ds.StudyDescription = p["accession_number"], \
        p["study_date"], p["study_description"]
    return ds


def encoded(ds: pydicom.Dataset) -> bytes:
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def receive(api: SpoolApi, ds: pydicom.Dataset) -> int:
    """Place and record ``ds`` as the receive path does; return its job id."""
    path = api.spool.incoming / f"{ds.SOPInstanceUID}.dcm"
    path.write_bytes(encoded(ds))
    api.spool.settle(path)
    relative = api.spool.relative_path(ds.StudyInstanceUID, ds.SOPInstanceUID)
    api.ledger.record_instance(ReceivedInstance(
        sop_instance_uid=ds.SOPInstanceUID, sop_class_uid=ds.SOPClassUID,
        study_instance_uid=ds.StudyInstanceUID, series_instance_uid=ds.SeriesInstanceUID,
        transfer_syntax_uid=str(ds.file_meta.TransferSyntaxUID), modality=ds.Modality,
        matched_rules=(), size_bytes=path.stat().st_size, calling_ae_title="CT1"),
        relative, lambda: api.spool.place(path, relative))
    return api.ledger.study(ds.StudyInstanceUID).id


def quarantine(api: SpoolApi, data: bytes, reason: str, ds: pydicom.Dataset | None = None) -> int:
    """Quarantine ``data`` as the receive path does (file moved, row recorded); its id."""
    path = api.spool.incoming / f"q-{len(data)}-{id(data)}.dcm"
    path.write_bytes(data)
    name = api.spool.quarantine(path)
    return api.ledger.record_quarantine(
        reason=reason, path=name, size_bytes=len(data),
        sop_class_uid=str(ds.SOPClassUID) if ds else None,
        sop_instance_uid=str(ds.SOPInstanceUID) if ds else None,
        calling_ae_title="CT1", peer_address="127.0.0.1")


def garbage_after_meta(ds: pydicom.Dataset) -> bytes:
    """A File Meta that is fine and a data set that is not (the receive path refuses it)."""
    head = copy.deepcopy(ds)
    for tag in list(head.keys()):
        del head[tag]
    return encoded(head) + b"\x08\x00\x18\x00UI\xff\x7fnot-a-uid" + bytes(200)
