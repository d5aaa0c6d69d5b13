"""orthanc/: a real Orthanc with the project's configuration and route.lua forwards each stable
study to the node once, and never what the node sent back (that would loop).

dcmtk's storescp, called with the node's AE title, stands in for the node; studies go into
Orthanc with dcmtk's storescu. StableAge is shortened to 1 s.
"""

from __future__ import annotations

import json
import re
import subprocess
import time
import urllib.request
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pydicom
import pytest
from pydicom.uid import generate_uid

from tests.conftest import REPO, _env, dcmtk, free_port, run
from tests.data import UID_PREFIX, ct_series
from tests.orthanc import OrthancProcess

pytestmark = pytest.mark.integration

ORTHANC_DIR = REPO / "orthanc"
NODE_AET = "DICOM_NODE"
MODALITY_AET = "CT_SCANNER"


def orthanc_json(name: str = "orthanc.json") -> dict[str, Any]:
    """A configuration file of orthanc/ as Orthanc reads it (whole-line // comments dropped)."""
    text = (ORTHANC_DIR / name).read_text()
    return dict(json.loads(re.sub(r"(?m)^\s*//.*$", "", text)))


@dataclass
class Receiver:
    """dcmtk's storescp as the node: every received object in its own file (+uf)."""

    folder: Path
    port: int = field(default_factory=free_port)
    proc: subprocess.Popen[bytes] | None = None

    def start(self) -> Receiver:
        self.folder.mkdir(parents=True, exist_ok=True)
        self.proc = subprocess.Popen(
            [dcmtk("storescp"), "-aet", NODE_AET, "+uf", "-od", str(self.folder), str(self.port)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=_env(),
        )
        wait_for(lambda: run([dcmtk("echoscu"), "-aec", NODE_AET, "127.0.0.1",
                              str(self.port)]).returncode == 0, "storescp to answer C-ECHO")
        return self

    def received(self) -> Counter[str]:
        """SOP Instance UID -> how many times it arrived."""
        return Counter(str(pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID)
                       for p in self.folder.iterdir() if p.is_file())

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(timeout=10)


def wait_for(check: Callable[[], bool], what: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.1)
    pytest.fail(f"timed out waiting for {what}")


def routing_lines(orthanc: OrthancProcess) -> list[str]:
    """route.lua's decisions, one per routed study: 'dicom-node routing: study ID (why): ...'."""
    return re.findall(r"Lua says: (dicom-node routing: study \S+ \(.*)", orthanc.log())


def wait_idle(orthanc: OrthancProcess) -> None:
    """Until every Orthanc job has finished."""
    wait_for(lambda: all(job["State"] in ("Success", "Failure")
                         for job in orthanc.get("/jobs?expand")), "Orthanc's jobs to finish")


def store(orthanc: OrthancProcess, files: list[Path], calling: str) -> None:
    result = run([dcmtk("storescu"), "-aet", calling, "-aec", orthanc.aet, "127.0.0.1",
                  str(orthanc.dicom_port), *map(str, files)])
    assert result.returncode == 0, result.stderr


def derived(source: Path, out: Path, *, series_uid: str, manufacturer: str | None = None) -> Path:
    """A new instance in the source's study (new SOP Instance UID, given series)."""
    ds = pydicom.dcmread(source)
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid(UID_PREFIX)
    ds.SeriesInstanceUID = series_uid
    if manufacturer is not None:
        ds.Manufacturer = manufacturer
    ds.save_as(out, enforce_file_format=True)
    return out


def sop_uid(path: Path) -> str:
    return str(pydicom.dcmread(path, stop_before_pixels=True).SOPInstanceUID)


def sop_series(path: Path) -> str:
    return str(pydicom.dcmread(path, stop_before_pixels=True).SeriesInstanceUID)


def orthanc_post(orthanc: OrthancProcess, route: str, body: bytes = b"{}") -> Any:
    request = urllib.request.Request(f"http://127.0.0.1:{orthanc.http_port}{route}", data=body,
                                     method="POST")
    with urllib.request.urlopen(request, timeout=10) as answer:
        return json.loads(answer.read() or b"null")


def marks(orthanc: OrthancProcess) -> Counter[str]:
    return Counter(orthanc.get(f"/instances/{i}/metadata?expand").get("DicomNodeRouting", "")
                   for i in orthanc.get("/instances"))


@pytest.fixture
def receiver(tmp_path: Path) -> Iterator[Receiver]:
    node = Receiver(tmp_path / "received").start()
    yield node
    node.stop()


@pytest.fixture
def make_orthanc(tmp_path: Path, receiver: Receiver) -> Iterator[Callable[..., OrthancProcess]]:
    servers: list[OrthancProcess] = []

    def make(stable_age: int = 1) -> OrthancProcess:
        server = OrthancProcess(
            tmp_path / "orthanc",
            config={**orthanc_json(), "StableAge": stable_age},
            lua_scripts=[ORTHANC_DIR / "route.lua"],
            # the node's entry in DicomModalities comes from the environment, as in production
            env={"DICOM_NODE_HOST": "127.0.0.1", "DICOM_NODE_PORT": str(receiver.port),
                 "DICOM_NODE_AET": NODE_AET},
        )
        servers.append(server)
        return server.start()

    yield make
    for server in servers:
        server.stop()


def test_config_declares_the_node_and_loads_the_routing(make_orthanc: Any) -> None:
    orthanc = make_orthanc()
    node = orthanc.get("/modalities/dicom-node/configuration")
    assert (node["AET"], node["Host"]) == (NODE_AET, "127.0.0.1")
    assert 'dicom-node routing: forwarding stable studies to modality "dicom-node"' in orthanc.log()
    assert orthanc_json()["StableAge"] >= 30  # production value; the tests shorten it


def test_docker_settings_add_to_the_configuration_without_clashing() -> None:
    # Orthanc refuses a key defined in two files of the folder it reads
    docker = orthanc_json("docker.json")
    assert not set(docker) & set(orthanc_json())
    assert docker["RemoteAccessAllowed"] is True and docker["AuthenticationEnabled"] is True


def test_stable_study_is_forwarded_once_and_the_nodes_objects_never(
    make_orthanc: Any, receiver: Receiver, tmp_path: Path
) -> None:
    orthanc = make_orthanc()
    series = ct_series(tmp_path / "ct", 12)
    store(orthanc, series, MODALITY_AET)
    wait_for(lambda: len(routing_lines(orthanc)) == 1, "the study to become stable and be routed")
    wait_idle(orthanc)
    assert receiver.received() == Counter({sop_uid(p): 1 for p in series})
    (study,) = orthanc.get("/studies")
    (line,) = routing_lines(orthanc)
    assert line.startswith(f"dicom-node routing: study {study} (stable): forwarding 12 instance(s)")

    # What the node sends back into the same study: by its AE title, or written by it.
    extra = tmp_path / "extra"
    extra.mkdir()
    by_aet = derived(series[0], extra / "seg.dcm", series_uid=generate_uid(UID_PREFIX))
    by_maker = derived(series[0], extra / "sr.dcm", series_uid=generate_uid(UID_PREFIX),
                       manufacturer="dicom-node")
    late = derived(series[-1], extra / "late.dcm", series_uid=sop_series(series[-1]))
    store(orthanc, [by_aet], NODE_AET)
    store(orthanc, [by_maker, late], MODALITY_AET)
    wait_for(lambda: len(routing_lines(orthanc)) >= 2, "the study to be routed again")
    wait_for(lambda: marks(orthanc) == Counter({"forwarded": 13, "from-node": 2}),
             "the late instance to be forwarded")
    wait_idle(orthanc)

    # Only the modality's late instance went, once; nothing was sent twice.
    assert receiver.received() == Counter({sop_uid(p): 1 for p in [*series, late]})
    later = routing_lines(orthanc)[1:]  # one line, or two if the stores fell in two stable ages
    assert sum(int(n) for n in re.findall(r"forwarding (\d+) instance", "\n".join(later))) == 1
    assert "12 already forwarded" in later[0]
    assert later[-1].endswith("from the node") and ", 0 from the node" not in later[-1]
    assert "CQ500" not in "\n".join(routing_lines(orthanc))  # no patient name or ID in the log



def test_only_results_arriving_make_no_forward(
    make_orthanc: Any, receiver: Receiver, tmp_path: Path
) -> None:
    orthanc = make_orthanc()
    series = ct_series(tmp_path / "ct", 3)
    store(orthanc, series, MODALITY_AET)
    wait_for(lambda: len(routing_lines(orthanc)) == 1, "the study to be routed")
    wait_idle(orthanc)
    result = derived(series[0], tmp_path / "result.dcm", series_uid=generate_uid(UID_PREFIX))
    store(orthanc, [result], NODE_AET)
    wait_for(lambda: len(routing_lines(orthanc)) == 2, "the study to be routed again")
    wait_idle(orthanc)
    assert "nothing new to forward; 3 already forwarded, 1 from the node" in routing_lines(orthanc)[1]
    assert len(orthanc.get("/jobs")) == 1
    assert receiver.received() == Counter({sop_uid(p): 1 for p in series})


def test_restart_forwards_what_was_pending_and_resends_nothing(
    make_orthanc: Any, receiver: Receiver, tmp_path: Path
) -> None:
    orthanc = make_orthanc(stable_age=3600)  # the study cannot become stable before the stop
    series = ct_series(tmp_path / "ct", 4)
    store(orthanc, series, MODALITY_AET)
    wait_for(lambda: marks(orthanc) == Counter({"pending": 4}), "route.lua to mark the instances")
    orthanc.stop(keep_storage=True)
    assert receiver.received() == Counter()

    orthanc.start()  # Orthanc forgot the unstable study; route.lua finds it at start
    wait_for(lambda: len(routing_lines(orthanc)) == 1, "the pending study to be forwarded")
    assert "(not forwarded before the last stop): forwarding 4 instance(s)" in routing_lines(orthanc)[0]
    wait_idle(orthanc)
    assert receiver.received() == Counter({sop_uid(p): 1 for p in series})

    orthanc.stop(keep_storage=True)
    orthanc.start()
    time.sleep(1.0)
    assert len(routing_lines(orthanc)) == 1
    assert receiver.received() == Counter({sop_uid(p): 1 for p in series})


def test_failed_forward_goes_back_to_pending(
    make_orthanc: Any, receiver: Receiver, tmp_path: Path
) -> None:
    receiver.stop()  # the node is down
    orthanc = make_orthanc()
    series = ct_series(tmp_path / "ct", 2)
    store(orthanc, series, MODALITY_AET)
    wait_for(lambda: 'to "dicom-node" failed' in orthanc.log(), "the forward to fail")
    wait_for(lambda: marks(orthanc) == Counter({"pending": 2}), "the marks to go back to pending")
    (job,) = orthanc.get("/jobs")
    receiver.start()
    orthanc_post(orthanc, f"/jobs/{job}/resubmit")
    wait_for(lambda: marks(orthanc) == Counter({"forwarded": 2}), "the resubmitted job to deliver")
    assert receiver.received() == Counter({sop_uid(p): 1 for p in series})

