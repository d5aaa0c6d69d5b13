"""One typed, frozen settings object, loaded once from TOML plus environment overrides.

Every key, with its default and unit, is documented in ``config/node.example.toml``; a test keeps
that file and these dataclasses in step. ``load_settings`` collects every problem it finds and
raises one :class:`~node.errors.ConfigError` with one clear line per problem.

Environment overrides: ``DICOM_NODE__<SECTION>__<KEY>=value`` (double underscores), for example
``DICOM_NODE__NODE__PORT=11113``. The value is read as a TOML value when it parses as one
(numbers, booleans, ``["a", "b"]``) and as a plain string otherwise.
"""

from __future__ import annotations

import dataclasses
import os
import re
import tomllib
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from node.errors import ConfigError

ENV_PREFIX = "DICOM_NODE__"
_AE_TITLE = re.compile(r"^[\x20-\x5b\x5d-\x7e]{1,16}$")  # printable, no backslash


@dataclass(frozen=True)
class NodeSettings:
    ae_title: str = "DICOM_NODE"
    host: str = "0.0.0.0"  # noqa: S104 - a DICOM node listens on the hospital network
    port: int = 11112
    var_dir: str = "./var"
    database_url: str = ""
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"


@dataclass(frozen=True)
class AllowedCaller:
    ae_title: str
    host: str = ""


@dataclass(frozen=True)
class TlsSettings:
    enabled: bool = False
    certificate: str = ""
    private_key: str = ""
    ca_certificates: str = ""
    require_client_certificate: bool = True


@dataclass(frozen=True)
class ScpSettings:
    receivers: int = 1
    max_associations: int = 32
    max_associations_per_peer: int = 16  # 0: no cap per address
    max_pdu_bytes: int = 1048576
    acse_timeout_s: float = 30.0
    dimse_timeout_s: float = 60.0
    network_timeout_s: float = 60.0
    min_free_disk_mb: int = 1024
    require_called_ae_title: bool = True
    allowed_callers: tuple[AllowedCaller, ...] = ()
    tls: TlsSettings = field(default_factory=TlsSettings)


@dataclass(frozen=True)
class LedgerSettings:
    sqlite_synchronous: Literal["NORMAL", "FULL"] = "NORMAL"
    busy_timeout_s: float = 30.0


@dataclass(frozen=True)
class RequiredSeries:
    name: str
    modality: str = ""
    series_description: str = ""
    min_instances: int = 1


@dataclass(frozen=True)
class CompletionSettings:
    quiet_period_s: float = 60.0
    max_wait_s: float = 3600.0
    max_wait_action: Literal["proceed", "hold", "discard"] = "proceed"
    sweep_interval_s: float = 1.0
    late_arrival: Literal["reopen", "ignore"] = "reopen"
    required_series: tuple[RequiredSeries, ...] = ()


@dataclass(frozen=True)
class PixelRule:
    """A burned-in text region rule, in the manner of RSNA CTP's DicomPixelAnonymizer."""

    name: str
    modality: str = ""
    manufacturer: str = ""
    model: str = ""
    rows: int = 0
    columns: int = 0
    regions: tuple[tuple[int, ...], ...] = ()


@dataclass(frozen=True)
class DeidSettings:
    key_file: str = ""
    table: str = ""
    retain_long_full_dates: bool = False
    retain_long_modified_dates: bool = False
    max_date_shift_days: int = 3650
    retain_patient_characteristics: bool = False
    retain_device_identity: bool = False
    retain_institution_identity: bool = False
    retain_uids: bool = False
    retain_safe_private: bool = False
    safe_private: tuple[str, ...] = ()
    clean_descriptors: bool = False
    clean_structured_content: bool = False
    clean_graphics: bool = False
    clean_pixel_data: bool = False
    allow_burned_in: bool = False
    pixel_rules: tuple[PixelRule, ...] = ()


@dataclass(frozen=True)
class StorageSettings:
    #: encrypt the spool, quarantine, de-identified copies, results and outbox files (AES-GCM,
    #: key derived from the de-identification key); off: plain files, as on an encrypted disk
    encrypt: bool = False


@dataclass(frozen=True)
class ModelsSettings:
    dir: str = ""
    enabled: tuple[str, ...] = ()
    device: str = "auto"


@dataclass(frozen=True)
class ClientTls:
    """TLS for an outgoing connection: the peer is verified against ``ca_certificates``."""

    enabled: bool = False
    ca_certificates: str = ""
    certificate: str = ""
    private_key: str = ""


@dataclass(frozen=True)
class DicomDestination:
    name: str
    ae_title: str
    host: str
    port: int = 104
    calling_ae_title: str = ""
    tls: ClientTls = field(default_factory=ClientTls)


