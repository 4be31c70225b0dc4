"""Publishing users' OpenPGP keys by Web Key Directory (draft-koch-openpgp-webkey-service-18).

`export_wkd` writes static files for a web server; `wkd_app` is an aiohttp application the
composition root can mount on an HTTPS listener. Both serve the binary certificate (§3.1: "the
key needs to be returned ... in binary format") and an empty ``policy`` file (§4.5).

Must not import anything of hato but model.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable
from pathlib import Path
from typing import Protocol

from aiohttp import web

from hato.crypto.keys import KeyKind, PublicKey
from hato.crypto.wkdhash import wkd_hash
from hato.model.storeerror import StoreUnavailable

_HASH = re.compile(r"^[ybndrfg8ejkmcpqxot1uwisza345h769]{32}$")
_DOMAIN = re.compile(r"^[a-z0-9](?:[a-z0-9.-]*[a-z0-9])?$")


class WkdKeys(Protocol):
    def find_wkd(self, domain: str, hashed: str) -> PublicKey | None: ...


def export_wkd(keys: Iterable[PublicKey], root: Path) -> list[Path]:
    """Write both layouts under `root`; returns the files written.

    ``root/advanced/.well-known/openpgpkey/DOMAIN/{hu/HASH,policy}`` is the web root of
    ``openpgpkey.DOMAIN`` (§3.1 advanced method, one host may serve several domains);
    ``root/direct/DOMAIN/.well-known/openpgpkey/{hu/HASH,policy}`` is the web root of DOMAIN.
    """
    written: list[Path] = []
    for key in keys:
        if key.kind is not KeyKind.OPENPGP:
            continue  # WKD publishes OpenPGP keys only
        domain = key.address.domain_ascii.lower()
        hashed = wkd_hash(key.address.local)
        for base in (
            root / "advanced" / ".well-known" / "openpgpkey" / domain,
            root / "direct" / domain / ".well-known" / "openpgpkey",
        ):
            written.append(_write(base / "hu" / hashed, key.data))
            policy = base / "policy"
            if not policy.exists():
                written.append(_write(policy, b""))  # §4.5: an empty policy file
    return written


def _write(path: Path, data: bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(data)
    os.chmod(tmp, 0o644)  # published for the web server to read
    os.replace(tmp, path)
    return path


def _headers() -> dict[str, str]:
    # §3.1: servers should allow cross-origin requests (web mail clients look keys up).
    return {"Access-Control-Allow-Origin": "*"}


def wkd_app(keys: WkdKeys) -> web.Application:
    """GET handlers for both layouts: /.well-known/openpgpkey/DOMAIN/hu/HASH (advanced, any
    Host) and /.well-known/openpgpkey/hu/HASH (direct, domain from the Host header)."""

    async def advanced(request: web.Request) -> web.StreamResponse:
        return _answer(keys, request.match_info["domain"], request.match_info["hash"])

    async def direct(request: web.Request) -> web.StreamResponse:
        host = request.host.rsplit(":", 1)[0]  # an IP literal fails the domain check
        return _answer(keys, host, request.match_info["hash"])

    async def policy(request: web.Request) -> web.StreamResponse:
        return web.Response(body=b"", content_type="text/plain", headers=_headers())

    app = web.Application()
    app.router.add_get("/.well-known/openpgpkey/hu/{hash}", direct)
    app.router.add_get("/.well-known/openpgpkey/policy", policy)
    app.router.add_get("/.well-known/openpgpkey/{domain}/hu/{hash}", advanced)
    app.router.add_get("/.well-known/openpgpkey/{domain}/policy", policy)
    return app


def _answer(keys: WkdKeys, domain: str, hashed: str) -> web.Response:
    domain = domain.lower().removeprefix("openpgpkey.") if domain else ""
    if not _DOMAIN.match(domain) or not _HASH.match(hashed):
        raise web.HTTPNotFound(headers=_headers())
    try:
        key = keys.find_wkd(domain, hashed)
    except StoreUnavailable:  # the shared store is down: try again later, not "no key"
        raise web.HTTPServiceUnavailable(headers=_headers()) from None
    if key is None:
        raise web.HTTPNotFound(headers=_headers())
    return web.Response(body=key.data, content_type="application/octet-stream", headers=_headers())
