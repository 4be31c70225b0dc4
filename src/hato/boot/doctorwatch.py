"""The doctor inside `hato serve`: every `[doctor] interval` seconds (0: never) the checks of
`hato doctor` run again, and when the set of problems changes, the admin hears of it.

Theory of operation: one task in the first worker. Each run compares the problems found (check,
scope, detail) with those of the previous run (none before the first): each new one is logged
(`doctor-problem`), each gone one too (`doctor-resolved`), the `hato_doctor_problems` gauge is
set, and a report (the same text as `hato doctor`) is queued to the postmaster with the null
reverse path (RFC 5321 §4.5.5: no bounce can loop back) and `Auto-Submitted: auto-generated`
(RFC 3834 §5). Nothing is sent while the problems stay the same. A run that fails as a whole
(an OSError, a timeout) is logged and tried again at the next interval.

May import every room (part of the composition root).
"""

from __future__ import annotations

import asyncio
import datetime
import email.utils
import logging
import os
import ssl
import urllib.parse
from collections.abc import Awaitable, Callable, Coroutine
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hato.authcheck import load_signing_key
from hato.delivery.mtasts import HttpsPolicyFetcher
from hato.doctor import (
    DoctorSetup,
    DomainSetup,
    Finding,
    Listener,
    SmarthostSetup,
    Verdict,
    render_text,
    run_checks,
)
from hato.model import Address, Clock, logfmt
from hato.model.dns import Resolver
from hato.server.control import Submit
from hato.server.localsubmit import SubmitRefused
from hato.server.metrics import Metrics

if TYPE_CHECKING:
    from hato.config import Settings

log = logging.getLogger("hato.doctor")

Notify = Callable[[str, bytes], Awaitable[None]]  # (recipient, message) -> queued
Gauge = Callable[[int], None]


def _dkim_txt(settings: Settings, domain: str, selector: str) -> str | None:
    path = Path(settings.server.data_dir) / "dkim" / domain.lower() / f"{selector}.key"
    try:
        return load_signing_key(path.read_bytes()).dns_txt()
    except (OSError, ValueError):
        return None


def doctor_setup(settings: Settings) -> DoctorSetup:
    """What the doctor checks, from hato.toml (`hato doctor` and the periodic run alike)."""
    from hato.config.doctor_sections import split_target

    d = settings.doctor
    addresses = d.addresses
    if not addresses and settings.delivery.source_address is not None:
        addresses = (settings.delivery.source_address,)
    sh = settings.smarthost
    return DoctorSetup(
        hostname=settings.server.hostname,
        domains=tuple(
            DomainSetup(x.name, x.dkim_selector, _dkim_txt(settings, x.name, x.dkim_selector))
            for x in settings.domains
        ),
        addresses=addresses,
        certificate=_certificate(settings),
        caa_issuer=_caa_issuer(settings),
        egress_targets=tuple(split_target(t) for t in d.egress_targets),
        egress_timeout=d.egress_timeout,
        dnsbls=d.dnsbls,
        smarthost=SmarthostSetup(sh.host, sh.port, sh.fallback) if sh is not None else None,
        listeners=tuple(
            Listener(x.role.value, x.address.host, x.address.port) for x in settings.listeners
        ),
        cert_warn_days=d.cert_warn_days,
    )


def _certificate(settings: Settings) -> Path | None:
    if settings.tls is None:
        return None
    # [tls] acme: the certificate hato.acme.store keeps in the data directory.
    return settings.tls.cert or Path(settings.server.data_dir) / "acme" / "cert.pem"


# RFC 8659 §4.2: the issuer domain names CAs document for their CAA "issue" property.
_CAA_ISSUERS = {
    "letsencrypt.org": "letsencrypt.org",
    "pki.goog": "pki.goog",
    "zerossl.com": "sectigo.com",
}


def _caa_issuer(settings: Settings) -> str | None:
    """The CAA issuer domain of the CA in use: [doctor] caa_issuer, else the known ACME CA of
    [tls] acme; None when unknown."""
    if settings.doctor.caa_issuer is not None:
        return settings.doctor.caa_issuer
    acme = settings.tls.acme if settings.tls is not None else None
    if acme is None:
        return None
    host = urllib.parse.urlsplit(acme.directory).hostname or ""
    for suffix, issuer in _CAA_ISSUERS.items():
        if host == suffix or host.endswith("." + suffix):
            return issuer
    return None


