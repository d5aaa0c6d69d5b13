"""Helpers of the result writers' tests; their fixtures live in tests/result_contexts.py."""

from __future__ import annotations

import subprocess
from pathlib import Path

from tests.result_contexts import CREATED, REPO

__all__ = ["CREATED", "REPO", "dciodvfy"]


def dciodvfy(path: Path) -> tuple[list[str], list[str]]:
    """(errors, warnings) lines from dicom3tools' dciodvfy for one file."""
    out = subprocess.run(["dciodvfy", str(path)], capture_output=True, text=True)
    lines = (out.stdout + out.stderr).splitlines()
    return ([ln for ln in lines if ln.startswith("Error")],
            [ln for ln in lines if ln.startswith("Warning")])
