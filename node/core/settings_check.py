"""The checks of the settings as values: ranges, names, patterns; one line per problem.

Run by ``load_settings`` on every load. The checks against the machine (var_dir, the
database, the models, the address, the certificates) are ``node.preflight``'s: they need the
stages' own loaders, which the core does not import.
"""

from __future__ import annotations

import re
import string
from pathlib import Path
from typing import Any

from node.core.settings import (
    ClientTls,
    CompletionSettings,
    DeidSettings,
    DeliverySettings,
    DicomDestination,
    EmailAlert,
    LdapSettings,
    NodeSettings,
    PixelRule,
    ReportMail,
    RequiredSeries,
    ScpSettings,
    Settings,
    StowDestination,
    TlsSettings,
    WebhookAlert,
    WebSettings,
)

_AE_TITLE = re.compile(r"^[\x20-\x5b\x5d-\x7e]{1,16}$")  # printable, no backslash


def check(s: Settings) -> list[str]:
    """Every problem of the values themselves, one line each (empty: none)."""
    problems: list[str] = []
    problems += _check_node(s.node)
    problems += _check_scp(s.scp)
    problems += _check_completion(s.completion)
    problems += _check_deid(s.deid)
    problems += _check_delivery(s.delivery)
    problems += _check_web(s.web, s.scp.tls)
    problems += _check_ldap(s.web.ldap)
    problems += _check_workers(s)
    if s.models.device != "auto" and not re.fullmatch(r"cpu|cuda(:\d+)?", s.models.device):
        problems.append("models.device: expected auto, cpu, cuda or cuda:N")
    # a misspelt name would let that model's results out unreviewed
    problems += [f"models.review_required: {name!r} is not in models.enabled"
                 for name in s.models.review_required if name not in s.models.enabled]
    if s.ledger.busy_timeout_s <= 0:
        problems.append("ledger.busy_timeout_s: must be greater than 0 seconds")
    return problems


def _check_node(n: NodeSettings) -> list[str]:
    problems = []
    if not _AE_TITLE.match(n.ae_title) or not n.ae_title.strip():
        problems.append(
            f"node.ae_title: {n.ae_title!r} is not a valid AE title "
            "(1 to 16 printable characters, no backslash)"
        )
    if not 1 <= n.port <= 65535:
        problems.append(f"node.port: {n.port} is not a TCP port (1 to 65535)")
    if n.database_url and "://" not in n.database_url:
        problems.append(
            "node.database_url: expected an SQLAlchemy URL such as "
            "postgresql+psycopg2://user@host/db, or empty for SQLite under var_dir"
        )
    if not n.var_dir:
        problems.append("node.var_dir: must not be empty")
    return problems


def _check_scp(scp: ScpSettings) -> list[str]:
    problems = []
    if not 1 <= scp.receivers <= 64:
        problems.append(f"scp.receivers: {scp.receivers} is out of range (1 to 64 processes)")
    if scp.max_associations < 1:
        problems.append("scp.max_associations: must be at least 1")
    if scp.max_pdu_bytes != 0 and scp.max_pdu_bytes < 4096:
        problems.append("scp.max_pdu_bytes: must be 0 (unlimited) or at least 4096 bytes")
    for name in ("acse_timeout_s", "dimse_timeout_s", "network_timeout_s"):
        if getattr(scp, name) <= 0:
            problems.append(f"scp.{name}: must be greater than 0 seconds")
    if scp.min_free_disk_mb < 0:
        problems.append("scp.min_free_disk_mb: must not be negative")
    for i, caller in enumerate(scp.allowed_callers):
        if not _AE_TITLE.match(caller.ae_title):
            problems.append(
                f"scp.allowed_callers[{i}].ae_title: {caller.ae_title!r} is not a valid AE title"
            )
    if scp.tls.enabled:
        problems += _check_tls(scp.tls)
    return problems


