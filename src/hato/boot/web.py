"""The web endpoint ([wkd] address): WKD, the MTA-STS policy file and mail client setup, one
aiohttp application behind server/httpguard.py's limits, told apart by Host (server/web.py).

`publications` turns the configuration into what each local domain publishes; `hato dns`
prints the DNS side of the same values, so the ``_mta-sts`` id follows the served policy.

May import every room.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING

from hato.boot.build import http_limits
from hato.boot.process import EX_CANTCREAT, EX_CONFIG, StartupError
from hato.config import Settings
from hato.crypto import KeyStore
from hato.crypto.keys import PublicKey
from hato.model import Role, logfmt
from hato.server.clientsetup import (
    Publication,
    Published,
    SubmissionPort,
    SubmissionSecurity,
)
from hato.server.httpguard import GuardedSite, serve_guarded
from hato.server.privileges import acting_as_owner
from hato.server.tls import ReloadingContext

if TYPE_CHECKING:
    from hato.crypto.wkd import WkdKeys

# The endpoint's modules (and aiohttp's server under them), imported by serve_web when
# [wkd] address is set, and before the fork by boot/predrop.py (issue 15 item 2: memory).
MODULES = ("hato.crypto.wkd", "hato.server.web", "aiohttp.web")

log = logging.getLogger("hato")


def submission_ports(settings: Settings) -> tuple[SubmissionPort, ...]:
    """The submission listeners' ports, implicit TLS first (RFC 8314 §3.3 prefers it to
    STARTTLS), each port once."""
    ports: list[SubmissionPort] = []
    for role, security in (
        (Role.SUBMISSIONS, SubmissionSecurity.IMPLICIT),
        (Role.SUBMISSION, SubmissionSecurity.STARTTLS),
    ):
        for listener in settings.listeners:
            entry = SubmissionPort(listener.port, security)
            if listener.role is role and entry not in ports:
                ports.append(entry)
    return tuple(ports)


def publications(settings: Settings) -> dict[str, Publication]:
    """What each local domain publishes, keyed by its lower-case name."""
    ports = submission_ports(settings)
    return {
        domain.name.lower(): Publication(
            domain=domain.name.lower(),
            hostname=settings.server.hostname,
            sts_mode=domain.mta_sts_mode.value,
            sts_max_age=domain.mta_sts_max_age,
            submission=ports,
            imap_port=settings.wkd.imap_port,
        )
        for domain in settings.domains
    }


class LateKeys:
    """The keys WKD serves. The endpoint is bound before the privilege drop, the shared store's
    pool only after it: on PostgreSQL the store is handed in once it exists (`use`), and
    until then nothing is found."""

    def __init__(self) -> None:
        self._keys: WkdKeys | None = None

    def use(self, keys: WkdKeys) -> None:
        self._keys = keys

    def find_wkd(self, domain: str, hashed: str) -> PublicKey | None:
        return None if self._keys is None else self._keys.find_wkd(domain, hashed)


async def serve_web(
    settings: Settings,
    data_dir: Path,
    tls: ReloadingContext | None,
    published: Published,
    keys: LateKeys,
) -> GuardedSite:
    """The web endpoint (issues 6 and 18): users' OpenPGP keys for senders' clients, the
    MTA-STS policy for senders' MTAs, setup answers for users' clients, behind the connection
    and header-time limits of server/httpguard.py."""
    section = settings.wkd
    address = section.address
    assert address is not None
    if section.https and tls is None:
        raise StartupError("wkd.https: needs a certificate: add [tls] cert and key", EX_CONFIG)
    if settings.store.backend != "postgresql":  # else the shared store's, once it is open
        with acting_as_owner(data_dir):  # before the drop: as the data directory's owner
            keys.use(KeyStore.in_data_dir(data_dir))
    context = tls.front() if section.https and tls is not None else None  # follows reloads
    from hato.crypto.wkd import wkd_app
    from hato.server.web import add_client_setup

    app = wkd_app(keys)
    add_client_setup(app, published, mta_sts=section.mta_sts, autoconfig=section.autoconfig)
    try:
        site = await serve_guarded(
            app, address.host, address.port, "wkd", http_limits(section), context
        )
    except OSError as exc:
        raise StartupError(
            f"wkd.address {address}: cannot listen: {exc.strerror}; pick a free port",
            EX_CANTCREAT,
        ) from exc
    log.info(logfmt("listening", role="wkd", address=address, https=section.https))
    return site
