"""Who may associate: called AE title, calling AE allow-list with hosts, DICOM TLS with dcmtk."""

from __future__ import annotations

import datetime
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from tests.conftest import dcmtk, run
from tests.data import sample_file

pytestmark = pytest.mark.integration


def test_wrong_called_ae_title_is_rejected_with_reason_7(node) -> None:
    result = node.echo(called="NOT_THE_NODE")
    assert result.returncode != 0
    assert "Called AE Title Not Recognized" in result.stderr
    assert "Rejected Permanent" in result.stderr


def test_allow_list_admits_listed_callers_only(node_factory) -> None:
    node = node_factory({"scp": {"allowed_callers": [
        {"ae_title": "CT_SCANNER"},
        {"ae_title": "READYCHECK"},
        {"ae_title": "ORTHANC", "host": "127.0.0.1"},
        {"ae_title": "REMOTE_ONLY", "host": "10.20.30.40"},
    ]}}).start()
    assert node.echo(calling="CT_SCANNER").returncode == 0
    assert node.echo(calling="ORTHANC").returncode == 0  # listed with this host
    for caller in ("INTRUDER", "REMOTE_ONLY"):  # not listed / listed for another host
        result = node.echo(calling=caller)
        assert result.returncode != 0
        assert "Calling AE Title Not Recognized" in result.stderr
    node.storescu(sample_file("CT_small.dcm"), calling="CT_SCANNER")
    refused = node.storescu(sample_file("MR_small.dcm"), calling="INTRUDER", check=False)
    assert refused.returncode != 0
    assert [s["calling_ae_title"] for s in node.status()] == ["CT_SCANNER"]
    assert "association rejected: calling AE 'INTRUDER' from 127.0.0.1" in node.log()


# ------------------------------------------------------------------------------------ TLS


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _cert(subject: str, key: ec.EllipticCurvePrivateKey, issuer: str, issuer_key: ec.EllipticCurvePrivateKey,
          *, ca: bool) -> x509.Certificate:
    now = datetime.datetime.now(datetime.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(subject)).issuer_name(_name(issuer))
        .public_key(key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    if not ca:
        builder = builder.add_extension(x509.SubjectAlternativeName(
            [x509.DNSName("localhost"), x509.IPAddress(__import__("ipaddress").ip_address("127.0.0.1"))]),
            critical=False)
    return builder.sign(issuer_key, hashes.SHA256())


def _write(path: Path, key: ec.EllipticCurvePrivateKey, cert: x509.Certificate) -> tuple[Path, Path]:
    key_path, cert_path = path.with_suffix(".key"), path.with_suffix(".pem")
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return key_path, cert_path


@pytest.fixture
def pki(tmp_path: Path) -> dict[str, Path]:
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = _cert("Test Hospital CA", ca_key, "Test Hospital CA", ca_key, ca=True)
    out: dict[str, Path] = {}
    _, out["ca"] = _write(tmp_path / "ca", ca_key, ca)
    for who in ("node", "modality"):
        key = ec.generate_private_key(ec.SECP256R1())
        out[f"{who}_key"], out[f"{who}_cert"] = _write(tmp_path / who, key, _cert(who, key, "Test Hospital CA", ca_key, ca=False))
    rogue_key = ec.generate_private_key(ec.SECP256R1())
    out["rogue_key"], out["rogue_cert"] = _write(tmp_path / "rogue", rogue_key,
                                                 _cert("rogue", rogue_key, "rogue", rogue_key, ca=False))
    return out


def _tls_node(node_factory, pki: dict[str, Path], require_client: bool):
    node = node_factory({"scp": {"tls": {
        "enabled": True, "certificate": str(pki["node_cert"]), "private_key": str(pki["node_key"]),
        "ca_certificates": str(pki["ca"]), "require_client_certificate": require_client}}})
    node.start(wait=False)
    return node


def _tls_store(node, pki: dict[str, Path], who: str | None, path: Path):
    tls = (["+tls", str(pki[f"{who}_key"]), str(pki[f"{who}_cert"])] if who else ["+tla"])
    return run([dcmtk("storescu"), *tls, "+cf", str(pki["ca"]),
                "-aec", node.ae_title, "127.0.0.1", str(node.port), str(path)])


def _wait_tls_ready(node, pki: dict[str, Path]) -> None:
    import time
    for _ in range(100):
        out = run([dcmtk("echoscu"), "+tls", str(pki["modality_key"]), str(pki["modality_cert"]),
                   "+cf", str(pki["ca"]), "-aec", node.ae_title, "127.0.0.1", str(node.port)])
        if out.returncode == 0:
            return
        assert node.alive(), node.log()
        time.sleep(0.1)
    pytest.fail("TLS node never answered:\n" + node.log())


def test_tls_with_client_certificates(node_factory, pki: dict[str, Path]) -> None:
    node = _tls_node(node_factory, pki, require_client=True)
    _wait_tls_ready(node, pki)
    ok = _tls_store(node, pki, "modality", sample_file("CT_small.dcm"))
    assert ok.returncode == 0, ok.stderr
    assert len(node.status()) == 1
    # no client certificate, a certificate from another CA, and plain DICOM are all refused
    for refused in (_tls_store(node, pki, None, sample_file("MR_small.dcm")),
                    _tls_store(node, pki, "rogue", sample_file("MR_small.dcm")),
                    node.storescu(sample_file("MR_small.dcm"), check=False)):
        assert refused.returncode != 0
        assert "Association Request Failed" in refused.stderr, refused.stderr
    assert len(node.status()) == 1
    assert node.alive()


def test_tls_without_client_certificates(node_factory, pki: dict[str, Path]) -> None:
    node = _tls_node(node_factory, pki, require_client=False)
    _wait_tls_ready(node, pki)
    anonymous = _tls_store(node, pki, None, sample_file("CT_small.dcm"))
    assert anonymous.returncode == 0, anonymous.stderr
    assert len(node.status()) == 1