def policy_fetcher(settings: Settings) -> HttpsPolicyFetcher:
    """MTA-STS policies fetched as the courier fetches them ([delivery] mta_sts_* for tests)."""
    delivery = settings.delivery
    ca = ssl.create_default_context(
        cafile=str(delivery.mta_sts_ca_file) if delivery.mta_sts_ca_file else None
    )
    connect_to = None
    if delivery.mta_sts_connect_to:
        host, _, port = delivery.mta_sts_connect_to.rpartition(":")
        connect_to = (host.strip("[]"), int(port))
    return HttpsPolicyFetcher(ca, timeout=20.0, connect_to=connect_to)


def postmaster(settings: Settings) -> str:
    if settings.local.postmaster is not None:
        return str(settings.local.postmaster)
    return f"postmaster@{settings.domains[0].name}"


Key = tuple[str, str, str]


def _key(finding: Finding) -> Key:
    return (finding.check, finding.scope, finding.detail)


class DoctorWatch:
    def __init__(
        self,
        settings: Settings,
        resolver: Resolver,
        clock: Clock,
        notify: Notify,
        gauge: Gauge,
    ) -> None:
        self._settings = settings
        self._resolver = resolver
        self._clock = clock
        self._notify = notify
        self._gauge = gauge
        self._known: set[Key] = set()

    async def run(self) -> None:
        interval = self._settings.doctor.interval
        while True:
            await asyncio.sleep(interval)
            try:
                await self.check_once()
            except (OSError, TimeoutError) as exc:
                log.warning(logfmt("doctor-failed", error=f"{type(exc).__name__}: {exc}"))

    async def check_once(self) -> None:
        settings = self._settings
        now = datetime.datetime.fromtimestamp(self._clock.now(), datetime.UTC)
        findings = await run_checks(
            doctor_setup(settings),
            self._resolver,
            policy_fetcher(settings),
            now=now,
            state_dir=Path(settings.server.data_dir) / "doctor",
        )
        problems = {_key(f): f for f in findings if f.verdict is Verdict.PROBLEM}
        self._gauge(len(problems))
        new = [problems[k] for k in problems if k not in self._known]
        gone = [k for k in self._known if k not in problems]
        for finding in new:
            log.warning(logfmt("doctor-problem", check=finding.check, scope=finding.scope or None,
                               detail=finding.detail))  # fmt: skip
        for check, scope, detail in gone:
            log.info(logfmt("doctor-resolved", check=check, scope=scope or None, detail=detail))
        self._known = set(problems)
        if new or gone:
            await self._notify(postmaster(settings), self._report(findings, len(problems), now))

    def _report(self, findings: list[Finding], count: int, now: datetime.datetime) -> bytes:
        host = self._settings.server.hostname
        sender = Address("postmaster", self._settings.domains[0].name)
        subject = f"hato doctor on {host}: {count} problem(s)" if count else (
            f"hato doctor on {host}: the problems are fixed"
        )  # fmt: skip
        head = (
            f"From: Hato doctor <{sender}>\r\nTo: <{postmaster(self._settings)}>\r\n"
            f"Subject: {subject}\r\nDate: {email.utils.format_datetime(now)}\r\n"
            f"Message-ID: <doctor.{int(now.timestamp())}.{os.getpid()}@{host}>\r\n"
            "Auto-Submitted: auto-generated\r\nMIME-Version: 1.0\r\n"
            "Content-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: 8bit\r\n\r\n"
        )
        body = render_text(findings).replace("\n", "\r\n")
        return (head + body).encode("utf-8")


def watch_task(
    settings: Settings,
    resolver: Resolver,
    clock: Clock,
    submit: Submit,
    metrics: Metrics,
    egress_blocked: Callable[[], bool],
) -> Coroutine[Any, Any, None]:
    """What the first worker runs: the periodic doctor (or nothing, with interval 0); also
    binds the hato_egress_blocked gauge."""
    metrics.egress(egress_blocked)

    async def notify(rcpt: str, message: bytes) -> None:
        try:
            # RFC 5321 §4.5.5: the null reverse path; the server's own uid may send as anyone.
            await submit(None, [rcpt], message, uid=os.geteuid())
        except SubmitRefused as exc:
            log.warning(logfmt("doctor-report-refused", to=rcpt, reply=str(exc)))

    if settings.doctor.interval <= 0:
        return _forever()
    watch = DoctorWatch(settings, resolver, clock, notify, metrics.doctor_problems.set)
    return watch.run()


async def _forever() -> None:
    await asyncio.Event().wait()
