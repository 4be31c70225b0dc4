"""HTTP-01 answers (RFC 8555 §8.3): the ACME server fetches
http://NAME/.well-known/acme-challenge/TOKEN and expects the key authorization.

The order runs in a worker thread and puts tokens here; the event loop serves them. A dict's
single get/set is atomic in CPython, so no lock is needed.
"""

from __future__ import annotations

import re

from acme import challenges
from aiohttp import web

PREFIX = "/.well-known/acme-challenge/"
# RFC 8555 §8.3: the token is base64url (RFC 4648 §5), no padding.
_TOKEN = re.compile(r"[A-Za-z0-9_-]+")


class Tokens:
    """The key authorizations of the challenges now being validated, by token."""

    challenge = challenges.HTTP01

    def __init__(self) -> None:
        self._answers: dict[str, str] = {}

    def put(self, _name: str, token: str, key_authorization: str) -> None:
        self._answers[token] = key_authorization

    def remove(self, _name: str, token: str) -> None:
        self._answers.pop(token, None)

    def get(self, token: str) -> str | None:
        return self._answers.get(token)


def challenge_app(tokens: Tokens) -> web.Application:
    async def answer(request: web.Request) -> web.Response:
        token = request.match_info["token"]
        found = tokens.get(token) if _TOKEN.fullmatch(token) else None
        if found is None:
            raise web.HTTPNotFound()
        # RFC 8555 §8.3: the body is the key authorization, as "application/octet-stream".
        return web.Response(body=found.encode("ascii"), content_type="application/octet-stream")

    app = web.Application()
    app.router.add_get(PREFIX + "{token}", answer)
    return app
