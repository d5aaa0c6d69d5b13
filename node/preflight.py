"""What ``serve`` would refuse, found before anything starts: ``check-config`` and start-up.

``load_settings`` checks the settings as values (types, ranges, names). This module checks them
against the machine: the var_dir folder, the ledger database's driver and file, the
de-identification table and key, the models (manifests, weights and their checksums, loaded as
``serve`` loads them), the listening address and the TLS certificates. ``serve`` runs the same
checks first, so a settings problem ends it with one line per problem and exit status 2, never
a traceback; ``check-config`` runs them without starting anything. With ``connect`` the database
and every destination are also tried over the network (``check-config --connect``): a peer that
is down is a fact about today, not about the settings, so ``serve`` does not do that.

Every problem is one line that starts with the setting it is about; no secret (a database
password, a key) is ever printed.
"""

from __future__ import annotations

import errno
import os
import socket
import ssl
from collections.abc import Callable
from pathlib import Path
from typing import Any

from node.core.audit_forward import target_of
from node.core.errors import ConfigError, NodeError
from node.core.keys import KEY_ENV
from node.core.settings import (
    DicomDestination,
    EmailAlert,
    Hl7Destination,
    Settings,
    StowDestination,
    WebhookAlert,
)
from node.core.syslog import SyslogSender

#: folders ``serve`` creates inside var_dir (a file in their place stops it)
VAR_FOLDERS = ("incoming", "spool", "quarantine", "deid", "results", "outbox")
SUPPORTED_DATABASES = ("sqlite", "postgresql")


def preflight(settings: Settings, *, models: bool = True, connect: bool = False) -> list[str]:
    """Every problem ``serve`` would meet with ``settings``, one line each (empty: none).

    ``models=False`` leaves the models out (``serve`` loads them itself right after, and adds
    their problems to these); ``connect`` also tries the database and the destinations.
    """
    problems = var_dir_problems(settings.var_path)
    problems += database_problems(settings)
    problems += _collect(lambda: _deid(settings))
    if models:
        problems += _collect(lambda: _models(settings))
    problems += listen_problems(settings.node.host, settings.node.port)
    problems += web_problems(settings)
    problems += tls_problems(settings)
    problems += secret_problems(settings)
    problems += audit_problems(settings)
    if connect:
        problems += database_connection_problems(settings)
        problems += destination_problems(settings)
    return problems


def _collect(check: Callable[[], object]) -> list[str]:
    try:
        check()
    except ConfigError as exc:
        return list(exc.problems)
    return []


def var_dir_problems(var: Path) -> list[str]:
    """var_dir must be a writable folder, or creatable: its nearest existing parent a writable
    folder; the folders serve makes inside it must not be files."""
    where = f"node.var_dir: {var}"
    if var.exists():
        if not var.is_dir():
            return [f"{where} is a file, not a folder"]
        if not os.access(var, os.W_OK | os.X_OK):
            return [f"{where} is not writable by this user"]
        return [f"{where}/{name} is a file, not a folder" for name in VAR_FOLDERS
                if (var / name).exists() and not (var / name).is_dir()]
    parent = var.absolute().parent
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir():
        return [f"{where} cannot be created: {parent} is a file, not a folder"]
    if not os.access(parent, os.W_OK | os.X_OK):
        return [f"{where} cannot be created: {parent} is not writable by this user"]
    return []


def database_problems(settings: Settings) -> list[str]:
    """The URL names a supported database whose driver is installed; an SQLite file's folder
    exists (or is var_dir, which serve creates). Nothing is connected to."""
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    where = "node.database_url"
    try:
        url = make_url(settings.database_url)
    except ArgumentError:
        return [f"{where}: not an SQLAlchemy URL (e.g. postgresql+psycopg2://user@host/db)"]
    backend = url.get_backend_name()
    if backend not in SUPPORTED_DATABASES:
        return [f"{where}: {backend!r} is not a supported database (PostgreSQL, or SQLite "
                "when empty)"]
    try:
        url.get_dialect().import_dbapi()
    except ImportError as exc:
        return [f"{where}: the driver {url.get_driver_name()!r} is not installed ({exc.name})"]
    except ArgumentError as exc:
        return [f"{where}: {exc}"]
    if backend == "sqlite" and url.database and url.database != ":memory:":
        folder = Path(url.database).absolute().parent
        if folder != settings.var_path.absolute() and not folder.is_dir():
            return [f"{where}: the SQLite file's folder {folder} does not exist"]
    return []


