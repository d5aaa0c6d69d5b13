"""One typed, frozen settings object: the node's settings as dataclasses, nothing else.

Each field has its doc, default and unit here (a ``#:`` comment; units are also in the names:
``_s`` seconds, ``_mb`` MiB, ``_bytes`` bytes), and in ``config/node.example.toml``, which a test
keeps in step with these dataclasses. Loading (TOML and environment overrides) is
``node.core.settings_load``; the checks of the values are ``node.core.settings_check``, and the
checks against the machine (folders, database, models, address, certificates) are
``node.preflight``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal


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
        return here if here.is_dir() else Path(__file__).resolve().parents[2] / "models"

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
