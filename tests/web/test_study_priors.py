"""The Study page's earlier studies of the same patient: matched by the keyed pseudonym the
de-identification stage writes on the study row (checked through the flow's own stage on real
CT files), newest first, only those received before the
study shown, with each model's triage and measurements and the change to this study; read
through ``ix_studies_patient``; shown to the roles that read results only."""

from __future__ import annotations

import base64
import re
from datetime import timedelta
from pathlib import Path

import pydicom
from sqlalchemy import select, text, update
from sqlalchemy.dialects import sqlite

from node.core import db, patients
from node.core.accounts import Role
from node.core.at_rest import StorageKeys
from node.core.contract import Triage
from node.core.jobstate import JobState
from node.core.keys import DeidKeys, new_secret
from node.core.ledger import Ledger, ReceivedInstance, open_ledger, utcnow
from node.core.pseudonyms import Pseudonym, PseudonymStore
from node.core.settings import DeidSettings, NodeSettings, Settings
from node.core.spool import Spool
from node.pipeline.context import StageContext
from node.pipeline.deid.profile import load_profile
from node.pipeline.deliver.senders import Peers
from node.pipeline.deliver.stage import Deliverer
from node.pipeline.flow import Flow, Stage
from tests.data import ct_series
from tests.web.conftest import Api
from tests.web.study_scene import analysed_job

PATIENT, OTHER = "PAT" + "A" * 13, "PAT" + "B" * 13


def _placed(ledger: Ledger, job: int, key: str, days_ago: float) -> int:
    at = utcnow() - timedelta(days=days_ago)
    with ledger.engine.begin() as conn:
        patients.record(conn, job, key)
        conn.execute(update(db.studies).where(db.studies.c.id == job)
                     .values(received_at=at, opened_at=at, last_received_at=at))
    return job


def _text(html: str) -> str:
    return re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", html))


def test_the_patients_earlier_studies_with_their_results_and_the_change(api: Api) -> None:
    led, settings = api.ledger, api.ctx.settings
    first = _placed(led, analysed_job(led, settings, "1.2.826.0.1.3680043.8.498.7801",
                                      volume_ml=1400.0), PATIENT, 60)
    second = _placed(led, analysed_job(led, settings, "1.2.826.0.1.3680043.8.498.7802",
                                       volume_ml=1425.25, triage=Triage.PRIORITY), PATIENT, 30)
    other = _placed(led, analysed_job(led, settings, "1.2.826.0.1.3680043.8.498.7803"),
                    OTHER, 20)
    now = _placed(led, analysed_job(led, settings, "1.2.826.0.1.3680043.8.498.7804",
                                    volume_ml=1412.5), PATIENT, 1)
    later = _placed(led, analysed_job(led, settings, "1.2.826.0.1.3680043.8.498.7805"),
                    PATIENT, 0)
    assert [s.id for s in patients.earlier(led.engine, now)] == [second, first]
    assert [s.id for s in patients.earlier(led.engine, first)] == []
    api.login(Role.CLINICIAN)
    page = api.client.get(f"/studies/{now}").text
    section = page[page.index('id="earlier-studies"'):]
    section = section[:section.index("</section>")]
    links = re.findall(r'href="/studies/(\d+)"', section)
    assert links == [str(second), str(first)]  # newest first; not the later one, not another's
    assert str(other) not in links and str(later) not in links
    rows = [_text(r) for r in re.findall(r"<tr.*?</tr>", section, re.S)][1:]
    assert "This study" in rows[0] and "Brain volume: 1,412.5 mL" in rows[0]
    assert "change" not in rows[0]
    assert "Brain volume: 1,425.25 mL" in rows[1] and "Priority" in rows[1]
    assert "change to this study: -12.75 mL" in rows[1]
    assert "Brain volume: 1,400 mL" in rows[2] and "change to this study: +12.5 mL" in rows[2]
    # a study of no known patient, or with no earlier study, shows no table
    assert 'id="earlier-studies"' not in api.client.get(f"/studies/{first}").text
    api.login(Role.OPERATOR)  # the queues' role sees no patient's history
    assert 'id="earlier-studies"' not in api.client.get(f"/studies/{now}").text


def test_the_patient_key_is_one_non_blank_patient_id_pseudonym() -> None:
    def ids(*pairs: tuple[str, str]) -> list[Pseudonym]:
        return [Pseudonym("patient_id", p, o) for p, o in pairs]

    uid = Pseudonym("uid", "2.25.1", "1.2.3")
    assert patients.patient_key([uid, *ids((PATIENT, "12345"), (PATIENT, "12345"))]) == PATIENT
    assert patients.patient_key(ids((PATIENT, " "))) is None  # no ID: joins no one
    assert patients.patient_key(ids((PATIENT, "1"), (OTHER, "2"))) is None  # two patients
    assert patients.patient_key([uid]) is None


