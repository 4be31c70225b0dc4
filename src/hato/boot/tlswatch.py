"""The certificate in force: reloaded on SIGHUP, when its files change, and when ACME renews
it (part of the composition root; apart from boot/reload.py, which the ACME wiring would
otherwise import, and through it the whole build).

May import every room.
"""

from __future__ import annotations

import asyncio
import logging

from hato.model import logfmt
from hato.server.tls import ReloadingContext, TLSConfigError

log = logging.getLogger("hato")

TLS_WATCH_SECONDS = 30.0  # how often certificate files are checked for a renewal


def reload_tls(tls: ReloadingContext | None, force: bool) -> None:
    """SIGHUP, or the files changed: new handshakes use the new certificate; sessions already
    on TLS keep theirs, so nothing is dropped."""
    if tls is None:
        return
    try:
        if tls.refresh(force=force):
            log.info(logfmt("tls-reloaded", cert=tls.cert, not_after=tls.not_after().isoformat()))
    except TLSConfigError as exc:
        log.error(logfmt("tls-reload-failed", detail=str(exc), kept="the previous certificate"))


async def watch_tls(tls: ReloadingContext) -> None:
    while True:
        await asyncio.sleep(TLS_WATCH_SECONDS)
        reload_tls(tls, False)
