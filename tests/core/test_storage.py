"""Data at rest: keyed spool names (and their migration) and optional file encryption.

Unit tests of the file format and of the migration on a real ledger (SQLite and PostgreSQL);
then the node as a real process: a study through serve with encryption on to a real Orthanc,
no plain DICOM or patient name in any stored file, a tampered file refused with a clear
reason, plain files kept readable when encryption is turned on, and a spool named as older
nodes named it renamed at start and still worked on.
"""

from __future__ import annotations

import base64
import os
import shutil
import sqlite3
import subprocess
import urllib.request
from pathlib import Path
from typing import Any

import pydicom
import pytest

from node.core import at_rest
from node.core.at_rest import MAGIC, SealedFileError, StorageKeys
from node.core.keys import new_secret
from node.core.ledger import Ledger, ReceivedInstance
from node.core.outbox import NewItem, Outbox
from node.core.spool import Spool
from node.core.spool_migration import MARKER, legacy_key, migrate_names
from tests.data import UID_PREFIX, ct_series
from tests.orthanc import orthanc  # noqa: F401 - the fixture

PATIENT_NAME, PATIENT_ID, ACCESSION = "Verschluesselt^Hannelore", "MRN-7730019", "ACC-26-9911"
#: what the lung model builds for the chest phantom: SEG, SR, SC overlays, PDF, KOS
MODALITIES = {"SEG", "SR", "OT", "DOC", "KO"}
STORED = ("spool", "quarantine", "deid", "results", "outbox")


def _keys() -> StorageKeys:
    return StorageKeys.from_secret(base64.b64decode(new_secret()))


@pytest.fixture
def sealing() -> Any:
    """This process encrypting with a fresh key; plain writing again afterwards."""
    keys = _keys()
    at_rest.configure(keys.files, encrypt=True)
    yield keys
    at_rest.configure(keys.files, encrypt=False)


# ------------------------------------------------------------------------------ file format