def test_the_earlier_studies_are_one_index_range(tmp_path: Path) -> None:
    engine = db.make_engine(f"sqlite:///{tmp_path / 'ledger.sqlite3'}")
    db.create_schema(engine)
    sql = patients.earlier_query(5).compile(dialect=sqlite.dialect(),
                                            compile_kwargs={"literal_binds": True})
    with db.reader(engine) as conn:
        plan = [str(r[-1]) for r in conn.execute(text(f"EXPLAIN QUERY PLAN {sql}"))]
    assert any("USING INDEX ix_studies_patient" in step for step in plan), plan
    assert not any(step.startswith("SCAN studies") or step.startswith("SCAN results")
                   for step in plan), plan


def _stage_context(var: Path) -> Flow:
    settings = Settings(node=NodeSettings(var_dir=str(var)))
    ledger = open_ledger(settings, create=True)
    spool = Spool(var, 0, StorageKeys.from_secret(base64.b64decode(new_secret())))
    spool.prepare()
    keys = DeidKeys.from_secret(base64.b64decode(new_secret()))
    ctx = StageContext(ledger, spool, load_profile(DeidSettings()), keys,
                       PseudonymStore(ledger.engine, keys), {}, settings)
    return Flow(ledger, settings, Deliverer(ctx.outbox, Peers(settings, ctx.outbox_root)), ctx)


def _received(flow: Flow, folder: Path, patient_id: str, accession: str = "") -> int:
    assert flow.ctx is not None
    spool = flow.ctx.spool
    for path in ct_series(folder, 2):
        ds = pydicom.dcmread(path)
        ds.PatientID = patient_id
        ds.AccessionNumber = accession
        relative = spool.relative_path(ds.StudyInstanceUID, ds.SOPInstanceUID)
        spool.absolute(relative).parent.mkdir(parents=True, exist_ok=True)
        ds.save_as(spool.absolute(relative), enforce_file_format=True)
        flow.ledger.record_instance(ReceivedInstance(
            ds.SOPInstanceUID, ds.SOPClassUID, ds.StudyInstanceUID, ds.SeriesInstanceUID,
            ds.file_meta.TransferSyntaxUID, ds.Modality, (), 1, "TEST"), relative, lambda: None)
    job = flow.ledger.study(str(ds.StudyInstanceUID)).id
    flow.ledger.transition(job, JobState.COMPLETE, reason="test")
    assert flow.run_stage(Stage.DEIDENTIFY, job) == JobState.DEIDENTIFIED
    return job


def test_de_identification_writes_the_patients_key_on_the_study(tmp_path: Path) -> None:
    flow = _stage_context(tmp_path / "var")
    jobs = [_received(flow, tmp_path / f"ct{n}", patient_id)
            for n, patient_id in enumerate(("CQ500-CT-310", "CQ500-CT-310", "CQ500-CT-311", ""))]
    searched = _received(flow, tmp_path / "ct-acc", "CQ500-CT-312", accession="ACC-77")
    with db.reader(flow.ledger.engine) as conn:
        keys = dict(conn.execute(select(db.studies.c.id, db.studies.c.patient_key)).tuples().all())
    first, again, other, blank = (keys[j] for j in jobs)
    assert first is not None and first.startswith("PAT") and "310" not in first
    assert again == first and other not in (None, first) and blank is None
    assert flow.ctx is not None  # the key is the de-identified copy's Patient ID
    copy = next((flow.ctx.deid_dir(flow.ledger.study_by_id(jobs[0]).study_instance_uid))
                .glob("*.dcm"))
    assert pydicom.dcmread(copy, stop_before_pixels=True).PatientID == first
    # what the Studies page's search computes from a typed ID is this same key
    assert patients.patient_pseudonym(
        flow.ctx.keys, patients.patient_text("", "CQ500-CT-310")) == first
    with db.reader(flow.ledger.engine) as conn:
        accessions = dict(conn.execute(select(db.studies.c.id, db.studies.c.accession_key))
                          .tuples().all())
    assert accessions[searched] == patients.accession_pseudonym(flow.ctx.keys, "ACC-77")
    assert accessions[jobs[0]] is None  # no accession number: no key
    assert [s.id for s in patients.earlier(flow.ledger.engine, jobs[1])] == [jobs[0]]
