"""The reports inside `hato serve` ([reports], docs/reports.md): the store every worker records
into, the sender the first worker runs at each interval's end, and the control socket's
`reports.send` (`hato report send`).

Theory of operation: with `[reports] enabled`, each worker opens `reports.db` (WAL: many
writers) and hands it to its mx sessions (DMARC results, intake/inbound.py) and, with
`tlsrpt`, to its outbound courier (TLS results, delivery/tlsreport.py). The first worker
sleeps until the next interval boundary (the UTC `hour`, then every `interval` seconds after
it), then sends the reports of everything recorded before it. A report message is DKIM-signed
here with the key of its From domain (as submission signs) and queued by local submission
from `from_address`. `hato report send --now` runs the same step at once, up to now.

May import every room (part of the composition root).
"""

from __future__ import annotations

import asyncio
import http.client
import logging
import os
import socket
import ssl
import urllib.request
from collections.abc import Awaitable, Callable, Coroutine
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hato.delivery.outbound import OutboundCourier
from hato.delivery.tlsreport import TlsReporting
from hato.model import Clock, logfmt
from hato.model.dns import Resolver
from hato.reports import SqliteReportStore
from hato.reports.aggregate import Submitter
from hato.reports.sender import Poster, ReportSender, SubmitFailed
from hato.server.control import Submit
from hato.server.localsubmit import SubmitRefused

if TYPE_CHECKING:
    from psycopg_pool import ConnectionPool

    from hato.config import Settings

log = logging.getLogger("hato.reports")

SendOp = Callable[[bool], Awaitable[dict[str, list[str]]]]
POST_TIMEOUT = 30.0  # seconds for one TLS report POST


def https_poster(timeout: float = POST_TIMEOUT) -> Poster:
    """RFC 8460 §5.3.1: POST the gzip report as application/tlsrpt+gzip to an https: rua,
    the server's certificate verified against the system trust (a thread: urllib blocks)."""
    context = ssl.create_default_context()

    def post(url: str, body: bytes) -> None:
        request = urllib.request.Request(
            url, data=body, method="POST", headers={"Content-Type": "application/tlsrpt+gzip"}
        )
        try:
            # An HTTP error status raises urllib.error.HTTPError, an OSError.
            with urllib.request.urlopen(request, timeout=timeout, context=context) as response:
                response.read(65536)
        except (http.client.HTTPException, ValueError) as exc:  # a broken answer, a bad URL
            raise OSError(f"{type(exc).__name__}: {exc}") from exc

    async def send(url: str, body: bytes) -> None:
        await asyncio.to_thread(post, url, body)

    return send


def open_reports(
    settings: Settings,
    data_dir: Path,
    clock: Clock,
    outbound: OutboundCourier,
    pool: ConnectionPool[Any] | None = None,
) -> SqliteReportStore | None:
    """The store to record into (None without [reports] enabled): DATA_DIR/reports.db, or the
    shared PostgreSQL's tables when `pool` ([store] postgresql); wires the courier's TLS
    results when [reports] tlsrpt."""
    if not settings.reports.enabled:
        return None
    store: SqliteReportStore
    if pool is None:
        store = SqliteReportStore.in_data_dir(data_dir)
    else:
        from hato.reports.postgres import FLUSH_SECONDS, PgReportStore

        node = settings.store.node or socket.gethostname()
        store = PgReportStore(pool, node=node, flush_seconds=FLUSH_SECONDS)
    if settings.reports.tlsrpt:
        outbound.tls_reports = TlsReporting(store, clock)
    return store


def submitter(settings: Settings) -> Submitter:
    sender = settings.reports.sender(settings.domains[0].name)
    return Submitter(
        org_name=settings.reports.org_name or settings.server.hostname,
        email=str(sender),
        domain=sender.domain.lower(),
    )


def close_reports(store: SqliteReportStore | None) -> None:
    if store is not None:
        store.close()


def build_sender(
    settings: Settings,
    store: SqliteReportStore | None,
    resolver: Resolver,
    clock: Clock,
    submit: Submit,
) -> ReportSender | None:
    """The first worker's sender (None without a store: [reports] off, or another worker)."""
    if store is None:
        return None
    sender = settings.reports.sender(settings.domains[0].name)

    async def queue(mail_from: str, recipient: str, message: bytes) -> str:
        try:
            # The server's own uid may send as any address; the local door DKIM-signs it with
            # the key of its From domain (server/localsubmit.py, intake/finish.py).
            return await submit(sender, [recipient], message, uid=os.geteuid())
        except (SubmitRefused, OSError) as exc:
            raise SubmitFailed(str(exc)) from exc

    return ReportSender(
        store,
        resolver,
        queue,
        clock,
        submitter(settings),
        tlsrpt=settings.reports.tlsrpt,
        poster=https_poster(),
    )


def next_boundary(now: float, hour: int, interval: float) -> float:
    """The first interval end after `now`: `hour`:00 UTC of some day, plus whole intervals."""
    day_start = now - now % 86400 + hour * 3600
    first = day_start - 86400 if day_start > now else day_start
    steps = int((now - first) // interval) + 1
    return first + steps * interval


async def _periodic(settings: Settings, sender: ReportSender, clock: Clock) -> None:
    r = settings.reports
    while True:
        end = next_boundary(clock.now(), r.hour, r.interval)
        await asyncio.sleep(max(0.0, end - clock.now()))
        try:
            await sender.send(end)
        except (OSError, TimeoutError) as exc:  # a DNS or disk failure: the next run retries
            log.warning(logfmt("reports-failed", error=f"{type(exc).__name__}: {exc}"))


def report_task(
    settings: Settings, sender: ReportSender | None, clock: Clock
) -> Coroutine[Any, Any, None]:
    """What the first worker runs: the periodic reports (or nothing)."""
    if sender is None:
        return _forever()
    return _periodic(settings, sender, clock)


async def _forever() -> None:
    await asyncio.Event().wait()


def send_op(settings: Settings, sender: ReportSender | None, clock: Clock) -> SendOp | None:
    """The control socket's reports.send: report what is due (up to the last interval end),
    or with `now` everything recorded up to now."""
    if sender is None:
        return None
    r = settings.reports

    async def send(now: bool) -> dict[str, list[str]]:
        at = clock.now()
        end = at if now else next_boundary(at, r.hour, r.interval) - r.interval
        summary = await sender.send(end)
        return {"sent": summary.sent, "skipped": summary.skipped}

    return send
