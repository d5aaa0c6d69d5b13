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
    #: The node's own AE title: the called AE title senders must use (1-16 characters).
    ae_title: str = "DICOM_NODE"
    #: Address to listen on. 0.0.0.0 = all interfaces.
    host: str = "0.0.0.0"  # noqa: S104 - a DICOM node listens on the hospital network
    #: DICOM port (TCP).
    port: int = 11112
    #: Folder for everything the node keeps: spool/, incoming/, quarantine/ and the SQLite ledger.
    var_dir: str = "./var"
    #: SQLAlchemy URL of the ledger database. Empty = SQLite at <var_dir>/ledger.sqlite3. PostgreSQL
    #: example: "postgresql+psycopg2://dicom_node@db.example.org/dicom_node"
    database_url: str = ""
    #: DEBUG, INFO, WARNING or ERROR. Log lines never contain patient data.
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"


@dataclass(frozen=True)
class AllowedCaller:
    #: A calling AE title that may associate.
    ae_title: str
    #: optional: "" = from any host
    host: str = ""


@dataclass(frozen=True)
class TlsSettings:
    #: DICOM TLS on the node's port (then plain DICOM is refused there).
    enabled: bool = False
    #: PEM certificate (chain) and private key of the node.
    certificate: str = ""
    #: PEM private key of the node's certificate.
    private_key: str = ""
    #: PEM CA bundle used to verify client certificates.
    ca_certificates: str = ""
    #: Refuse clients without a certificate signed by ca_certificates.
    require_client_certificate: bool = True


@dataclass(frozen=True)
class ScpSettings:
    #: Receiving processes sharing the port (SO_REUSEPORT); the kernel spreads associations over
    #: them.
    receivers: int = 1
    #: Simultaneous associations (connections) per receiving process; more are closed at once.
    max_associations: int = 32
    #: Of those, the most from one peer address (0 = no such cap), so that one sender, or a peer
    #: opening connections that never associate, cannot lock the others out.
    max_associations_per_peer: int = 16  # 0: no cap per address
    #: Largest PDU the node accepts (bytes); 0 = no limit. Bigger PDUs mean fewer round trips.
    max_pdu_bytes: int = 1048576
    #: Seconds to wait for association negotiation messages.
    acse_timeout_s: float = 30.0
    #: Seconds to wait for a DIMSE message once an association is up.
    dimse_timeout_s: float = 60.0
    #: Seconds of network silence before an association is dropped.
    network_timeout_s: float = 60.0
    #: Below this much free disk space (MiB) under var_dir, C-STORE answers Out of Resources
    #: (0xA700).
    min_free_disk_mb: int = 1024
    #: Reject associations whose called AE title is not node.ae_title (reason 7).
    require_called_ae_title: bool = True
    #: Allow-list of calling AE titles, optionally with the only host they may call from. Empty (the
    #: default) admits any caller. Callers not listed are rejected (reason 3).
    allowed_callers: tuple[AllowedCaller, ...] = ()
    #: DICOM TLS on the node's port ([scp.tls]).
    tls: TlsSettings = field(default_factory=TlsSettings)


@dataclass(frozen=True)
class LedgerSettings:
    #: SQLite only. Received files are always fsynced (and renamed, and their folder fsynced) before
    #: the sender is told "success". NORMAL (WAL): a commit survives a crash of the node (kill -9);
    #: after a power failure the last commits may roll back, and the next start records every spool
    #: file the ledger lacks again (node/scp/recovery.py). FULL: every commit is also fsynced
    #: (slower).
    sqlite_synchronous: Literal["NORMAL", "FULL"] = "NORMAL"
    #: Seconds a writer waits for the SQLite write lock before giving up.
    busy_timeout_s: float = 30.0


@dataclass(frozen=True)
class RequiredSeries:
    #: used in logs and the ledger
    name: str
    #: match on Modality (empty = any)
    modality: str = ""
    #: Python regular expression searched in Series Description
    series_description: str = ""
    #: at least this many instances of matching series
    min_instances: int = 1