def _deid(settings: Settings) -> None:
    """The profile table loads and the key is usable; with no key configured serve creates
    ``<var_dir>/deid.key``, so only one that is there already is read."""
    from node.core.keys import key_file_for, load_keys
    from node.pipeline.deid.profile import load_profile

    problems = _collect(lambda: load_profile(settings.deid))
    key_file = key_file_for(settings.deid.key_file, settings.var_path)
    if key_file or os.environ.get(KEY_ENV, "").strip():
        problems += _collect(lambda: load_keys(key_file))
    if problems:
        raise ConfigError(problems)


def _models(settings: Settings) -> None:
    """The enabled models load as serve loads them (manifest, weights, checksum, device)."""
    if settings.models.enabled:
        from node.pipeline.infer.registry import load_models

        load_models(settings.models_path, settings.models.enabled, settings.models.device)


def _bind_error(host: str, port: int) -> OSError | None:
    probe = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        probe.bind((host, port))
    except OSError as exc:
        return exc
    finally:
        probe.close()
    return None


def _listen_problem(host: str, port: int, exc: OSError) -> str:
    if isinstance(exc, socket.gaierror):
        return f"node.host: {host!r} is not an address of this machine"
    return f"node.host/node.port: cannot listen on {host}:{port} ({exc.strerror})"


def listen_problems(host: str, port: int) -> list[str]:
    """The node can listen on host:port. A port in use is no settings problem (the node may be
    running): serve reports it itself when it starts."""
    exc = _bind_error(host, port)
    if exc is None or exc.errno == errno.EADDRINUSE:
        return []
    return [_listen_problem(host, port, exc)]


def web_problems(settings: Settings) -> list[str]:
    """The web API can listen on its address (a port in use is reported by serve, as for the
    DICOM port) and, under ``web.tls``, the node's certificate and key load."""
    w = settings.web
    if not w.enabled:
        return []
    problems = []
    exc = _bind_error(w.host, w.port)
    if isinstance(exc, socket.gaierror):
        problems.append(f"web.host: {w.host!r} is not an address of this machine")
    elif exc is not None and exc.errno != errno.EADDRINUSE:
        problems.append(f"web.host/web.port: cannot listen on {w.host}:{w.port} ({exc.strerror})")
    if w.tls and settings.scp.tls.certificate and settings.scp.tls.private_key:
        try:
            ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER).load_cert_chain(
                settings.scp.tls.certificate, settings.scp.tls.private_key)
        except (ssl.SSLError, OSError) as err:
            problems.append(f"web.tls: the node's certificate and key (scp.tls) do not load "
                            f"({getattr(err, 'reason', None) or type(err).__name__})")
    return problems


def check_port_free(host: str, port: int) -> None:
    """Refuse to start if anything listens on the port (SO_REUSEPORT would share it silently)."""
    exc = _bind_error(host, port)
    if exc is not None and exc.errno == errno.EADDRINUSE:
        raise NodeError(f"port {port} on {host} is already in use")
    if exc is not None:
        raise ConfigError([_listen_problem(host, port, exc)])


def tls_problems(settings: Settings) -> list[str]:
    """Certificates and keys load (the node's own, and those of TLS destinations)."""
    from node.scp.tls import client_context, server_context

    problems = []
    if settings.scp.tls.enabled:
        problems += _collect(lambda: server_context(settings.scp.tls))
    d = settings.delivery
    clients = [(f"delivery.dicom[{i}]", x.tls) for i, x in enumerate(d.dicom)]
    clients += [(f"delivery.hl7[{i}]", x.tls) for i, x in enumerate(d.hl7)]
    for where, tls in clients:
        try:
            client_context(tls, where)
        except ConfigError as exc:
            problems += exc.problems
    return problems


