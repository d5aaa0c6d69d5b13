"""The pynetdicom internals the fast paths use are named in node/scp/_pynetdicom.py, all of them,
and the installed pynetdicom has each one that can be checked on its class."""

from __future__ import annotations

import re
from pathlib import Path

from node.scp import _pynetdicom

SCP = Path(__file__).resolve().parents[2] / "node" / "scp"
#: an underscore attribute reached on a pynetdicom object (the DUL, an association, its socket,
#: DIMSE or ACSE provider, the server's request handler)
USE = re.compile(r"\b(?:dul|assoc|assoc_socket|dimse|_dul|_assoc|super\(\))\.(_[a-z]\w*)")


def test_the_installed_pynetdicom_has_every_listed_internal() -> None:
    assert _pynetdicom.missing() == []


def test_every_internal_the_scp_modules_use_is_listed() -> None:
    listed = {i.name for i in _pynetdicom.INTERNALS}
    used = {(path.name, name) for path in SCP.glob("*.py") if path.name != "_pynetdicom.py"
            for name in USE.findall(path.read_text())}
    assert used, "the scan finds nothing: the pattern no longer matches the code"
    assert sorted((f, n) for f, n in used if n not in listed) == []


def test_a_missing_internal_is_named() -> None:
    real = _pynetdicom.INTERNALS
    try:
        _pynetdicom.INTERNALS = (*real, _pynetdicom.Internal(
            "pynetdicom.dul:DULServiceProvider", "_no_such_thing", "test", ("test",)))
        assert _pynetdicom.missing() == ["pynetdicom.dul:DULServiceProvider._no_such_thing"]
    finally:
        _pynetdicom.INTERNALS = real