@dataclass(frozen=True)
class StowDestination:
    """A DICOMweb STOW-RS endpoint (the studies resource, e.g. .../dicom-web/studies)."""

    name: str
    url: str
    username: str = ""
    password_env: str = ""
    ca_certificates: str = ""


@dataclass(frozen=True)
class Hl7Destination:
    name: str
    host: str
    port: int
    receiving_application: str = ""
    receiving_facility: str = ""
    on_error: Literal["retry", "fail"] = "retry"
    on_reject: Literal["retry", "fail"] = "fail"
    include_pdf: bool = False
    tls: ClientTls = field(default_factory=ClientTls)


@dataclass(frozen=True)
class WebhookAlert:
    name: str
    url: str
    include_identifiers: bool = False


@dataclass(frozen=True)
class EmailAlert:
    name: str
    smtp_host: str
    sender: str
    recipients: tuple[str, ...]
    smtp_port: int = 25
    starttls: bool = False
    username: str = ""
    password_env: str = ""
    include_identifiers: bool = False


@dataclass(frozen=True)
class DeliverySettings:
    poll_interval_s: float = 1.0
    timeout_s: float = 30.0
    retry_base_s: float = 10.0
    retry_cap_s: float = 900.0
    max_attempts: int = 10
    alert_on: Literal["URGENT", "PRIORITY"] = "URGENT"
    dicom: tuple[DicomDestination, ...] = ()
    stow: tuple[StowDestination, ...] = ()
    hl7: tuple[Hl7Destination, ...] = ()
    webhooks: tuple[WebhookAlert, ...] = ()
    email: tuple[EmailAlert, ...] = ()


@dataclass(frozen=True)
class Hl7Settings:
    sending_application: str = "DICOM_NODE"
    sending_facility: str = ""
    processing_id: Literal["P", "T", "D"] = "P"
    service_id: str = "AI-IMAGING"
    service_text: str = "AI image analysis"
    service_coding_system: str = "L"


@dataclass(frozen=True)
class Settings:
    node: NodeSettings = field(default_factory=NodeSettings)
    scp: ScpSettings = field(default_factory=ScpSettings)
    ledger: LedgerSettings = field(default_factory=LedgerSettings)
    completion: CompletionSettings = field(default_factory=CompletionSettings)
    deid: DeidSettings = field(default_factory=DeidSettings)
    storage: StorageSettings = field(default_factory=StorageSettings)
    models: ModelsSettings = field(default_factory=ModelsSettings)
    delivery: DeliverySettings = field(default_factory=DeliverySettings)
    hl7: Hl7Settings = field(default_factory=Hl7Settings)
    source: str = "<defaults>"

    @property
    def models_path(self) -> Path:
        """``models.dir``, else ./models, else the models/ folder beside this source tree."""
        if self.models.dir:
            return Path(self.models.dir)
        here = Path("models")
        return here if here.is_dir() else Path(__file__).resolve().parents[1] / "models"

    @property
    def var_path(self) -> Path:
        return Path(self.node.var_dir)

    @property
    def spool_path(self) -> Path:
        return self.var_path / "spool"

    @property
    def quarantine_path(self) -> Path:
        return self.var_path / "quarantine"

    @property
    def incoming_path(self) -> Path:
        return self.var_path / "incoming"

    @property
    def database_url(self) -> str:
        if self.node.database_url:
            return self.node.database_url
        return f"sqlite:///{(self.var_path / 'ledger.sqlite3').resolve()}"


# --------------------------------------------------------------------------------------------
# loading


