"""The MTA-STS policy fetch over real HTTPS (aiohttp server with a test certificate, loopback):
RFC 8461 §3.3: 200 text/plain only, no redirects, PKIX-verified name mta-sts.DOMAIN."""

from __future__ import annotations

import asyncio
import ssl
from pathlib import Path

import pytest
from aiohttp import web

from hato.delivery.mtasts import HttpsPolicyFetcher, StsFetchError
from hato.server.tls import ensure_self_signed, server_context

POLICY = "version: STSv1\nmode: enforce\nmx: mx.example.test\nmax_age: 600\n"


async def policy(request: web.Request) -> web.Response:
    host = request.host.split(":")[0]
    if host == "mta-sts.example.test":
        return web.Response(text=POLICY, content_type="text/plain")
    if host == "mta-sts.html.test":
        return web.Response(text=POLICY, content_type="text/html")
    if host == "mta-sts.moved.test":
        raise web.HTTPFound("https://mta-sts.example.test/.well-known/mta-sts.txt")
    raise web.HTTPNotFound()


def fetch_all(tmp_path: Path, name: str, domains: list[str]) -> list[str]:
    cert, key = ensure_self_signed(tmp_path / "tls", name)
    trust = ssl.create_default_context(cafile=str(cert))

    async def scenario() -> list[str]:
        app = web.Application()
        app.router.add_get("/.well-known/mta-sts.txt", policy)
        runner = web.AppRunner(app)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=server_context(cert, key))
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        fetcher = HttpsPolicyFetcher(trust, timeout=5, connect_to=("127.0.0.1", port))
        out: list[str] = []
        try:
            for domain in domains:
                try:
                    out.append(await fetcher.fetch(domain))
                except StsFetchError as exc:
                    out.append(f"error: {exc}")
        finally:
            await runner.cleanup()
        return out

    return asyncio.run(asyncio.wait_for(scenario(), 20))


def test_fetch_policy(tmp_path: Path) -> None:
    assert fetch_all(tmp_path, "mta-sts.example.test", ["example.test"]) == [POLICY]


@pytest.mark.parametrize(
    ("domain", "error"),
    [("html.test", "content type 'text/html'"), ("moved.test", "HTTP status 302")],
)
def test_fetch_refusals(tmp_path: Path, domain: str, error: str) -> None:
    # The certificate names the host asked for, so only the HTTP rule can refuse.
    (result,) = fetch_all(tmp_path, f"mta-sts.{domain}", [domain])
    assert result == f"error: {error}"


def test_certificate_for_another_name_is_refused(tmp_path: Path) -> None:
    (result,) = fetch_all(tmp_path, "mta-sts.other.test", ["example.test"])
    assert result.startswith("error: ") and "certificate" in result.lower()
