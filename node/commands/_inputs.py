"""Command-line inputs: files and folders (searched recursively), in a stable order."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path


def input_files(inputs: list[Path]) -> Iterator[Path]:
    for item in inputs:
        if item.is_dir():
            yield from sorted(p for p in item.rglob("*") if p.is_file())
        else:
            yield item
