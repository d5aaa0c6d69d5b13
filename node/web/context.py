"""What the web app is given by the composition root: the ledger, accounts, models, settings."""

from __future__ import annotations

from collections.abc import Collection, Mapping
from dataclasses import dataclass

from node.core.accounts import Accounts
from node.core.directory import Directory
from node.core.ledger import Ledger
from node.core.outbox import Outbox
from node.core.settings import Settings
from node.pipeline.infer.registry import LoadedModel


@dataclass(frozen=True)
class WebContext:
    ledger: Ledger
    outbox: Outbox
    accounts: Accounts
    settings: Settings
    #: the models ``serve`` loaded (name -> model), as the pipeline runs them
    models: Mapping[str, LoadedModel]
    #: the models this process should have loaded (``/readyz``): the enabled ones, or none
    #: where workers run them
    expected_models: frozenset[str]

    @classmethod
    def of(cls, ledger: Ledger, settings: Settings, models: Mapping[str, LoadedModel],
           expected_models: Collection[str] | None = None) -> WebContext:
        w = settings.web
        accounts = Accounts(ledger.engine, session_ttl_s=w.session_ttl_s,
                            max_failed_logins=w.max_failed_logins, lockout_s=w.lockout_s,
                            directory=Directory.of(w.ldap))
        accounts.prepare_logins()
        expected = settings.models.enabled if expected_models is None else expected_models
        return cls(ledger, Outbox(ledger.engine), accounts, settings, models, frozenset(expected))