@dataclass(frozen=True)
class CompletionSettings:
    #: A study is complete when no instance arrived for this many seconds (and the required-series
    #: rules below, if any, are met).
    quiet_period_s: float = 60.0
    #: Seconds after a study was opened (first or re-opened instance) at which max_wait_action
    #: applies if the study is still not complete (for example a required series never came).
    max_wait_s: float = 3600.0
    #: proceed = complete it anyway; hold = wait for "dicom-node force-complete"; discard = keep the
    #: files but never process the study.
    max_wait_action: Literal["proceed", "hold", "discard"] = "proceed"
    #: How often the completion timers are checked (seconds).
    sweep_interval_s: float = 1.0
    #: An instance arriving for a study that was already completed: reopen = the study goes back to
    #: RECEIVING and is processed again, as a whole, after a new quiet period (its generation
    #: counter goes up); ignore = store it, do not re-process.
    late_arrival: Literal["reopen", "ignore"] = "reopen"
    #: Series that must be present before a study counts as complete. Empty = quiet period only.
    required_series: tuple[RequiredSeries, ...] = ()
    #: Calling AE titles of peers that send each study whole in one association (Orthanc's store
    #: job of a stable study). A study such a peer delivered is complete as soon as that
    #: association is released (A-RELEASE), without the quiet period, unless an instance arrived
    #: after the release or a required series is missing; an aborted or dropped association
    #: leaves the quiet period to decide. Empty (the default) = the quiet period for every peer.
    whole_study_senders: tuple[str, ...] = ()


@dataclass(frozen=True)
class PixelRule:
    """A burned-in text region rule, in the manner of RSNA CTP's DicomPixelAnonymizer."""

    #: Shown in the reason of what the rule cleaned.
    name: str
    #: Only images of this modality ("" = any).
    modality: str = ""
    #: Only images whose Manufacturer contains this ("" = any).
    manufacturer: str = ""
    #: Only images whose Manufacturer's Model Name contains this ("" = any).
    model: str = ""
    #: 0 = any
    rows: int = 0
    #: 0 = any
    columns: int = 0
    #: [x0, y0, x1, y1], pixels, x1/y1 exclusive
    regions: tuple[tuple[int, ...], ...] = ()


@dataclass(frozen=True)
class DeidSettings:
    #: De-identification (DICOM PS3.15 Annex E, Basic Application Level Confidentiality Profile).
    #: Only de-identified data reaches the models. Options below are the profile's named options.
    #: The node's secret (32 random bytes, base64): pseudonyms are derived from it and the map back
    #: to the originals is encrypted with it. Give a file (create: dicom-node keygen --out PATH), or
    #: set DICOM_NODE_DEID_KEY. Never stored in the database. Empty and no environment key: "serve"
    #: creates <var_dir>/deid.key once (fine for a trial; in production keep the key outside var_dir
    #: and back it up: without it results cannot be mapped back to patients).
    key_file: str = ""
    #: The profile table (PS3.15 Table E.1-1 as CSV). Empty = config/deid/table-e1-1.csv.
    table: str = ""
    #: Retain Longitudinal Temporal Information, Full Dates Option: keep dates and times as they
    #: are.
    retain_long_full_dates: bool = False
    #: ... Modified Dates Option: move every date of a patient into the past by the same number of
    #: days (derived from the secret and the patient; times of day are kept).
    retain_long_modified_dates: bool = False
    #: Largest date shift (days) for the Modified Dates option.
    max_date_shift_days: int = 3650
    #: Retain Patient Characteristics Option: keep sex, age, size, weight and the like.
    retain_patient_characteristics: bool = False
    #: Retain Device Identity Option: keep device serial numbers, station names and the like.
    retain_device_identity: bool = False
    #: Retain Institution Identity Option: keep institution and department names and addresses.
    retain_institution_identity: bool = False
    #: Retain UIDs Option: keep the original UIDs (off: every UID becomes a keyed pseudonym).
    retain_uids: bool = False
    #: Retain Safe Private Option: keep the private attributes listed in safe_private.
    retain_safe_private: bool = False
    #: Private attributes known to be safe, as "PRIVATE CREATOR|gggg|ee" (group, element byte).
    safe_private: tuple[str, ...] = ()
    #: Clean Descriptors Option: keep descriptions and comments with known identifiers removed (the
    #: patient's names, IDs, institution, physicians, long digit runs) instead of removing them.
    clean_descriptors: bool = False
    #: Clean Structured Content Option: keep SR content trees, cleaned as above.
    clean_structured_content: bool = False
    #: Clean Graphics Option: graphics that cannot be cleaned are removed.
    clean_graphics: bool = False
    #: Clean Pixel Data Option: blank burned-in text with the pixel_rules below.
    clean_pixel_data: bool = False
    #: Let instances that may carry burned-in text (Burned In Annotation YES; US, SC, OT) through
    #: without a matching pixel rule. Off: they are quarantined.
    allow_burned_in: bool = False
    #: Burned-in text regions by modality, manufacturer and model (regular expressions) and size.
    pixel_rules: tuple[PixelRule, ...] = ()


