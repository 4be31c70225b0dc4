"""Keeps the certificate fresh: orders one when the stored one is due, retries with backoff,
and swaps the new one into every listener.

Theory of operation. `run()` loops: read cert.pem, sleep until its renewal time (store.py: a
third of the lifetime left; at once for the placeholder), order (client.py, in a worker
thread), write the files, call `swap` (the TLS reload: sessions already open keep the context
they began with, new handshakes take the new one). A failed order is logged and retried after
BACKOFF_FIRST seconds, doubling up to BACKOFF_MAX; the old certificate stays in use meanwhile.
`renew()` (`hato tls renew`) orders at once; a lock keeps two orders from running together.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

from hato.acme.client import AcmeError, Order, Responder, obtain
from hato.acme.store import CertFiles, describe, new_key_pem, renewal_time
from hato.model import Clock, logfmt

log = logging.getLogger("hato.acme")
BACKOFF_FIRST = 60.0
BACKOFF_MAX = 6 * 3600.0


class CertificateManager:
    def __init__(
        self,
        order: Order,
        files: CertFiles,
        tokens: Responder,
        swap: Callable[[], None],
        clock: Clock,
        *,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        issue: Callable[[Order, bytes, bytes, Responder], bytes] = obtain,
    ) -> None:
        self._order = order
        self._files = files
        self._tokens = tokens
        self._swap = swap
        self._clock = clock
        self._lock = asyncio.Lock()
        self._sleep = sleep
        self._obtain = issue  # client.obtain; a fake in tests

    async def run(self) -> None:
        backoff = BACKOFF_FIRST
        while True:
            due = renewal_time(self._files.cert.read_bytes()).timestamp()
            wait = due - self._clock.now()
            if wait > 0:
                await self._sleep(min(wait, 86400.0))  # look again daily: the clock may jump
                continue
            try:
                await self.renew()
            except AcmeError:
                await self._sleep(backoff)
                backoff = min(backoff * 2, BACKOFF_MAX)
            else:
                backoff = BACKOFF_FIRST

    async def renew(self) -> dict[str, str]:
        """Order a certificate now and swap it in; AcmeError (logged) when the order fails."""
        async with self._lock:
            names = ",".join(self._order.names)
            log.info(logfmt("acme-order", names=names, directory=self._order.directory))
            key_pem = new_key_pem()
            try:
                account_key = self._files.account_key_pem()
                chain = await asyncio.to_thread(
                    self._obtain, self._order, account_key, key_pem, self._tokens
                )
            except AcmeError as exc:
                log.error(logfmt("acme-order-failed", names=names, detail=str(exc)))
                raise
            try:
                self._files.write(chain, key_pem)
            except OSError as exc:
                log.error(logfmt("acme-order-failed", names=names, detail=str(exc)))
                raise AcmeError(f"{self._files.directory}: {exc.strerror}") from exc
            self._swap()
            facts = describe(chain)
            log.info(logfmt("acme-certificate", names=names, **facts))
            return facts
