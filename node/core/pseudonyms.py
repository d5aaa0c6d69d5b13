"""The encrypted map from pseudonyms back to original identifiers, kept in the ledger database.

Pseudonyms are keyed digests (not secret); the originals are stored only as Fernet ciphertext.
The key lives in the key file or the environment, never in the database.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from cryptography.fernet import InvalidToken
from sqlalchemy import Engine, select

from node.core import db
from node.core.errors import PermanentError
from node.core.keys import DeidKeys
from node.core.ledger import utcnow

_BATCH = 500


@dataclass(frozen=True)
class Pseudonym:
    kind: str  # "uid", "patient_id", "patient_name", "accession"
    pseudonym: str
    original: str


class WrongKey(PermanentError):
    """The map was written with another key."""


class PseudonymStore:
    def __init__(self, engine: Engine, keys: DeidKeys) -> None:
        self.engine = engine
        self.keys = keys
        self._insert = db.insert_ignoring_conflicts(engine, db.pseudonyms, "pseudonym")

    def save(self, entries: Iterable[Pseudonym]) -> int:
        """Store entries not stored yet; return how many were new."""
        unique = {e.pseudonym: e for e in entries}
        if not unique:
            return 0
        known = set(self._existing(unique))
        now = utcnow()
        rows = [
            {"pseudonym": p, "kind": e.kind, "ciphertext": self.keys.encrypt(e.original),
             "created_at": now}
            for p, e in unique.items() if p not in known
        ]
        if rows:
            with self.engine.begin() as conn:
                conn.execute(self._insert, rows)
        return len(rows)

    def _existing(self, pseudonyms: Iterable[str]) -> list[str]:
        out: list[str] = []
        items = list(pseudonyms)
        with db.reader(self.engine) as conn:
            for i in range(0, len(items), _BATCH):
                out += conn.execute(
                    select(db.pseudonyms.c.pseudonym)
                    .where(db.pseudonyms.c.pseudonym.in_(items[i : i + _BATCH]))
                ).scalars().all()
        return out

    def originals(self, pseudonyms: Iterable[str]) -> dict[str, str]:
        """Decrypt the originals of those pseudonyms that are in the map."""
        items = sorted(set(pseudonyms))
        found: dict[str, str] = {}
        with db.reader(self.engine) as conn:
            for i in range(0, len(items), _BATCH):
                rows = conn.execute(
                    select(db.pseudonyms.c.pseudonym, db.pseudonyms.c.ciphertext)
                    .where(db.pseudonyms.c.pseudonym.in_(items[i : i + _BATCH]))
                )
                for pseudonym, token in rows:
                    try:
                        found[pseudonym] = self.keys.decrypt(token)
                    except InvalidToken:
                        raise WrongKey(
                            "the pseudonym map cannot be decrypted with this de-identification "
                            "key (deid.key_file / DICOM_NODE_DEID_KEY changed?)"
                        ) from None
        return found