def _check_tls(tls: TlsSettings) -> list[str]:
    problems = []
    for name in ("certificate", "private_key"):
        value = getattr(tls, name)
        if not value:
            problems.append(f"scp.tls.{name}: required when scp.tls.enabled is true")
        elif not Path(value).is_file():
            problems.append(f"scp.tls.{name}: file not found: {value}")
    if tls.require_client_certificate and not tls.ca_certificates:
        problems.append(
            "scp.tls.ca_certificates: required when scp.tls.require_client_certificate is true"
        )
    elif tls.ca_certificates and not Path(tls.ca_certificates).is_file():
        problems.append(f"scp.tls.ca_certificates: file not found: {tls.ca_certificates}")
    return problems


def _check_completion(c: CompletionSettings) -> list[str]:
    problems = []
    if c.quiet_period_s < 0:
        problems.append("completion.quiet_period_s: must not be negative")
    if c.max_wait_s <= 0:
        problems.append("completion.max_wait_s: must be greater than 0 seconds")
    elif c.max_wait_s < c.quiet_period_s:
        problems.append("completion.max_wait_s: must not be shorter than completion.quiet_period_s")
    if c.sweep_interval_s <= 0:
        problems.append("completion.sweep_interval_s: must be greater than 0 seconds")
    problems += [f"completion.whole_study_senders[{i}]: {ae!r} is not a valid AE title"
                 for i, ae in enumerate(c.whole_study_senders)
                 if not _AE_TITLE.match(ae) or not ae.strip()]
    names = [r.name for r in c.required_series]
    for i, rule in enumerate(c.required_series):
        problems += _check_rule(f"completion.required_series[{i}]", rule, names)
    return problems


def _check_rule(where: str, rule: RequiredSeries, names: list[str]) -> list[str]:
    problems = []
    if not re.fullmatch(r"[A-Za-z0-9_.-]{1,64}", rule.name):
        problems.append(f"{where}.name: use 1 to 64 letters, digits, '-', '_' or '.'")
    elif names.count(rule.name) > 1:
        problems.append(f"{where}.name: {rule.name!r} is used twice")
    if rule.min_instances < 1:
        problems.append(f"{where}.min_instances: must be at least 1")
    if rule.series_description:
        try:
            re.compile(rule.series_description)
        except re.error as exc:
            problems.append(
                f"{where}.series_description: not a valid regular expression ({exc})"
            )
    if not rule.modality and not rule.series_description:
        problems.append(f"{where}: give modality, series_description or both")
    return problems


_SAFE_PRIVATE = re.compile(r"^[^|]{1,64}\|[0-9A-Fa-f]{4}\|[0-9A-Fa-f]{2}$")


def _check_deid(d: DeidSettings) -> list[str]:
    problems = []
    if d.key_file and not Path(d.key_file).is_file():
        problems.append(f"deid.key_file: file not found: {d.key_file}")
    if d.table and not Path(d.table).is_file():
        problems.append(f"deid.table: file not found: {d.table}")
    if d.retain_long_full_dates and d.retain_long_modified_dates:
        problems.append(
            "deid.retain_long_modified_dates: cannot be combined with retain_long_full_dates"
        )
    if not 1 <= d.max_date_shift_days <= 36500:
        problems.append("deid.max_date_shift_days: must be 1 to 36500 days")
    for i, entry in enumerate(d.safe_private):
        if not _SAFE_PRIVATE.match(entry):
            problems.append(
                f"deid.safe_private[{i}]: expected 'PRIVATE CREATOR|gggg|ee' (hex group and "
                f"element byte), got {entry!r}"
            )
    for i, rule in enumerate(d.pixel_rules):
        problems += _check_pixel_rule(f"deid.pixel_rules[{i}]", rule)
    return problems


def _check_pixel_rule(where: str, rule: PixelRule) -> list[str]:
    problems = []
    if not rule.regions:
        problems.append(f"{where}.regions: give at least one [x0, y0, x1, y1] rectangle")
    for j, r in enumerate(rule.regions):
        if len(r) != 4 or r[0] >= r[2] or r[1] >= r[3] or min(r) < 0:
            problems.append(
                f"{where}.regions[{j}]: expected [x0, y0, x1, y1] with x0 < x1, y0 < y1, >= 0"
            )
    for name in ("manufacturer", "model"):
        try:
            re.compile(getattr(rule, name))
        except re.error as exc:
            problems.append(f"{where}.{name}: not a valid regular expression ({exc})")
    return problems


