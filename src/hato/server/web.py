"""The web endpoint's MTA-STS and client-setup routes, told apart by the Host header.

Theory of operation. One aiohttp application (the [wkd] endpoint, behind server/httpguard.py)
serves every name that points at it: ``openpgpkey.DOMAIN`` (WKD, crypto/wkd.py),
``mta-sts.DOMAIN`` (the RFC 8461 policy file) and ``autoconfig.DOMAIN`` (the mail client
setup). A request is answered only for a Host (or an e-mail address) in one of our domains;
anything else is 404, so the endpoint never tells a stranger's name apart from a typo.

May import model only.
"""

from __future__ import annotations

import re

from aiohttp import web

from hato.server.clientsetup import (
    Publication,
    Published,
    autoconfig_xml,
    autodiscover_xml,
    sts_policy,
)

# Autodiscover requests are a few hundred octets; a larger body is not one.
_MAX_AUTODISCOVER = 16 * 1024
_EMAIL = re.compile(r"<EMailAddress>\s*([^<\s]{1,254})\s*</EMailAddress>", re.IGNORECASE)


def add_client_setup(
    app: web.Application,
    published: Published,
    *,
    mta_sts: bool,
    autoconfig: bool,
) -> None:
    """Add the MTA-STS and/or autoconfig routes for the domains `published` (read at each
    request, so a reload takes effect at once)."""

    def of_address(address: str) -> Publication | None:
        if "@" not in address:
            return None
        return published.current.get(address.rpartition("@")[2].lower().rstrip("."))

    def host_domain(request: web.Request, prefix: str) -> Publication | None:
        host = request.host.rsplit(":", 1)[0].lower().rstrip(".") if request.host else ""
        return published.current.get(host.removeprefix(prefix))

    async def policy(request: web.Request) -> web.StreamResponse:
        # RFC 8461 §3.3: the policy lives at mta-sts.DOMAIN only, as text/plain.
        pub = host_domain(request, "mta-sts.")
        if pub is None or not request.host.lower().startswith("mta-sts."):
            raise web.HTTPNotFound()
        return web.Response(text=sts_policy(pub), content_type="text/plain", charset="utf-8")

    async def thunderbird(request: web.Request) -> web.StreamResponse:
        address = request.query.get("emailaddress", "")
        pub = of_address(address) or host_domain(request, "autoconfig.")
        if pub is None:
            raise web.HTTPNotFound()
        return web.Response(text=autoconfig_xml(pub), content_type="application/xml")

    async def outlook(request: web.Request) -> web.StreamResponse:
        body = await request.content.read(_MAX_AUTODISCOVER + 1)
        if len(body) > _MAX_AUTODISCOVER:
            raise web.HTTPRequestEntityTooLarge(_MAX_AUTODISCOVER, len(body))
        found = _EMAIL.search(body.decode("utf-8", "replace"))
        address = found.group(1) if found else ""
        pub = of_address(address)
        if pub is None:
            raise web.HTTPNotFound()
        return web.Response(text=autodiscover_xml(pub, address), content_type="application/xml")

    if mta_sts:
        app.router.add_get("/.well-known/mta-sts.txt", policy)
    if autoconfig:
        app.router.add_get("/mail/config-v1.1.xml", thunderbird)
        app.router.add_get("/.well-known/autoconfig/mail/config-v1.1.xml", thunderbird)
        for path in ("/autodiscover/autodiscover.xml", "/Autodiscover/Autodiscover.xml"):
            app.router.add_post(path, outlook)