@dataclass(frozen=True)
class StorageSettings:
    #: encrypt the spool, quarantine, de-identified copies, results and outbox files (AES-GCM,
    #: key derived from the de-identification key); off: plain files, as on an encrypted disk
    encrypt: bool = False


@dataclass(frozen=True)
class ModelsSettings:
    #: Folder holding one folder per model (manifest.toml + weights + optional code). Empty =
    #: ./models if it exists, else the models/ folder shipped with the node.
    dir: str = ""
    #: Models the pipeline runs on every de-identified study whose series fit their selection rules.
    enabled: tuple[str, ...] = ()
    #: auto = CUDA when present, else CPU; or cpu, cuda, cuda:N.
    device: str = "auto"
    #: Models whose results wait for a radiologist's approval (the Study page, or POST
    #: /api/v1/studies/{id}/review) before anything is sent: the job stays AWAITING_REVIEW;
    #: approved, the ORU goes out final (F) naming the reviewer; rejected, nothing is sent.
    review_required: tuple[str, ...] = ()


@dataclass(frozen=True)
class ClientTls:
    """TLS for an outgoing connection: the peer is verified against ``ca_certificates``."""

    #: TLS on the connection to this destination.
    enabled: bool = False
    #: verify the PACS against these
    ca_certificates: str = ""
    #: client certificate, if the PACS asks for one
    certificate: str = ""
    #: PEM private key of the client certificate.
    private_key: str = ""


@dataclass(frozen=True)
class DicomDestination:
    #: shown in status; letters, digits, - _ .
    name: str
    #: the destination's AE title
    ae_title: str
    #: The destination's host name or address.
    host: str
    #: Its DICOM port (TCP).
    port: int = 104
    #: "" = node.ae_title
    calling_ae_title: str = ""
    #: Optional DICOM TLS ([delivery.dicom.tls]).
    tls: ClientTls = field(default_factory=ClientTls)


@dataclass(frozen=True)
class StowDestination:
    """A DICOMweb STOW-RS endpoint (the studies resource, e.g. .../dicom-web/studies)."""

    #: Shown in status; letters, digits, - _ .
    name: str
    #: The studies resource, e.g. https://pacs.example.org/dicom-web/studies.
    url: str
    #: HTTP basic authentication; empty = none
    username: str = ""
    #: name of the environment variable holding the password
    password_env: str = ""
    #: verify https against these CAs ("" = the system's)
    ca_certificates: str = ""


@dataclass(frozen=True)
class Hl7Destination:
    #: Shown in status; letters, digits, - _ .
    name: str
    #: The interface engine's host name or address.
    host: str
    #: Its MLLP port (TCP).
    port: int
    #: MSH-5
    receiving_application: str = ""
    #: MSH-6
    receiving_facility: str = ""
    #: ACK AE (application error): retry or fail (dead letter)
    on_error: Literal["retry", "fail"] = "retry"
    #: ACK AR (application reject): retry or fail
    on_reject: Literal["retry", "fail"] = "fail"
    #: add the PDF report as an ED observation (base64)
    include_pdf: bool = False
    #: Optional TLS ([delivery.hl7.tls]).
    tls: ClientTls = field(default_factory=ClientTls)


@dataclass(frozen=True)
class WebhookAlert:
    #: Shown in status; letters, digits, - _ .
    name: str
    #: Where the JSON is POSTed (http:// or https://).
    url: str
    #: true adds accession number and study UID to the JSON
    include_identifiers: bool = False


@dataclass(frozen=True)
class EmailAlert:
    #: Shown in status; letters, digits, - _ .
    name: str
    #: The SMTP server.
    smtp_host: str
    #: The From address.
    sender: str
    #: The To addresses (at least one).
    recipients: tuple[str, ...]
    #: The SMTP server's port (TCP).
    smtp_port: int = 25
    #: Upgrade the connection with STARTTLS before sending.
    starttls: bool = False
    #: empty = no login
    username: str = ""
    #: name of the environment variable holding the password
    password_env: str = ""
    #: true adds accession number and study UID to the message
    include_identifiers: bool = False


