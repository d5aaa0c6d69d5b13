"""The node's de-identification secret and the pseudonyms derived from it.

One secret (32 random bytes, base64 in a key file or in ``DICOM_NODE_DEID_KEY``) yields two keys
through HKDF: an HMAC key that derives pseudonyms (the same original always gives the same
pseudonym, so a re-sent instance maps the same way) and a Fernet key that encrypts the map back
to the originals. Neither key, nor the secret, is ever written to the database.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import os
import secrets
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from cryptography.fernet import Fernet
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from node.core.errors import ConfigError

KEY_ENV = "DICOM_NODE_DEID_KEY"


def derive_key(secret: bytes, info: bytes) -> bytes:
    """A 32-byte sub-key of the node's secret for one purpose (HKDF-SHA256, ``info`` names it)."""
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=info).derive(secret)


@dataclass(frozen=True)
class DeidKeys:
    hmac_key: bytes
    fernet: Fernet

    @classmethod
    def from_secret(cls, secret: bytes) -> DeidKeys:
        if len(secret) < 32:
            raise ConfigError(["deid key: must hold at least 32 random bytes (base64)"])
        return cls(
            hmac_key=derive_key(secret, b"dicom-node pseudonyms v1"),
            fernet=Fernet(base64.urlsafe_b64encode(derive_key(secret, b"dicom-node map v1"))),
        )

    def digest(self, kind: str, value: str) -> bytes:
        msg = kind.encode() + b"\0" + value.encode("utf-8", "surrogateescape")
        return hmac.new(self.hmac_key, msg, hashlib.sha256).digest()

    def uid(self, original: str) -> str:
        """A UID under the 2.25 root (PS3.5 B.2) from 128 bits of the keyed digest."""
        return "2.25." + str(int.from_bytes(self.digest("uid", original)[:16], "big"))

    def code(self, kind: str, original: str, length: int) -> str:
        return base64.b32encode(self.digest(kind, original)).decode()[:length]

    def date_shift_days(self, patient_key: str, max_days: int) -> int:
        """Days to move this patient's dates into the past: 1..max_days, stable per patient."""
        return 1 + int.from_bytes(self.digest("date-shift", patient_key)[:4], "big") % max_days

    def encrypt(self, text: str) -> str:
        return self.fernet.encrypt(text.encode("utf-8", "surrogateescape")).decode("ascii")

    def decrypt(self, token: str) -> str:
        return self.fernet.decrypt(token.encode("ascii")).decode("utf-8", "surrogateescape")


def new_secret() -> str:
    return base64.b64encode(secrets.token_bytes(32)).decode("ascii")


def write_key_file(path: Path) -> None:
    """Create a new key file readable by its owner only; refuse to overwrite one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(new_secret() + "\n")


def key_file_for(key_file: str, var: Path, environ: Mapping[str, str] | None = None) -> str:
    """The key file in use: ``deid.key_file``; else, with no key in the environment, the
    embedded default ``<var_dir>/deid.key`` if ``serve`` has created it; else ``""``.

    Every process of a node (the main one, the extra receivers, the CLI) resolves the key the
    same way, so all derive the same pseudonyms, spool names and storage keys.
    """
    env = os.environ if environ is None else environ
    if key_file or env.get(KEY_ENV, "").strip():
        return key_file
    default = var / "deid.key"
    return str(default) if default.exists() else ""


def load_secret(key_file: str, environ: Mapping[str, str] | None = None) -> bytes:
    """The secret from ``$DICOM_NODE_DEID_KEY`` or else ``key_file``; a clear error if neither."""
    env = os.environ if environ is None else environ
    text = env.get(KEY_ENV, "").strip()
    source = KEY_ENV
    if not text:
        if not key_file:
            raise ConfigError([
                f"deid.key_file: no de-identification key: set deid.key_file or {KEY_ENV} "
                "(create one with: dicom-node keygen --out PATH)"
            ])
        try:
            text = Path(key_file).read_text(encoding="ascii").strip()
        except FileNotFoundError:
            raise ConfigError([f"deid.key_file: file not found: {key_file}"]) from None
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError([f"deid.key_file: cannot be read ({type(exc).__name__})"]) from None
        source = "deid.key_file"
    try:
        secret = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise ConfigError(
            [f"{source}: not a base64 key (create one with dicom-node keygen)"]
        ) from None
    if len(secret) < 32:
        raise ConfigError([f"{source}: must hold at least 32 random bytes (base64)"])
    return secret


def load_keys(key_file: str, environ: Mapping[str, str] | None = None) -> DeidKeys:
    """Keys from ``$DICOM_NODE_DEID_KEY`` or else ``key_file``; a clear error if neither."""
    return DeidKeys.from_secret(load_secret(key_file, environ))
