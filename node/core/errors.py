"""The node's one error tree.

Library errors are mapped onto these at the boundary (``raise ... from exc``). Messages never
carry patient data: they name the attribute or the step, never its value.
"""


class NodeError(Exception):
    """Base of every error the node raises on purpose."""


class ConfigError(NodeError):
    """The configuration is unusable; ``problems`` holds one line per error."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = list(problems)
        super().__init__("; ".join(self.problems))


class TransientError(NodeError):
    """Worth retrying later: a peer is down, the disk is full, the database is busy."""


class PermanentError(NodeError):
    """Retrying will not help: the job is dead-lettered or the input quarantined."""


class OutOfResources(TransientError):
    """Free disk space is below the configured threshold."""


class LedgerUnavailable(TransientError):
    """The ledger database could not be written."""


class UnidentifiableInstance(PermanentError):
    """A received object cannot be parsed far enough to know which study it belongs to."""


class IllegalTransition(PermanentError):
    """A job was asked to move between two states the transition table does not link."""


class UnknownStudy(PermanentError):
    """No study with that Study Instance UID is in the ledger."""
