"""A real Orthanc (Debian package) as the PACS, on free ports, in a temporary folder.

``config`` adds Orthanc settings (for example orthanc/orthanc.json's, with a short StableAge);
the fixture's ports, AE title, folders and local-only HTTP always win. ``lua_scripts`` are loaded
in that order; ``env`` fills "${VARIABLE}" values of the configuration.
"""

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
    config: dict[str, Any] = field(default_factory=dict)
    lua_scripts: list[Path] = field(default_factory=list)
    env: dict[str, str] = field(default_factory=dict)

    @property
    def log_path(self) -> Path:
        return self.workdir / "orthanc.log"

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def start(self) -> OrthancProcess:
        if not Path(ORTHANC).exists():
            pytest.fail("Orthanc is not installed at /usr/sbin/Orthanc: run .ci/run (apt orthanc)")
        storage = self.workdir / "storage"
        storage.mkdir(parents=True, exist_ok=True)
        config = {
            "Name": "dicom-node-test", "DicomAlwaysAllowStore": True,
            "DicomCheckCalledAet": False, "UnknownSopClassAccepted": True, "Plugins": [],
            **self.config,
            "HttpPort": self.http_port, "DicomPort": self.dicom_port,
            "DicomAet": self.aet, "StorageDirectory": str(storage),
            "IndexDirectory": str(storage), "RemoteAccessAllowed": False,
            "AuthenticationEnabled": False,
        }
        if self.lua_scripts:
            config["LuaScripts"] = [str(p) for p in self.lua_scripts]
        path = self.workdir / "orthanc.json"
        path.write_text(json.dumps(config))
        log = self.log_path.open("ab")
        env = {**os.environ, "TCP_NODELAY": "1", **self.env}
        self.proc = subprocess.Popen([ORTHANC, str(path)], stdout=log, stderr=subprocess.STDOUT,
                                     env=env)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                self.get("/system")
                return self
            except OSError:
                if self.proc.poll() is not None:
                    pytest.fail("Orthanc exited:\n" + self.log())
                time.sleep(0.1)
        pytest.fail("Orthanc did not answer on its REST port")

    def get(self, route: str) -> Any:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.http_port}{route}", timeout=10) as r:
            return json.loads(r.read())

    def stop(self, *, keep_storage: bool = False) -> None:
        """Stop Orthanc; ``keep_storage`` keeps its database for a restart with start()."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=20)
        if not keep_storage:
            shutil.rmtree(self.workdir / "storage", ignore_errors=True)


@pytest.fixture
def orthanc(tmp_path: Path) -> Any:
    server = OrthancProcess(tmp_path / "orthanc").start()
    yield server
    server.stop()