def _check_delivery(d: DeliverySettings) -> list[str]:
    problems = []
    for name in ("poll_interval_s", "timeout_s", "retry_base_s"):
        if getattr(d, name) <= 0:
            problems.append(f"delivery.{name}: must be greater than 0 seconds")
    if d.retry_cap_s < d.retry_base_s:
        problems.append("delivery.retry_cap_s: must not be shorter than delivery.retry_base_s")
    if d.max_attempts < 1:
        problems.append("delivery.max_attempts: must be at least 1")
    groups: tuple[tuple[str, tuple[Any, ...]], ...] = (
        ("dicom", d.dicom), ("stow", d.stow), ("hl7", d.hl7), ("webhooks", d.webhooks),
        ("email", d.email))
    names = [x.name for _, items in groups for x in items]
    for kind, items in groups:
        for i, item in enumerate(items):
            where = f"delivery.{kind}[{i}]"
            if not re.fullmatch(r"[A-Za-z0-9_.-]{1,32}", item.name):
                problems.append(f"{where}.name: use 1 to 32 letters, digits, '-', '_' or '.'")
            elif names.count(item.name) > 1:
                problems.append(f"{where}.name: {item.name!r} is used twice")
            problems += _check_peer(where, item)
    return problems + _check_report_mail(d.report_mail)


def _check_report_mail(m: ReportMail) -> list[str]:
    if not m.smtp_host:
        return []
    problems = []
    if not 1 <= m.smtp_port <= 65535:
        problems.append(f"delivery.report_mail: port {m.smtp_port} is not a TCP port "
                        "(1 to 65535)")
    if "@" not in m.sender:
        problems.append("delivery.report_mail.sender: give the From address (name@domain)")
    return problems


def _check_peer(where: str, item: Any) -> list[str]:
    problems = []
    for attr in ("ae_title", "calling_ae_title"):
        value = getattr(item, attr, "")
        if value and not _AE_TITLE.match(value):
            problems.append(f"{where}.{attr}: {value!r} is not a valid AE title")
    if isinstance(item, DicomDestination) and not item.ae_title:
        problems.append(f"{where}.ae_title: required")
    port = getattr(item, "port", None) if not isinstance(item, EmailAlert) else item.smtp_port
    if port is not None and not 1 <= port <= 65535:
        problems.append(f"{where}: port {port} is not a TCP port (1 to 65535)")
    if isinstance(item, WebhookAlert | StowDestination) and not re.match(r"https?://", item.url):
        problems.append(f"{where}.url: expected an http:// or https:// address")
    ca = getattr(item, "ca_certificates", "")
    if isinstance(item, StowDestination) and ca and not Path(ca).is_file():
        problems.append(f"{where}.ca_certificates: file not found: {ca}")
    if isinstance(item, EmailAlert) and not item.recipients:
        problems.append(f"{where}.recipients: give at least one address")
    tls = getattr(item, "tls", None)
    if tls is not None and tls.enabled:
        problems += _check_client_tls(f"{where}.tls", tls)
    return problems


def _check_client_tls(where: str, tls: ClientTls) -> list[str]:
    problems = []
    for attr in ("ca_certificates", "certificate", "private_key"):
        value = getattr(tls, attr)
        if value and not Path(value).is_file():
            problems.append(f"{where}.{attr}: file not found: {value}")
    if bool(tls.certificate) != bool(tls.private_key):
        problems.append(f"{where}: give certificate and private_key together")
    return problems


def _check_web(web: WebSettings, tls: TlsSettings) -> list[str]:
    """The HTTP API's values; its TLS uses the node's certificate and key (scp.tls)."""
    if not web.enabled:
        return []
    problems = []
    if not 1 <= web.port <= 65535:
        problems.append(f"web.port: {web.port} is not a TCP port (1 to 65535)")
    if web.session_ttl_s <= 0:
        problems.append("web.session_ttl_s: must be greater than 0 seconds")
    if web.max_failed_logins < 1:
        problems.append("web.max_failed_logins: must be at least 1")
    if web.lockout_s < 0:
        problems.append("web.lockout_s: must not be negative")
    if web.tls:
        for name in ("certificate", "private_key"):
            value = getattr(tls, name)
            if not value:
                problems.append(f"scp.tls.{name}: required when web.tls is true")
            elif not Path(value).is_file():
                problems.append(f"scp.tls.{name}: file not found: {value}")
    return problems + _check_console(web)


