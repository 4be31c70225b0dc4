"""Sending the reports: for each policy domain with events since the last report, build the
DMARC aggregate report (and the TLS report), find where it goes, and queue one message per
destination; then forget what was reported.

Theory of operation: `ReportSender.send(end)` reports everything the store holds before `end`
(the events of earlier intervals that were never sent go with it: a server that was down at
report time loses nothing). Per kind ("dmarc", "tlsrpt"), the interval reported is [the end
of the last report, or the first event, `end`). Each destination gets its own message through
the `Submit` seam (the server's local submission: the queue, DKIM-signed, delivered like any
mail); a destination that is not authorised (RFC 7489 §7.1) or whose size limit the report
exceeds (RFC 7489 §6.2 `!size`) gets nothing, and the log says why. After the run, the rows
before `end` are deleted, sent or not: a report is not retried (RFC 7489 §7.2.1: the next
interval's report is the new attempt), and the store stays small. TLS reports to an https:
destination are POSTed through the `Poster` seam (RFC 8460 §5.3.1; boot/reportwatch.py), or
skipped without one.

Must not import anything of hato but model and authcheck (and this room).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Protocol, TypeVar

from hato.model import Clock, logfmt
from hato.model.dns import Resolver
from hato.reports.aggregate import Submitter, aggregate_xml
from hato.reports.message import compress, dmarc_message, tlsrpt_message
from hato.reports.records import DmarcEvent, ReportStore, TlsEvent
from hato.reports.rua import Destination, dmarc_destinations, tlsrpt_destinations
from hato.reports.tlsrpt import tlsrpt_json

log = logging.getLogger("hato.reports")

Poster = Callable[[str, bytes], Awaitable[None]]  # (https URL, gzip body) -> sent; raises OSError
E = TypeVar("E", DmarcEvent, TlsEvent)


class SubmitFailed(Exception):
    """The message could not be queued (the text says why)."""


class Submit(Protocol):
    """Queue a message from `mail_from` to `recipient`; returns the queue id, raises
    SubmitFailed."""

    async def __call__(self, mail_from: str, recipient: str, message: bytes) -> str: ...


@dataclass(slots=True)
class RunSummary:
    """What one run did (for `hato report send` and the log)."""

    sent: list[str] = field(default_factory=list)  # "dmarc example.org -> rua@example.net"
    skipped: list[str] = field(default_factory=list)


class ReportSender:
    def __init__(
        self,
        store: ReportStore,
        resolver: Resolver,
        submit: Submit,
        clock: Clock,
        submitter: Submitter,
        *,
        tlsrpt: bool = True,
        poster: Poster | None = None,
    ) -> None:
        self._store = store
        self._resolver = resolver
        self._submit = submit
        self._clock = clock
        self._submitter = submitter
        self._tlsrpt = tlsrpt
        self._poster = poster

    async def send(self, end: float) -> RunSummary:
        summary = RunSummary()
        # Nodes on a shared store all reach the interval's end: the first to claim it sends.
        if not await asyncio.to_thread(self._store.claim_run, end):
            summary.skipped.append(f"the reports up to {int(end)} are another node's to send")
            log.info(logfmt("reports-sent", sent=0, skipped=0, rows=0, by="another-node"))
            return summary
        # The store's calls may wait for another worker's lock: in a thread, not on the loop.
        dmarc = await asyncio.to_thread(self._store.dmarc_events, 0, end)
        if dmarc:
            begin = await self._begin("dmarc", dmarc)
            for domain, events in _by_domain(dmarc, lambda e: e.policy.domain).items():
                await self._dmarc(domain, events, begin, int(end), summary)
            await asyncio.to_thread(self._store.mark_sent, "dmarc", end)
        tls = await asyncio.to_thread(self._store.tls_events, 0, end) if self._tlsrpt else []
        if tls:
            begin = await self._begin("tlsrpt", tls)
            for domain, records in _by_domain(tls, lambda e: e.policy_domain).items():
                await self._tls(domain, records, begin, int(end), summary)
            await asyncio.to_thread(self._store.mark_sent, "tlsrpt", end)
        removed = await asyncio.to_thread(self._store.prune, end)
        log.info(logfmt("reports-sent", sent=len(summary.sent), skipped=len(summary.skipped),
                        rows=removed))  # fmt: skip
        return summary

    async def _begin(self, kind: str, events: Sequence[DmarcEvent] | Sequence[TlsEvent]) -> int:
        """The interval reported: from the end of the last report, else the first event."""
        last = await asyncio.to_thread(self._store.last_sent, kind)
        return int(last if last is not None else min(e.time for e in events))

    async def _dmarc(
        self, domain: str, events: list[DmarcEvent], begin: int, end: int, summary: RunSummary
    ) -> None:
        report_id = f"{end}.{domain}@{self._submitter.domain}"
        xml = aggregate_xml(
            self._submitter, domain, events, begin=begin, end=end, report_id=report_id
        )
        gz = compress(xml)
        found, skipped = await dmarc_destinations(self._resolver, domain)
        self._skipped("dmarc", domain, skipped, summary)
        for dest in found:
            message = dmarc_message(self._submitter, dest.address, domain, report_id, gz,
                                    begin=begin, end=end, now=self._clock.now())  # fmt: skip
            await self._deliver("dmarc", domain, dest, message, summary)

    async def _tls(
        self, domain: str, events: list[TlsEvent], begin: int, end: int, summary: RunSummary
    ) -> None:
        report_id = f"{end}.{domain}@{self._submitter.domain}"
        body = tlsrpt_json(org_name=self._submitter.org_name, contact=self._submitter.email,
                           report_id=report_id, policy_domain=domain, events=events,
                           begin=begin, end=end)  # fmt: skip
        gz = compress(body)
        found, skipped = await tlsrpt_destinations(self._resolver, domain)
        self._skipped("tlsrpt", domain, skipped, summary)
        for dest in found:
            if not dest.address:
                await self._post(domain, dest, gz, summary)
                continue
            message = tlsrpt_message(self._submitter, dest.address, domain, report_id, gz,
                                     begin=begin, end=end, now=self._clock.now())  # fmt: skip
            await self._deliver("tlsrpt", domain, dest, message, summary)

    async def _deliver(
        self,
        kind: str,
        domain: str,
        dest: Destination,
        message: bytes,
        summary: RunSummary,
    ) -> None:
        size = len(message)
        if dest.limit and size > dest.limit:
            # RFC 7489 §6.2: the destination takes reports up to `limit` octets only; the whole
            # message (compressed and base64-encoded) is measured, so it never exceeds it.
            self._skipped(kind, domain, [f"{dest.uri}: {size} octets over its limit"], summary)
            return
        try:
            queue_id = await self._submit(self._submitter.email, dest.address, message)
        except SubmitFailed as exc:
            self._skipped(kind, domain, [f"{dest.uri}: not queued: {exc}"], summary)
            return
        log.info(logfmt("report-queued", kind=kind, domain=domain, to=dest.address, id=queue_id))
        summary.sent.append(f"{kind} {domain} -> {dest.address}")

    async def _post(self, domain: str, dest: Destination, gz: bytes, summary: RunSummary) -> None:
        if self._poster is None:
            self._skipped("tlsrpt", domain, [f"{dest.uri}: https: is not supported"], summary)
            return
        try:
            await self._poster(dest.uri, gz)
        except (OSError, TimeoutError) as exc:
            self._skipped("tlsrpt", domain, [f"{dest.uri}: {exc}"], summary)
            return
        log.info(logfmt("report-posted", kind="tlsrpt", domain=domain, to=dest.uri))
        summary.sent.append(f"tlsrpt {domain} -> {dest.uri}")

    def _skipped(self, kind: str, domain: str, reasons: list[str], summary: RunSummary) -> None:
        for reason in reasons:
            log.info(logfmt("report-skipped", kind=kind, domain=domain, reason=reason))
            summary.skipped.append(f"{kind} {domain}: {reason}")


def _by_domain(events: Sequence[E], domain: Callable[[E], str]) -> dict[str, list[E]]:
    groups: dict[str, list[E]] = {}
    for event in events:
        groups.setdefault(domain(event), []).append(event)
    return groups