@dataclass(frozen=True)
class ReportMail:
    """"E-mail this report" on the console's Study page: a user sends the latest version of a
    report's PDF to one address they type, through this SMTP server, as an outbox item
    (retried, dead-lettered and audited like every delivery). Off while smtp_host is ""."""

    #: The SMTP server; "" = no report e-mail (the console shows no such form).
    smtp_host: str = ""
    #: The SMTP server's port (TCP).
    smtp_port: int = 25
    #: Upgrade the connection with STARTTLS before sending.
    starttls: bool = False
    #: empty = no login
    username: str = ""
    #: name of the environment variable holding the password
    password_env: str = ""
    #: The From address (required when smtp_host is set).
    sender: str = ""
    #: true puts the patient's name and the accession number in the subject and body; false
    #: (the default): "AI report", the model, the study date and the job number only. The
    #: attached PDF always names the patient.
    include_identity: bool = False


@dataclass(frozen=True)
class DeliverySettings:
    """Results leave through a durable outbox: every DICOM object, HL7 message and alert is a
    ledger row before the first attempt. Failed attempts are retried with exponential back-off
    (retry_base_s, doubling each time, at most retry_cap_s) up to max_attempts, then the item is
    FAILED (dead letter; ``dicom-node status`` shows it, ``dicom-node retry`` re-queues it)."""

    #: Seconds between outbox sweeps (due deliveries are attempted on each sweep).
    poll_interval_s: float = 1.0
    #: Seconds to wait for a peer (connection, association, response, ACK).
    timeout_s: float = 30.0
    #: Seconds before the first retry; each further retry waits twice as long as the one before.
    retry_base_s: float = 10.0
    #: Longest wait between two attempts (seconds).
    retry_cap_s: float = 900.0
    #: Attempts before an item is dead-lettered.
    max_attempts: int = 10
    #: Lowest triage category that notifies the radiologist (webhooks, email): URGENT or PRIORITY.
    alert_on: Literal["URGENT", "PRIORITY"] = "URGENT"
    #: C-STORE destinations (PACS) for every result object. Empty = results are built but not sent.
    dicom: tuple[DicomDestination, ...] = ()
    #: DICOMweb STOW-RS destinations: every result object POSTed (multipart/related) to the studies
    #: resource of a PACS or archive, one request per job and destination.
    stow: tuple[StowDestination, ...] = ()
    #: HL7 v2.5.1 ORU^R01 over MLLP to the EMR interface engine, one message per model result.
    hl7: tuple[Hl7Destination, ...] = ()
    #: Radiologist notification for results at or above alert_on: a JSON POST per result.
    webhooks: tuple[WebhookAlert, ...] = ()
    #: The same notification by e-mail (SMTP).
    email: tuple[EmailAlert, ...] = ()
    #: [delivery.report_mail]: "E-mail this report" from the console (off by default).
    report_mail: ReportMail = field(default_factory=ReportMail)


@dataclass(frozen=True)
class Hl7Settings:
    #: MSH-3 and MSH-4 of every message the node sends.
    sending_application: str = "DICOM_NODE"
    #: MSH-4.
    sending_facility: str = ""
    #: MSH-11: P (production), T (training) or D (debugging).
    processing_id: Literal["P", "T", "D"] = "P"
    #: OBR-4 Universal Service Identifier of the AI result: identifier, text, coding system.
    service_id: str = "AI-IMAGING"
    #: OBR-4.2: the text of the service.
    service_text: str = "AI image analysis"
    #: OBR-4.3: the coding system of service_id (L = local).
    service_coding_system: str = "L"


@dataclass(frozen=True)
class LdapRole:
    #: A directory group: its DN ("cn=radiologists,ou=groups,dc=hospital,dc=org") or its cn
    #: ("radiologists"), compared without regard to case.
    group: str
    #: The role the group's members get: admin, operator, radiologist or clinician.
    role: Literal["admin", "operator", "radiologist", "clinician"]


