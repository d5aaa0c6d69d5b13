"""The arrows between the node's layers (../shared/ARCHITECTURE.md), read from every module's
imports (ast, function-level imports included), so that a new wrong arrow fails here.

- ``node.core`` imports nothing of the node above it;
- the wire (``node.scp``) imports the core only: no pipeline stage, and no torch, not even
  through a module it imports;
- the result writers (``node.sr_writer``) import the core only: they never send;
- ``node.hl7`` imports the core only;
- ``node.pipeline`` imports the core, the wire, the writers and HL7;
- nothing below the composition root (``node.app``) imports the CLI (``node.commands``) or the
  web; the composition root does not import the CLI either.
"""

from __future__ import annotations

import ast
import importlib
from pathlib import Path

import pytest

NODE = Path(__file__).resolve().parents[1] / "node"

#: layer -> the node packages its modules may import (besides ``node`` itself, for __version__)
MAY_IMPORT: dict[str, tuple[str, ...]] = {
    "node.core": ("node.core",),
    "node.scp": ("node.core", "node.scp"),
    "node.sr_writer": ("node.core", "node.sr_writer"),
    "node.hl7": ("node.core", "node.hl7"),
    "node.pipeline": ("node.core", "node.scp", "node.sr_writer", "node.hl7", "node.pipeline"),
    "node.web": ("node.core", "node.pipeline", "node.web"),
    "node.preflight": ("node.core", "node.scp", "node.pipeline"),
    "node.app": ("node.core", "node.scp", "node.sr_writer", "node.hl7", "node.pipeline",
                 "node.preflight", "node.web"),
    "node.commands": ("node",),
}
#: third-party packages a layer must never load, directly or through the node's modules
NEVER: dict[str, tuple[str, ...]] = {"node.scp": ("torch",), "node.core": ("torch",)}


def _module_name(path: Path) -> str:
    parts = path.relative_to(NODE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {_module_name(p): p for p in sorted(NODE.rglob("*.py"))}


def imports(module: str, source: str) -> set[str]:
    """Every module ``source`` imports, absolute, with each name of a ``from`` import that is
    itself a module (``from node.core import db`` -> node.core.db)."""
    found: set[str] = set()
    package = module if MODULES.get(module, Path()).name == "__init__.py" else \
        module.rpartition(".")[0]
    for n in ast.walk(ast.parse(source)):
        if isinstance(n, ast.Import):
            found.update(a.name for a in n.names)
        elif isinstance(n, ast.ImportFrom):
            base = n.module or ""
            if n.level:
                anchor = package.split(".")[: len(package.split(".")) - (n.level - 1)]
                base = ".".join([*anchor, base] if base else anchor)
            found.add(base)
            found.update(f"{base}.{a.name}" for a in n.names if f"{base}.{a.name}" in MODULES)
    return found


def _layer(module: str) -> str | None:
    return next((layer for layer in sorted(MAY_IMPORT, key=len, reverse=True)
                 if module == layer or module.startswith(layer + ".")), None)


def violations(module: str, source: str) -> list[str]:
    """The wrong arrows of one module, as 'module -> imported'."""
    layer = _layer(module)
    if layer is None:
        return []
    allowed = MAY_IMPORT[layer]
    out = []
    for target in sorted(imports(module, source)):
        if target == "node" or not target.startswith("node."):
            continue
        if not any(target == a or target.startswith(a + ".") for a in allowed):
            out.append(f"{module} -> {target}")
    return out


def _closure(module: str) -> set[str]:
    seen, todo = set(), [module]
    while todo:
        current = todo.pop()
        if current in seen or current not in MODULES:
            continue
        seen.add(current)
        todo += [t for t in imports(current, MODULES[current].read_text()) if t in MODULES]
    return seen


def test_every_module_imports() -> None:
    scripts = {"node.commands.__main__",  # runs the command
               "node.core.migrations.env"}  # Alembic's script, run by Alembic only
    for name in MODULES:
        if name not in scripts:
            importlib.import_module(name)


def test_no_wrong_arrow() -> None:
    wrong = [v for name, path in MODULES.items() for v in violations(name, path.read_text())]
    assert wrong == []


def test_every_module_is_in_a_layer() -> None:
    assert [m for m in MODULES if m != "node" and _layer(m) is None] == []


@pytest.mark.parametrize("layer", sorted(NEVER))
def test_no_forbidden_package_even_through_the_node_s_own_modules(layer: str) -> None:
    reached = {m for name in MODULES if name.startswith(layer + ".") or name == layer
               for m in _closure(name)}
    loaded = {(m, t) for m in reached for t in imports(m, MODULES[m].read_text())
              if t.split(".")[0] in NEVER[layer]}
    assert loaded == set()


@pytest.mark.parametrize(("module", "source"), [
    ("node.core.ledger", "from node.pipeline.flow import Flow"),
    ("node.core.ledger", "def f():\n    import node.scp.server\n"),
    ("node.scp.handlers", "from node.pipeline.deid.stage import deidentify_job"),
    ("node.sr_writer.seg", "from node.hl7.mllp import send_message"),
    ("node.sr_writer.seg", "from node.scp import sender"),
    ("node.pipeline.flow", "from node.commands import main"),
    ("node.app", "from node.commands import status"),
    ("node.hl7.oru", "from node.sr_writer.sr import build_sr"),
    ("node.web.api", "from node.commands.retry import run"),
    ("node.web.api", "from node.app import open_ledger"),
    ("node.web.api", "from node.scp.server import start_receiver"),
    ("node.pipeline.flow", "from node.web.api import router"),
    ("node.core.ledger", "from node.web import deps"),
])
def test_a_wrong_arrow_is_found(module: str, source: str) -> None:
    assert violations(module, source)


def test_the_allowed_arrows_pass() -> None:
    assert violations("node.pipeline.flow", "from node.scp.sender import send\n"
                      "from node.core import at_rest\nfrom node import __version__") == []
