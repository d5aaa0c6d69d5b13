"""Which roles may call each route: one table, filled as the routes are declared.

Every route is declared through :func:`route`, which records its roles here and attaches the
role check as a dependency; ``tests/web/test_access.py`` walks the app's whole route list
against this table, so a route added without a rule fails that test. ``PUBLIC`` routes (health,
login) need no session.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from fastapi import APIRouter, Depends

from node.core.accounts import Role
from node.web.deps import allow

PUBLIC: frozenset[Role] | None = None
EVERYONE = frozenset(Role)
OPERATIONS = frozenset({Role.ADMIN, Role.OPERATOR})
ADMIN = frozenset({Role.ADMIN})

#: (method, path) -> the roles that may call it; None: no login needed
ACCESS: dict[tuple[str, str], frozenset[Role] | None] = {}


def route(router: APIRouter, method: str, path: str, roles: Iterable[Role] | None,
          **kwargs: Any) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """``router.api_route`` for one method, with its roles recorded and checked."""
    allowed = None if roles is None else frozenset(roles)
    ACCESS[(method, (router.prefix or "") + path)] = allowed
    deps = [] if allowed is None else [Depends(allow(allowed))]
    return router.api_route(path, methods=[method], dependencies=deps, **kwargs)