@dataclass(frozen=True)
class LdapSettings:
    """Login with the hospital's directory (LDAP simple bind, ldap3) besides local accounts.

    A local account of the same name wins. The user's DN comes from ``user_dn_template``, or
    else from a search with the service account ``bind_dn``. The role comes from the user's
    groups through ``roles``; a user in none of them is refused."""

    #: Log in directory users (LDAP bind) besides the local accounts.
    enabled: bool = False
    #: The directory: ldap://host:389 or ldaps://host:636.
    url: str = ""
    #: Upgrade an ldap:// connection with StartTLS before anything is sent (not with ldaps://).
    start_tls: bool = False
    #: PEM CA bundle that verifies the directory's certificate (ldaps:// or start_tls);
    #: "" = the system's CAs.
    ca_file: str = ""
    #: The user's DN from the login name, {name} being replaced by the name (escaped as an RDN
    #: value), e.g. "uid={name},ou=people,dc=hospital,dc=org". "" = search for the user with
    #: bind_dn, user_base and user_filter.
    user_dn_template: str = ""
    #: Service account that searches for users and groups. "" = users and groups are read with
    #: the user's own bind (then user_dn_template is required).
    bind_dn: str = ""
    #: Name of the environment variable that holds bind_dn's password (never this file).
    password_env: str = "DICOM_NODE_LDAP_PASSWORD"  # noqa: S105 - a variable's name
    #: Subtree searched for the user (search mode).
    user_base: str = ""
    #: Filter that finds exactly one user; {name} is the login name, escaped for filters.
    user_filter: str = "(&(objectClass=inetOrgPerson)(uid={name}))"
    #: Subtree searched for the user's groups.
    group_base: str = ""
    #: Filter that finds the user's groups; {dn} is the user's DN and {name} the login name,
    #: both escaped for filters.
    group_filter: str = "(&(objectClass=groupOfNames)(member={dn}))"
    #: Groups and their roles ([[web.ldap.roles]]), in order: the first entry naming a group
    #: the user is in gives the role, so write the most privileged first. A user in none of
    #: them cannot log in.
    roles: tuple[LdapRole, ...] = ()
    #: Seconds to wait for the directory: to connect, and for each answer.
    timeout_s: float = 5.0


@dataclass(frozen=True)
class WebSettings:
    #: The HTTP API (/api/v1, /healthz, /readyz) inside ``serve``.
    enabled: bool = True
    #: Address the API listens on. 127.0.0.1 = this machine only; put a TLS proxy or tls = true
    #: in front before opening it to the network.
    host: str = "127.0.0.1"
    #: HTTP port (TCP).
    port: int = 8080
    #: HTTPS with the node's certificate and key (scp.tls.certificate, scp.tls.private_key);
    #: session cookies are then marked Secure.
    tls: bool = False
    #: Seconds a login session lasts (then the user logs in again).
    session_ttl_s: float = 28800.0
    #: Failed logins in a row after which the account is locked for lockout_s.
    max_failed_logins: int = 5
    #: Seconds an account stays locked after max_failed_logins failures.
    lockout_s: float = 900.0
    #: Name of the environment variable holding the token /metrics wants (Authorization:
    #: Bearer <token>). "" = /metrics answers anyone who reaches the API's address.
    metrics_token_env: str = ""
    #: Link from a study's console page to the study in the hospital's PACS viewer, with
    #: {study_uid} for its Study Instance UID (e.g.
    #: "https://pacs.hospital.org/viewer?StudyInstanceUIDs={study_uid}"); "" = no link. Shown
    #: to the roles that see the patient's identity.
    pacs_viewer_url: str = ""
    #: Largest upload (POST /api/v1/upload, the console's Upload page), in MiB; a larger one
    #: is refused (413) before it is read.
    max_upload_mb: int = 512
    #: Directory login ([web.ldap]).
    ldap: LdapSettings = field(default_factory=LdapSettings)