def _check_console(web: WebSettings) -> list[str]:
    problems = [] if web.max_upload_mb >= 1 else ["web.max_upload_mb: must be at least 1"]
    return problems + _check_pacs_link(web.pacs_viewer_url)


def _check_pacs_link(url: str) -> list[str]:
    if not url:
        return []
    if not url.startswith(("http://", "https://")):
        return ["web.pacs_viewer_url: expected an http:// or https:// address"]
    if _fields(url) != {"study_uid"}:
        return ["web.pacs_viewer_url: expected {study_uid} and no other {name}"]
    return []


def _fields(template: str) -> set[str] | None:
    """The {names} a template uses (None: not a valid template)."""
    try:
        return {f for _, f, _, _ in string.Formatter().parse(template) if f is not None}
    except ValueError:
        return None


def _check_ldap(ldap: LdapSettings) -> list[str]:
    """Directory login: a URL, one way to find the user's DN, groups to map, templates that
    use only the names the node fills in."""
    if not ldap.enabled:
        return []
    problems = []
    if not re.fullmatch(r"ldaps?://[^/?#]+/?", ldap.url):
        problems.append("web.ldap.url: expected ldap://host[:port] or ldaps://host[:port]")
    if ldap.start_tls and ldap.url.startswith("ldaps://"):
        problems.append("web.ldap.start_tls: ldaps:// is TLS already; use ldap:// with it")
    if ldap.ca_file and not Path(ldap.ca_file).is_file():
        problems.append(f"web.ldap.ca_file: file not found: {ldap.ca_file}")
    problems += _check_ldap_lookup(ldap)
    if not ldap.group_base:
        problems.append("web.ldap.group_base: required (where the user's groups are found)")
    used = _fields(ldap.group_filter)
    if used is None or not used or not used <= {"dn", "name"}:
        problems.append("web.ldap.group_filter: must contain {dn} or {name}, and no other "
                        "{...}")
    if not ldap.roles:
        problems.append("web.ldap.roles: map at least one group to a role")
    if ldap.timeout_s <= 0:
        problems.append("web.ldap.timeout_s: must be greater than 0 seconds")
    return problems


def _check_ldap_lookup(ldap: LdapSettings) -> list[str]:
    """One way to find the user's DN: a template, or a search with the service account."""
    if ldap.user_dn_template:
        if _fields(ldap.user_dn_template) != {"name"}:
            return ["web.ldap.user_dn_template: must contain {name} and no other {...}"]
    elif not (ldap.bind_dn and ldap.user_base):
        return ["web.ldap: set user_dn_template, or bind_dn and user_base to search for users"]
    elif _fields(ldap.user_filter) != {"name"}:
        return ["web.ldap.user_filter: must contain {name} and no other {...}"]
    return []


def _check_workers(s: Settings) -> list[str]:
    """The broker's scheme, queue names the brokers accept, and a ledger workers can share."""
    w = s.workers
    problems = []
    scheme = w.broker_url.split("://", 1)[0] if "://" in w.broker_url else ""
    if scheme not in ("amqp", "amqps", "pyamqp", "redis", "rediss"):
        problems.append("workers.broker_url: expected amqp://... (RabbitMQ) or redis://...")
    if not re.fullmatch(r"[A-Za-z0-9_-][A-Za-z0-9_.-]{0,99}", w.queue_prefix):
        problems.append("workers.queue_prefix: letters, digits, '.', '_' and '-' only "
                        "(1-100 characters)")
    for name in ("requeue_after_s", "requeue_interval_s"):
        if getattr(w, name) <= 0:
            problems.append(f"workers.{name}: must be greater than 0 seconds")
    if w.enabled and s.database_url.startswith("sqlite"):
        problems.append("workers.enabled: workers need a ledger they all reach: set "
                        "node.database_url to a PostgreSQL database")
    return problems