@pytest.mark.parametrize("size", [0, 1, 4097, at_rest.CHUNK, at_rest.CHUNK + 1, 3 * at_rest.CHUNK])
def test_encrypted_files_read_back_whole_and_in_parts(sealing: StorageKeys, tmp_path: Path,
                                                      size: int) -> None:
    data = os.urandom(size)
    path = tmp_path / "f"
    at_rest.write_bytes(path, data)
    raw = path.read_bytes()
    chunks = max(1, -(-size // at_rest.CHUNK))
    assert raw.startswith(MAGIC) and len(raw) == 37 + size + 16 * chunks
    assert size < 64 or data[:64] not in raw
    assert at_rest.read_bytes(path) == data
    with at_rest.open_plain(path) as f:  # seekable: pydicom reads headers without the rest
        f.seek(size // 2)
        assert f.read(100) == data[size // 2:size // 2 + 100]
        f.seek(max(0, size // 2 - 10))  # one read across a chunk boundary is whole
        assert f.read(at_rest.CHUNK) == data[max(0, size // 2 - 10):][:at_rest.CHUNK]


def test_sealing_works_without_encrypt_into(sealing: StorageKeys, tmp_path: Path,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    """cryptography before 45 has no AESGCM.encrypt_into: seal_file falls back to encrypt."""

    class Plain:
        def __init__(self, aead: Any) -> None:
            self.encrypt, self.decrypt = aead.encrypt, aead.decrypt

    real = at_rest.FileKey.aead
    monkeypatch.setattr(at_rest.FileKey, "aead", lambda self, salt: Plain(real(self, salt)))
    data = os.urandom(at_rest.CHUNK + 5)
    (tmp_path / "plain").write_bytes(data)
    at_rest.seal_file(tmp_path / "plain", tmp_path / "sealed")
    monkeypatch.undo()
    assert at_rest.read_bytes(tmp_path / "sealed") == data


def test_altered_truncated_reordered_or_foreign_files_are_refused(sealing: StorageKeys,
                                                                  tmp_path: Path) -> None:
    data = os.urandom(3 * at_rest.CHUNK)
    path = tmp_path / "f"
    at_rest.write_bytes(path, data)
    raw = path.read_bytes()
    step = at_rest.CHUNK + 16
    first, second = raw[37:37 + step], raw[37 + step:37 + 2 * step]
    bad = {
        "a flipped bit": raw[:500] + bytes([raw[500] ^ 1]) + raw[501:],
        "cut at a chunk boundary": raw[:37 + 2 * step],
        "cut inside a chunk": raw[:-100],
        "two chunks swapped": raw[:37] + second + first + raw[37 + 2 * step:],
        "a chunk appended": raw + raw[37:37 + step],
    }
    for what, content in bad.items():
        path.write_bytes(content)
        with pytest.raises(SealedFileError, match=r"fails authentication|truncated"):
            at_rest.read_bytes(path)
        assert what
    other = _keys().files  # sealed with another node's key: named as such
    with (tmp_path / "plain").open("wb") as f:
        f.write(data[:10])
    at_rest.seal_file(tmp_path / "plain", tmp_path / "foreign", other)
    with pytest.raises(SealedFileError, match="another key"):
        at_rest.read_bytes(tmp_path / "foreign")


def test_plain_files_read_as_they_are_and_datasets_with_deferred_values(
        sealing: StorageKeys, tmp_path: Path) -> None:
    (source,) = ct_series(tmp_path / "ct", 1)
    assert at_rest.read_bytes(source) == source.read_bytes()  # not encrypted: as it is
    sealed = tmp_path / "sealed.dcm"
    at_rest.seal_file(source, sealed)
    plain = pydicom.dcmread(source)
    open_files = len(os.listdir("/proc/self/fd"))
    kept = [at_rest.dcmread(sealed, defer_size=1024) for _ in range(20)]  # pixels read when used
    assert len(os.listdir("/proc/self/fd")) == open_files  # no descriptor held per data set
    ds = kept[-1]
    assert ds.PixelData == plain.PixelData and ds.SOPInstanceUID == plain.SOPInstanceUID
    with at_rest.plain_file(sealed, tmp_path) as copy:  # for readers that need a file name
        assert copy.read_bytes() == source.read_bytes()
    assert not copy.exists()


def test_placement_and_quarantine_encrypt_and_leave_nothing_plain(sealing: StorageKeys,
                                                                   tmp_path: Path) -> None:
    spool = Spool(tmp_path / "var", 0, sealing)
    spool.prepare()
    data = os.urandom(5000)
    for settled in (True, False):  # the receive path settles first; placement alone also works
        received = spool.incoming / f"rcv-{settled}"
        received.write_bytes(data)
        if settled:
            spool.settle(received)
        relative = spool.relative_path(UID_PREFIX + "1", UID_PREFIX + f"1.{settled}")
        spool.place(received, relative)
        assert spool.absolute(relative).read_bytes().startswith(MAGIC)
        assert spool.read_bytes(relative) == data
    bad = spool.incoming / "bad"
    bad.write_bytes(data)
    name = spool.quarantine(bad)
    assert (spool.quarantine_dir / name).read_bytes().startswith(MAGIC)
    assert at_rest.read_bytes(spool.quarantine_dir / name) == data
    assert list(spool.incoming.iterdir()) == []


# ------------------------------------------------------------------------------ names


def test_names_are_keyed_digests_of_the_uids(tmp_path: Path) -> None:
    keys, other = _keys(), _keys()
    uid = "1.2.826.0.1.3680043.8.498.12345"
    a, b = Spool(tmp_path, 0, keys), Spool(tmp_path, 0, other)
    assert a.key(uid) == Spool(tmp_path, 0, keys).key(uid)  # stable for the key
    assert len({a.key(uid), b.key(uid), legacy_key(uid)}) == 3  # the UID alone does not say
    assert len(a.key(uid)) == 24 and int(a.key(uid), 16) >= 0
    relative = a.relative_path(uid, uid + ".1")
    assert uid not in relative and relative.startswith(a.key(uid)[:2] + "/" + a.key(uid) + "/")


def _legacy_spool(ledger: Ledger, var: Path, study_uid: str, count: int) -> list[str]:
    """A spool and ledger as nodes before keyed names wrote them: unkeyed digests, with a
    de-identified copy, a result and an outbox file (and its row) under the study's name."""
    store = var / "spool"
    lk = legacy_key(study_uid)
    sops = [f"{study_uid}.{i}" for i in range(1, count + 1)]
    for sop in sops:
        relative = f"{lk[:2]}/{lk}/{legacy_key(sop)}.dcm"
        (store / relative).parent.mkdir(parents=True, exist_ok=True)
        (store / relative).write_bytes(b"instance " + sop.encode())
        ledger.record_instance(ReceivedInstance(
            sop, "1.2.840.10008.5.1.4.1.1.2", study_uid, study_uid + ".0", "1.2.840.10008.1.2.1",
            "CT", (), 20, "TEST"), relative, lambda: None)
    for folder, name in (("deid", "000001.dcm"), ("results", "g1/lung-ct/result.json"),
                         ("outbox", "g1/lung-ct/sr.dcm")):
        path = var / folder / lk / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(folder.encode())
    (var / "deid" / f"{lk}.g2.tmp").mkdir()  # an interrupted de-identification
    study = ledger.study(study_uid)
    with ledger.engine.begin() as conn:
        Outbox(ledger.engine).add(conn, study.id, 1, [NewItem(
            "lung-ct", "dicom", "pacs", "2.25.1", "sr.dcm", f"{lk}/g1/lung-ct/sr.dcm")])
    return sops


def test_a_legacy_spool_is_renamed_with_its_ledger_paths_crash_safely(
        ledger: Ledger, tmp_path: Path) -> None:
    var = tmp_path / "var"
    spool = Spool(var, 0, _keys())
    spool.prepare()
    study_uid = UID_PREFIX + "4711"
    sops = _legacy_spool(ledger, var, study_uid, 3)
    lk, key = legacy_key(study_uid), spool.key(study_uid)
    # a migration that died after renaming the first file, before updating its row
    first = spool.relative_path(study_uid, sops[0])
    spool.absolute(first).parent.mkdir(parents=True)
    os.replace(var / "spool" / lk[:2] / lk / f"{legacy_key(sops[0])}.dcm", spool.absolute(first))

    done = migrate_names(spool, ledger.engine)
    assert (done.studies, done.files, done.folders, done.missing) == (1, 2, 3, 0)
    study = ledger.study(study_uid)
    paths = ledger.instance_paths(study.id)
    assert sorted(paths) == sorted(spool.relative_path(study_uid, s) for s in sops)
    for sop in sops:
        assert spool.read_bytes(spool.relative_path(study_uid, sop)) == b"instance " + sop.encode()
    assert [i.path for i in Outbox(ledger.engine).items(study.id)] == [f"{key}/g1/lung-ct/sr.dcm"]
    for folder in ("deid", "results", "outbox"):
        assert [p.name for p in (var / folder).iterdir()] == [key]
    names = [str(p.relative_to(var)) for p in var.rglob("*")]
    assert not [n for n in names if lk in n]  # nothing left under the unkeyed name
    assert (var / "spool" / MARKER).read_text().strip() == spool.keys.names_id
    # idempotent: the marker says done; forced, there is nothing left to do
    assert migrate_names(spool, ledger.engine).studies == 0
    assert migrate_names(spool, ledger.engine, force=True).studies == 0
    # a node whose key changed renames again, from the paths its ledger holds
    rekeyed = Spool(var, 0, _keys())
    assert migrate_names(rekeyed, ledger.engine).files == 3
    assert sorted(ledger.instance_paths(study.id)) == sorted(
        rekeyed.relative_path(study_uid, s) for s in sops)


# ------------------------------------------------------------------------- the running node


def _study(folder: Path, count: int, **values: str) -> tuple[str, list[Path]]:
    files = ct_series(folder, count)
    for path in files:
        ds = pydicom.dcmread(path)
        ds.PatientName, ds.PatientID, ds.AccessionNumber = PATIENT_NAME, PATIENT_ID, ACCESSION
        for keyword, value in values.items():
            setattr(ds, keyword, value)
        ds.save_as(path, enforce_file_format=True)
    return str(pydicom.dcmread(files[0]).StudyInstanceUID), files


def _stored_files(var: Path) -> list[Path]:
    return [p for folder in STORED for p in (var / folder).rglob("*")
            if p.is_file() and p.name != MARKER]


def _plain_leaks(path: Path) -> list[str]:
    raw = path.read_bytes()
    found = ["DICM at 128"] if raw[128:132] == b"DICM" else []
    return found + [v for v in ("Verschluesselt", "Hannelore", PATIENT_ID, ACCESSION)
                    if v.encode() in raw]


def _no_traceback(node: Any) -> None:
    assert "Traceback" not in node.log(), node.log()[-3000:]


@pytest.mark.integration
@pytest.mark.slow
def test_encrypted_node_takes_a_study_to_orthanc_and_keeps_nothing_plain(
        node_factory: Any, orthanc: Any, tmp_path: Path) -> None:  # noqa: F811
    from node.hl7.listener import MllpListener
    from tests.models.chest_phantom import chest_phantom, write_ct_series

    (tmp_path / "ct").mkdir()
    files = write_ct_series(chest_phantom(slices=48, size=160).volume, tmp_path / "ct")
    for path in files:
        ds = pydicom.dcmread(path)
        ds.PatientName, ds.PatientID, ds.AccessionNumber = PATIENT_NAME, PATIENT_ID, ACCESSION
        ds.save_as(path, enforce_file_format=True)
    study_uid = str(pydicom.dcmread(files[0]).StudyInstanceUID)
    models = Path(__file__).resolve().parents[2] / "models"
    with MllpListener(host="127.0.0.1", port=0, mode="AA", out=tmp_path / "oru.txt") as emr:
        node = node_factory({
            "storage": {"encrypt": True},
            "scp": {"receivers": 2},  # both receiving processes name and encrypt alike
            "completion": {"quiet_period_s": 0.5},
            "models": {"dir": str(models), "enabled": ["lung-ct"], "device": "cpu"},
            "delivery": {"poll_interval_s": 0.2, "timeout_s": 5.0, "retry_base_s": 0.3,
                         "dicom": [{"name": "pacs", "ae_title": orthanc.aet,
                                    "host": "127.0.0.1", "port": orthanc.dicom_port}],
                         "hl7": [{"name": "emr", "host": "127.0.0.1", "port": emr.port,
                                  "receiving_application": "EMR",
                                  "receiving_facility": "HOSP"}]},
        })
        node.start()
        half = len(files) // 2  # two associations
        node.storescu(*files[:half])
        node.storescu(*files[half:])
        row = node.wait_state(study_uid, "DONE", "FAILED", timeout=180)
        assert row["state"] == "DONE", row
        assert len(emr.received) == 1 and PATIENT_ID in emr.received[0]  # HL7 read decrypted

    (orthanc_study,) = orthanc.get("/studies")
    tags = orthanc.get(f"/studies/{orthanc_study}")
    assert tags["MainDicomTags"]["StudyInstanceUID"] == study_uid
    assert tags["PatientMainDicomTags"]["PatientID"] == PATIENT_ID
    results = [s for s in tags["Series"]
               if orthanc.get(f"/series/{s}")["MainDicomTags"]["Modality"] != "CT"]
    assert {orthanc.get(f"/series/{s}")["MainDicomTags"]["Modality"] for s in results} == MODALITIES
    # every result object Orthanc holds is valid DICOM per dciodvfy
    for series in results:
        for instance in orthanc.get(f"/series/{series}/instances"):
            target = tmp_path / f"{instance['ID']}.dcm"
            with urllib.request.urlopen(
                    f"http://127.0.0.1:{orthanc.http_port}/instances/{instance['ID']}/file") as r:
                target.write_bytes(r.read())
            check = subprocess.run(["/usr/bin/dciodvfy", str(target)], capture_output=True,
                                   text=True, check=False)
            errors = [line for line in (check.stdout + check.stderr).splitlines()
                      if line.startswith("Error")]
            assert errors == [], (instance["ID"], errors)

    stored = _stored_files(node.var_dir)
    kinds = {p.relative_to(node.var_dir).parts[0] for p in stored}
    assert kinds == {"spool", "deid", "results", "outbox"}
    assert len(list((node.var_dir / "spool").rglob("*.dcm"))) == len(files)
    assert {p: _plain_leaks(p) for p in stored if _plain_leaks(p)} == {}
    assert all(p.read_bytes().startswith(MAGIC) for p in stored)
    assert list((node.var_dir / "incoming").iterdir()) == []  # the plain copies are gone
    spool_folders = {p.parent for p in (node.var_dir / "spool").rglob("*.dcm")}
    assert len(spool_folders) == 1  # one study, one keyed folder, whichever process received
    node.stop()
    _no_traceback(node)


@pytest.mark.integration
def test_a_tampered_spool_file_fails_the_job_with_a_clear_reason(
        node_factory: Any, tmp_path: Path) -> None:
    node = node_factory({"storage": {"encrypt": True}})
    node.start()
    study_uid, files = _study(tmp_path / "ct", 4)
    node.storescu(*files)
    victim = sorted((node.var_dir / "spool").rglob("*.dcm"))[2]
    raw = bytearray(victim.read_bytes())
    raw[len(raw) // 2] ^= 0x01
    victim.write_bytes(raw)
    assert node.cli("force-complete", study_uid).returncode == 0
    row = node.wait_state(study_uid, "FAILED", "DEIDENTIFIED", timeout=30)
    assert row["state"] == "FAILED"
    assert "fails authentication" in row["state_reason"], row["state_reason"]
    assert victim.name in row["state_reason"] and study_uid not in row["state_reason"]
    node.stop()
    _no_traceback(node)


@pytest.mark.integration
def test_turning_encryption_on_keeps_plain_files_readable(node_factory: Any,
                                                          tmp_path: Path) -> None:
    node = node_factory()
    node.start()
    study_uid, files = _study(tmp_path / "ct", 6)
    node.storescu(*files[:3])
    node.stop()
    plain = sorted((node.var_dir / "spool").rglob("*.dcm"))
    assert len(plain) == 3 and all(p.read_bytes()[128:132] == b"DICM" for p in plain)
    node.settings["storage"] = {"encrypt": True}
    node.settings["completion"] = {"quiet_period_s": 0.5}
    node.start()
    node.storescu(*files[3:])
    row = node.wait_state(study_uid, "DEIDENTIFIED", "FAILED", timeout=30)
    assert row["state_reason"] == "6 instances de-identified, 0 quarantined (burned-in text)"
    spool = sorted((node.var_dir / "spool").rglob("*.dcm"))
    assert sum(p.read_bytes().startswith(MAGIC) for p in spool) == 3  # the new ones
    assert all(p.read_bytes().startswith(MAGIC) for p in (node.var_dir / "deid").rglob("*.dcm"))
    node.stop()
    _no_traceback(node)


@pytest.mark.integration
def test_a_spool_named_by_an_older_node_is_renamed_at_start_and_still_processed(
        node_factory: Any, tmp_path: Path) -> None:
    node = node_factory({"completion": {"quiet_period_s": 0.5}})
    node.start()
    study_uid, files = _study(tmp_path / "ct", 4)
    node.storescu(*files[:3])
    node.wait_state(study_uid, "DEIDENTIFIED", timeout=30)
    node.stop()
    _make_legacy(node.var_dir, study_uid)
    lk = legacy_key(study_uid)
    assert (node.var_dir / "deid" / lk).is_dir()

    node.start()
    assert "spool names keyed: 1 studies, 3 files and 1 folders renamed" in node.log()
    names = [str(p.relative_to(node.var_dir)) for p in node.var_dir.rglob("*")]
    assert not [n for n in names if lk in n]
    node.storescu(files[3])  # a late instance: the whole study is read again, from new names
    row = node.wait_state(study_uid, "DEIDENTIFIED", timeout=30)
    assert row["state_reason"] == "4 instances de-identified, 0 quarantined (burned-in text)"
    assert row["instances"] == 4 and row["generation"] == 2
    node.stop()
    _no_traceback(node)


def _make_legacy(var: Path, study_uid: str) -> None:
    """Rename a stopped node's spool as nodes before keyed names named it: unkeyed digests of
    the UIDs, in the files' and folders' names and in the ledger's paths."""
    (var / "spool" / MARKER).unlink()
    db = sqlite3.connect(var / "ledger.sqlite3")
    lk = legacy_key(study_uid)
    rows = db.execute("select id, sop_instance_uid, path from instances").fetchall()
    for row_id, sop, path in rows:
        legacy = f"{lk[:2]}/{lk}/{legacy_key(sop)}.dcm"
        (var / "spool" / legacy).parent.mkdir(parents=True, exist_ok=True)
        os.replace(var / "spool" / path, var / "spool" / legacy)
        db.execute("update instances set path = ? where id = ?", (legacy, row_id))
    db.commit()
    db.close()
    keyed = Path(rows[0][2]).parts[1]
    shutil.rmtree(var / "spool" / keyed[:2])
    os.replace(var / "deid" / keyed, var / "deid" / lk)
