"""The node's HTTP face: the API under /api/v1, login sessions and roles, health.

Routes are thin: each declares the roles that may call it in one table (``access.py``) and
gets what it needs through one dependency per concern (``deps.py``: the session, the role, the
ledger). ``server.py`` runs the app on uvicorn in a thread of ``serve``.
"""
