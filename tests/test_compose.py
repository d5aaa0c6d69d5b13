"""docker-compose.yml is valid for Docker Compose (checked by the client; no engine needed)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize("profile", [[], ["--profile", "postgres"]])
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
