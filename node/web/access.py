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
#: the console's pages (method, path): they answer a browser, so without a session they send
#: it to /login (303) instead of answering 401
PAGES: set[tuple[str, str]] = set()


def route(router: APIRouter, method: str, path: str, roles: Iterable[Role] | None,
          *, guard: Callable[[frozenset[Role]], Callable[..., Any]] = allow,
          **kwargs: Any) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """``router.api_route`` for one method, with its roles recorded and checked (by
    ``guard(roles)``, the API's 401/403 check unless a page passes its own)."""
    allowed = None if roles is None else frozenset(roles)
    ACCESS[(method, (router.prefix or "") + path)] = allowed
    deps = [] if allowed is None else [Depends(guard(allowed))]
    return router.api_route(path, methods=[method], dependencies=deps, **kwargs)


def page_route(router: APIRouter, method: str, path: str, roles: Iterable[Role] | None,
               guard: Callable[[frozenset[Role]], Callable[..., Any]],
               **kwargs: Any) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """:func:`route` for a console page: in the same table, checked by the page's guard."""
    PAGES.add((method, (router.prefix or "") + path))
    return route(router, method, path, roles, guard=guard, include_in_schema=False, **kwargs)
