"""A real Orthanc (Debian package) as the PACS, on free ports, in a temporary folder."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import free_port

ORTHANC = "/usr/sbin/Orthanc"


@dataclass
class OrthancProcess:
    workdir: Path
    aet: str = "ORTHANC"
    http_port: int = field(default_factory=free_port)
    dicom_port: int = field(default_factory=free_port)
    proc: subprocess.Popen[bytes] | None = None

    def start(self) -> OrthancProcess:
        if not Path(ORTHANC).exists():
            pytest.fail("Orthanc is not installed at /usr/sbin/Orthanc: run .ci/run (apt orthanc)")
        storage = self.workdir / "storage"
        storage.mkdir(parents=True, exist_ok=True)
        config = {
            "Name": "dicom-node-test", "HttpPort": self.http_port, "DicomPort": self.dicom_port,
            "DicomAet": self.aet, "StorageDirectory": str(storage),
            "IndexDirectory": str(storage), "RemoteAccessAllowed": False,
            "AuthenticationEnabled": False, "DicomAlwaysAllowStore": True,
            "DicomCheckCalledAet": False, "UnknownSopClassAccepted": True, "Plugins": [],
        }
        path = self.workdir / "orthanc.json"
        path.write_text(json.dumps(config))
        log = (self.workdir / "orthanc.log").open("ab")
        env = {**os.environ, "TCP_NODELAY": "1"}
        self.proc = subprocess.Popen([ORTHANC, str(path)], stdout=log, stderr=subprocess.STDOUT,
                                     env=env)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                self.get("/system")
                return self
            except OSError:
                if self.proc.poll() is not None:
                    pytest.fail("Orthanc exited:\n" + (self.workdir / "orthanc.log").read_text())
                time.sleep(0.1)
        pytest.fail("Orthanc did not answer on its REST port")

    def get(self, route: str) -> Any:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.http_port}{route}", timeout=10) as r:
            return json.loads(r.read())

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        shutil.rmtree(self.workdir / "storage", ignore_errors=True)


@pytest.fixture
def orthanc(tmp_path: Path) -> Any:
    server = OrthancProcess(tmp_path / "orthanc").start()
    yield server
    server.stop()