def load_settings(
    path: str | Path | None = None, environ: Mapping[str, str] | None = None
) -> Settings:
    """Read ``path`` (TOML) if given, apply environment overrides, validate, return Settings."""
    environ = os.environ if environ is None else environ
    problems: list[str] = []
    raw: dict[str, Any] = {}
    source = "<defaults>"
    if path is not None:
        source = str(path)
        try:
            raw = tomllib.loads(Path(path).read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise ConfigError([f"{path}: file not found"]) from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError([f"{path}: not valid TOML ({exc})"]) from None
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError([f"{path}: cannot be read ({exc.__class__.__name__})"]) from None
    _apply_env(raw, environ, problems)
    values = _build(Settings, raw, "", problems, skip={"source"})
    if problems:
        raise ConfigError(problems)
    settings = dataclasses.replace(typing.cast(Settings, values), source=source)
    problems.extend(_check(settings))
    if problems:
        raise ConfigError(problems)
    return settings


def _apply_env(raw: dict[str, Any], environ: Mapping[str, str], problems: list[str]) -> None:
    for name, text in sorted(environ.items()):
        if not name.startswith(ENV_PREFIX):
            continue
        parts = [p.lower() for p in name[len(ENV_PREFIX) :].split("__")]
        if len(parts) < 2 or not all(parts):
            problems.append(f"{name}: expected {ENV_PREFIX}<SECTION>__<KEY>")
            continue
        target = raw
        for part in parts[:-1]:
            nxt = target.setdefault(part, {})
            if not isinstance(nxt, dict):
                problems.append(f"{name}: [{part}] is not a table")
                break
            target = nxt
        else:
            target[parts[-1]] = _parse_env_value(text)


def _parse_env_value(text: str) -> Any:
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text


def _type_name(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in typing.get_args(tp))
    if origin is tuple:
        return "a list"
    if dataclasses.is_dataclass(tp):
        return "a table"
    return {int: "an integer", float: "a number", str: "a string", bool: "true or false"}.get(
        tp, str(tp)
    )


def _build(
    cls: type[Any],
    data: Any,
    where: str,
    problems: list[str],
    skip: frozenset[str] | set[str] = frozenset(),
) -> Any:
    label = where or "config"
    if not isinstance(data, dict):
        problems.append(f"{label}: expected a table")
        return cls() if _all_defaulted(cls) else None
    hints = typing.get_type_hints(cls)
    known = {f.name for f in dataclasses.fields(cls)} - set(skip)
    for key in sorted(set(data) - known):
        problems.append(f"{_join(where, key)}: unknown key")
    kwargs: dict[str, Any] = {}
    for f in dataclasses.fields(cls):
        if f.name in skip:
            continue
        key = _join(where, f.name)
        if f.name not in data:
            if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                problems.append(f"{key}: required")
            continue
        value = _convert(hints[f.name], data[f.name], key, problems)
        if value is not _INVALID:
            kwargs[f.name] = value
    try:
        return cls(**kwargs)
    except TypeError:
        return None


_INVALID = object()


def _convert(tp: Any, value: Any, key: str, problems: list[str]) -> Any:
    origin = typing.get_origin(tp)
    if dataclasses.is_dataclass(tp):
        built = _build(typing.cast(type[Any], tp), value, key, problems)
        return _INVALID if built is None else built
    if origin is tuple:
        (item_tp, _) = typing.get_args(tp)
        if not isinstance(value, list):
            problems.append(f"{key}: expected a list, got {_kind(value)}")
            return _INVALID
        items = [_convert(item_tp, v, f"{key}[{i}]", problems) for i, v in enumerate(value)]
        return tuple(items) if _INVALID not in items else _INVALID
    if origin is Literal:
        allowed = typing.get_args(tp)
        if value not in allowed:
            problems.append(f"{key}: expected {_type_name(tp)}, got {value!r}")
            return _INVALID
        return value
    if origin in (typing.Union, types.UnionType):
        raise TypeError(f"unsupported settings type at {key}")
    return _convert_scalar(tp, value, key, problems)


def _convert_scalar(tp: Any, value: Any, key: str, problems: list[str]) -> Any:
    if tp is bool:
        ok = isinstance(value, bool)
    elif tp is int:
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif tp is float:
        ok = isinstance(value, int | float) and not isinstance(value, bool)
        value = float(value) if ok else value
    else:
        ok = isinstance(value, tp)
    if not ok:
        problems.append(f"{key}: expected {_type_name(tp)}, got {_kind(value)}")
        return _INVALID
    return value


def _kind(value: Any) -> str:
    if isinstance(value, bool):
        return f"boolean {str(value).lower()}"
    if isinstance(value, dict):
        return "a table"
    if isinstance(value, list):
        return "a list"
    return f"{type(value).__name__} {value!r}"


def _all_defaulted(cls: type[Any]) -> bool:
    return all(
        f.default is not dataclasses.MISSING or f.default_factory is not dataclasses.MISSING
        for f in dataclasses.fields(cls)
    )


def _join(where: str, key: str) -> str:
    return f"{where}.{key}" if where else key


# --------------------------------------------------------------------------------------------
# semantic checks


def _check(s: Settings) -> list[str]:
    problems: list[str] = []
    problems += _check_node(s.node)
    problems += _check_scp(s.scp)
    problems += _check_completion(s.completion)
    problems += _check_deid(s.deid)
    problems += _check_delivery(s.delivery)
    if s.models.device != "auto" and not re.fullmatch(r"cpu|cuda(:\d+)?", s.models.device):
        problems.append("models.device: expected auto, cpu, cuda or cuda:N")
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