def secret_problems(settings: Settings) -> list[str]:
    """A password named by its environment variable must be there: without it every delivery
    to that destination fails."""
    d = settings.delivery
    named: list[tuple[str, Any]] = [(f"delivery.stow[{i}]", x) for i, x in enumerate(d.stow)]
    named += [(f"delivery.email[{i}]", x) for i, x in enumerate(d.email)]
    if settings.web.enabled and settings.web.ldap.enabled and settings.web.ldap.bind_dn:
        named.append(("web.ldap", settings.web.ldap))  # its service account's password
    problems = [f"{where}.password_env: the environment variable {x.password_env} is not set"
                for where, x in named if x.password_env and x.password_env not in os.environ]
    token_env = settings.web.metrics_token_env
    if settings.web.enabled and token_env and not os.environ.get(token_env):
        problems.append(f"web.metrics_token_env: the environment variable {token_env} is not "
                        "set (/metrics would refuse every scrape)")
    return problems


def audit_problems(settings: Settings) -> list[str]:
    """``[audit]``'s repository address and TLS files, as the forwarding sweep will use them."""
    if not settings.audit.enabled:
        return []
    return _collect(lambda: SyslogSender(target_of(settings)))


# ------------------------------------------------------------------ --connect


def database_connection_problems(settings: Settings) -> list[str]:
    """Connect to the ledger database once (skipped for SQLite: it is a file)."""
    if settings.database_url.startswith("sqlite") or database_problems(settings):
        return []
    from sqlalchemy import create_engine, text
    from sqlalchemy.exc import SQLAlchemyError

    engine = create_engine(settings.database_url, connect_args={"connect_timeout": 10})
    try:
        with engine.connect() as conn:
            conn.execute(text("SELECT 1"))
    except SQLAlchemyError as exc:
        reason = str(getattr(exc, "orig", exc)).strip().splitlines()[0]
        return [f"node.database_url: cannot connect ({reason})"]
    finally:
        engine.dispose()
    return []


def destination_problems(settings: Settings) -> list[str]:
    """Each destination answers: DICOM ones a C-ECHO, the others a TCP connection."""
    d, timeout = settings.delivery, settings.delivery.timeout_s
    problems = [p for i, x in enumerate(d.dicom) if (p := _echo(f"delivery.dicom[{i}]", x,
                                                               settings, timeout))]
    others: list[tuple[str, Hl7Destination | StowDestination | WebhookAlert | EmailAlert]] = [
        *((f"delivery.hl7[{i}]", x) for i, x in enumerate(d.hl7)),
        *((f"delivery.stow[{i}]", x) for i, x in enumerate(d.stow)),
        *((f"delivery.webhooks[{i}]", x) for i, x in enumerate(d.webhooks)),
        *((f"delivery.email[{i}]", x) for i, x in enumerate(d.email)),
    ]
    for where, item in others:
        host, port = _address(item)
        try:
            socket.create_connection((host, port), timeout=timeout).close()
        except OSError as exc:
            problems.append(f"{where} ({item.name}): no connection to {host}:{port} "
                            f"({exc.strerror or type(exc).__name__})")
    return problems


def _address(item: Hl7Destination | StowDestination | WebhookAlert | EmailAlert
             ) -> tuple[str, int]:
    if isinstance(item, Hl7Destination):
        return item.host, item.port
    if isinstance(item, EmailAlert):
        return item.smtp_host, item.smtp_port
    from urllib.parse import urlsplit

    url = urlsplit(item.url)
    return url.hostname or "", url.port or (443 if url.scheme == "https" else 80)


def _echo(where: str, dest: DicomDestination, settings: Settings, timeout: float) -> str:
    """'' when the destination accepts an association and answers C-ECHO, else why not."""
    from pynetdicom import AE
    from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]

    from node.scp.tls import client_context

    ae = AE(ae_title=dest.calling_ae_title or settings.node.ae_title)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = timeout
    ae.add_requested_context(Verification)
    try:
        tls: ssl.SSLContext | None = client_context(dest.tls, where)
    except ConfigError:
        return ""  # tls_problems reports it
    args = (tls, dest.host) if tls is not None else None
    label = f"{where} ({dest.name}): {dest.ae_title} at {dest.host}:{dest.port}"
    assoc = ae.associate(dest.host, dest.port, ae_title=dest.ae_title, tls_args=args)
    if not assoc.is_established:
        return f"{label} refused or did not answer the association"
    try:
        status = assoc.send_c_echo()
        if not status or status.Status != 0:
            return f"{label} did not answer C-ECHO with Success"
    finally:
        assoc.release()
    return ""
