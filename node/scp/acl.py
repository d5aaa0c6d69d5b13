"""Who may associate: the called AE title and an allow-list of calling AE titles (and hosts)."""

from __future__ import annotations

from node.core.settings import AllowedCaller
from node.scp.status import RejectReason


def check_association(
    *,
    called_ae_title: str,
    calling_ae_title: str,
    peer_host: str,
    own_ae_title: str,
    require_called_ae_title: bool,
    allowed: tuple[AllowedCaller, ...],
) -> RejectReason | None:
    """Return why the association must be rejected, or None to accept it.

    An empty allow-list admits every caller. An entry with a host admits that AE title only
    from that address; an entry without a host admits it from anywhere.
    """
    if require_called_ae_title and called_ae_title.strip() != own_ae_title.strip():
        return RejectReason.CALLED_AE_NOT_RECOGNISED
    if not allowed:
        return None
    calling = calling_ae_title.strip()
    for entry in allowed:
        if entry.ae_title.strip() == calling and (not entry.host or entry.host == peer_host):
            return None
    return RejectReason.CALLING_AE_NOT_RECOGNISED
