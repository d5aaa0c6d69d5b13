"""docker-compose.yml is valid for Docker Compose (checked by the client; no engine needed)."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize("profile", [[], ["--profile", "postgres"], ["--profile", "scale"]])
def test_compose_file_is_valid(profile: list[str]) -> None:
    compose = shutil.which("docker-compose")
    if compose is None:
        pytest.fail("docker-compose is not installed: run scripts/setup (apt docker-compose)")
    result = subprocess.run([compose, "-f", str(REPO / "docker-compose.yml"), *profile,
                             "config", "-q"], capture_output=True, text=True, cwd=REPO)
    assert result.returncode == 0, result.stderr


def test_compose_wires_node_and_orthanc_with_health_checks() -> None:
    compose = shutil.which("docker-compose")
    assert compose is not None
    result = subprocess.run([compose, "-f", str(REPO / "docker-compose.yml"), "config",
                             "--services"], capture_output=True, text=True, cwd=REPO, check=True)
    assert {"node", "orthanc"} <= set(result.stdout.split())
    text = (REPO / "docker-compose.yml").read_text()
    assert text.count("healthcheck:") >= 2


def test_the_scale_profile_runs_workers_on_the_nodes_var_rabbitmq_and_postgres() -> None:
    compose = shutil.which("docker-compose")
    assert compose is not None

    def config(*args: str) -> str:
        return subprocess.run(
            [compose, "-f", str(REPO / "docker-compose.yml"), *args], capture_output=True,
            text=True, cwd=REPO, check=True,
            env={"PATH": "/usr/bin:/bin", "DICOM_NODE_WORKERS": "true"}).stdout

    assert {"node", "orthanc", "worker", "rabbitmq", "postgres"} <= set(
        config("--profile", "scale", "config", "--services").split())
    text = config("--profile", "scale", "config")
    # one service's block: from its name to the next service at the same indent
    blocks = dict(re.findall(r"(?m)^  ([a-z]+):\n((?:    .*\n|\n)+)", text))
    node, worker = blocks["node"], blocks["worker"]
    # only with the profile: without it, the embedded default (no worker, no broker)
    for name in ("worker", "rabbitmq"):
        assert re.search(r"profiles:\n\s+- scale\n", blocks[name]), blocks[name]
    assert "profiles" not in node
    assert re.search(r"command:\n\s+- worker\n", worker)
    assert re.search(r"scale: [2-9]", worker)
    assert "DICOM_NODE__WORKERS__ENABLED: 'true'" in node or \
        "DICOM_NODE__WORKERS__ENABLED: \"true\"" in node or \
        "DICOM_NODE__WORKERS__ENABLED: true" in node, node
    (broker,) = set(re.findall(r"DICOM_NODE__WORKERS__BROKER_URL: (\S+)", node))
    assert broker.startswith("amqp://") and "@rabbitmq:5672/" in broker
    assert f"DICOM_NODE__WORKERS__BROKER_URL: {broker}" in worker
    assert "DICOM_NODE__NODE__DATABASE_URL: postgresql" in worker
    # the spool is shared: the workers mount the node's var volume where the node has it
    for block in (node, worker):
        assert "- node-var:/var/lib/dicom-node:rw\n" in block, block