@dataclass(frozen=True)
class WorkersSettings:
    """Scaled out: the receiving node only receives, completes and enqueues; ``dicom-node
    worker`` processes (any number, on any machine sharing var_dir and the ledger database) run
    de-identification, inference, building and delivery as Celery tasks. Off: ``serve`` runs
    every stage in its own process (the embedded default, no broker)."""

    #: Enqueue completed studies for workers instead of processing them in ``serve``
    #: (``serve --no-pipeline`` turns it on for one run). Needs a PostgreSQL ledger and a
    #: var_dir the workers share (NFS in production).
    enabled: bool = False
    #: Celery broker: amqp://user:password@host:port/vhost (RabbitMQ) or redis://host:port/db.
    broker_url: str = "amqp://guest@127.0.0.1:5672//"
    #: Prefix of the queue names: <prefix>.deidentify, <prefix>.infer.<model>, <prefix>.build,
    #: <prefix>.deliver. Nodes sharing a broker need different prefixes.
    queue_prefix: str = "dicom-node"
    #: Seconds a job may wait in a stage's input state before the receiving node enqueues it
    #: again (a publish lost when the node stopped between commit and publish, or to a broker
    #: that was down); a duplicate is harmless. Longer than any stage runs.
    requeue_after_s: float = 300.0
    #: Seconds between two passes of that re-enqueue sweep (it also enqueues the deliveries
    #: whose retry is due).
    requeue_interval_s: float = 5.0


@dataclass(frozen=True)
class AuditSettings:
    """The audit trail's copy at the hospital's audit repository: each record as a DICOM audit
    message (PS3.15 A.5, IHE ATNA) over syslog (RFC 5424), sent from the ledger by a sweep in
    ``serve`` so that none is lost while the repository is down. The ledger keeps every record
    either way."""

    #: Send audit records to the repository. Records written while this is off are not sent
    #: later (see send_earlier).
    enabled: bool = False
    #: The audit repository's syslog receiver as host:port (e.g. "audit.hospital.org:6514").
    repository: str = ""
    #: "udp" (RFC 5426: one datagram per message, no delivery guarantee) or "tls" (RFC 5425:
    #: octet-counted frames over TLS; the only transport on which the node knows it was taken).
    transport: Literal["udp", "tls"] = "udp"
    #: PEM CA bundle that verifies the repository's certificate (tls; required there).
    ca_file: str = ""
    #: PEM client certificate, if the repository asks for one (tls).
    certificate: str = ""
    #: PEM private key of that client certificate.
    private_key: str = ""
    #: The syslog APP-NAME of the node's messages.
    app_name: str = "dicom-node"
    #: AuditEnterpriseSiteID of the messages (the hospital's name for its site); "" = none.
    site_id: str = ""
    #: Seconds between two sweeps that send what is pending.
    interval_s: float = 1.0
    #: Longest wait in seconds between tries while the repository is unreachable (the wait
    #: doubles from interval_s up to this).
    retry_cap_s: float = 60.0
    #: Seconds to connect or send before the repository counts as unreachable.
    timeout_s: float = 5.0
    #: At start-up, also send the records written while forwarding was off (once).
    send_earlier: bool = False


@dataclass(frozen=True)
class Settings:
    #: [node]: the node's identity, address, folder and ledger database.
    node: NodeSettings = field(default_factory=NodeSettings)
    #: [scp]: receiving (associations, timeouts, disk, access, TLS).
    scp: ScpSettings = field(default_factory=ScpSettings)
    #: [ledger]: the ledger database's behaviour.
    ledger: LedgerSettings = field(default_factory=LedgerSettings)
    #: [completion]: when a study has fully arrived.
    completion: CompletionSettings = field(default_factory=CompletionSettings)
    #: [deid]: the de-identification profile, its options and key.
    deid: DeidSettings = field(default_factory=DeidSettings)
    #: [storage]: files at rest.
    storage: StorageSettings = field(default_factory=StorageSettings)
    #: [models]: which AI models run, and where.
    models: ModelsSettings = field(default_factory=ModelsSettings)
    #: [delivery]: the outbox, its destinations and alerts.
    delivery: DeliverySettings = field(default_factory=DeliverySettings)
    #: [hl7]: the node's HL7 identity and service.
    hl7: Hl7Settings = field(default_factory=Hl7Settings)
    #: [web]: the HTTP API, its users' sessions and login lockout.
    web: WebSettings = field(default_factory=WebSettings)
    #: [workers]: Celery workers instead of processing in the receiving node.
    workers: WorkersSettings = field(default_factory=WorkersSettings)
    #: [audit]: audit records to the audit repository (DICOM audit messages over syslog).
    audit: AuditSettings = field(default_factory=AuditSettings)
    #: Where the settings were read from (a path, or <defaults>); set by the loader.
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
