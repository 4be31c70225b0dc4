"""Wires [tls] acme (hato.acme): the certificate files under DATA_DIR/acme, the HTTP-01
listener (bound before the privilege drop: port 80), and the manager that renews.

The listeners' ReloadingContext reads DATA_DIR/acme/cert.pem and key.pem; until the first
order succeeds those hold a self-signed placeholder, so the server starts without the ACME
server, and the manager swaps the issued certificate in through the same reload as SIGHUP.

hato.acme (and under it the acme package, requests, urllib3, pyOpenSSL, josepy: ~10 MiB) is
imported only when [tls] acme is configured: by the functions below, and before the fork and
the privilege drop by boot/predrop.py's `preload` (issue 15 item 2: every server held it).
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from hato.boot.process import EX_CANTCREAT, StartupError
from hato.boot.tlswatch import reload_tls
from hato.config.acme_sections import AcmeSettings
from hato.config.settings import Settings
from hato.model import Clock, logfmt
from hato.server.httpguard import HttpLimits, serve_guarded
from hato.server.privileges import acting_as_owner, give_to
from hato.server.tls import ReloadingContext, ensure_self_signed, self_signed_files

if TYPE_CHECKING:
    from hato.acme.client import Order
    from hato.acme.manager import CertificateManager
    from hato.acme.store import CertFiles

# What `start_acme` uses; boot/predrop.py imports them before the fork when [tls] acme is set.
MODULES = ("hato.acme.alpn", "hato.acme.challenge", "hato.acme.client", "hato.acme.manager")

log = logging.getLogger("hato.boot")


@dataclass(frozen=True, slots=True)
class Acme:
    manager: CertificateManager
    aclose: Callable[[], Awaitable[None]]  # closes the challenge listener


def acme_files(data_dir: Path) -> CertFiles:
    from hato.acme.store import CertFiles

    return CertFiles(data_dir / "acme")


def placeholder(data_dir: Path, hostname: str) -> CertFiles:
    """The files the listeners load; a self-signed pair until the first order succeeds."""
    files = acme_files(data_dir)
    _give_to_owner(data_dir, files)  # root's from an older version: the user's first
    if not files.cert.exists() or not files.key.exists():
        with acting_as_owner(data_dir):  # root, but no write through the user's links
            cert, key = ensure_self_signed(data_dir / "tls", hostname)
            files.write(cert.read_bytes(), key.read_bytes())
    return files


def _give_to_owner(data_dir: Path, files: CertFiles) -> None:
    """Written as root before the drop, renewed by the server's user later (issue 13)."""
    owner = data_dir.stat()
    if os.geteuid() != 0 or owner.st_uid == 0:
        return
    tls = data_dir / "tls"
    for path in (files.directory, files.cert, files.key, tls, *self_signed_files(tls)):
        give_to(path, owner.st_uid, owner.st_gid)  # not through a link the user planted


def names(settings: Settings) -> tuple[str, ...]:
    """The MX/EHLO name, and mta-sts.DOMAIN of every domain when the web endpoint serves the
    MTA-STS policy over HTTPS (RFC 8461 §3.3: fetched only over HTTPS, with a valid certificate
    for that name). Not when it serves plain HTTP: a proxy in front holds those certificates,
    and a name that does not point here would fail the whole order."""
    web = settings.wkd
    served = web.address is not None and web.https and web.mta_sts
    policy_hosts = [f"mta-sts.{domain.name}" for domain in settings.domains] if served else []
    return tuple(dict.fromkeys([settings.server.hostname, *policy_hosts]))


async def start_acme(
    settings: Settings, data_dir: Path, tls: ReloadingContext | None, clock: Clock
) -> Acme | None:
    section = settings.tls.acme if settings.tls is not None else None
    if section is None or tls is None:
        return None
    from hato.acme.alpn import AlpnAnswers
    from hato.acme.challenge import Tokens, challenge_app
    from hato.acme.manager import CertificateManager

    responder: Tokens | AlpnAnswers
    close: Callable[[], Awaitable[None]]
    if section.challenge == "tls-alpn-01":
        key, address, port = "tls_address", section.tls_address, 443
        responder = AlpnAnswers()
    else:
        key, address, port = "http_address", section.http_address, 80
        responder = Tokens()
    try:
        if isinstance(responder, AlpnAnswers):
            close = _closer(await responder.serve(address.host, address.port))
        else:
            app = challenge_app(responder)
            site = await serve_guarded(app, address.host, address.port, "acme", HttpLimits())
            close = site.aclose
    except OSError as exc:
        raise StartupError(
            f"tls.acme.{key} {address}: cannot listen: {exc.strerror}; pick a free port "
            f"(the ACME server connects to port {port} of the name; forward it here)",
            EX_CANTCREAT,
        ) from exc
    log.info(logfmt("listening", role=f"acme-{section.challenge}", address=address))

    manager = CertificateManager(
        _order(section, names(settings)),
        acme_files(data_dir),
        responder,
        lambda: reload_tls(tls, force=True),  # what SIGHUP does: open sessions keep theirs
        clock,
    )
    return Acme(manager, close)


def _closer(server: asyncio.AbstractServer) -> Callable[[], Awaitable[None]]:
    async def close() -> None:
        server.close()
        await server.wait_closed()

    return close


def _order(section: AcmeSettings, for_names: tuple[str, ...]) -> Order:
    from hato.acme.client import Order

    return Order(section.directory, section.email, for_names, section.ca_file)


def renew_op(acme: Acme | None) -> Callable[[], Awaitable[dict[str, str]]] | None:
    """The control socket's tls.renew (`hato tls renew`): order now, say what came of it."""
    if acme is None:
        return None
    manager = acme.manager
    from hato.acme.client import AcmeError

    async def renew() -> dict[str, str]:
        try:
            return await manager.renew()
        except AcmeError as exc:
            return {"error": str(exc)}

    return renew
