"""Rspamd's HTTP protocol v2, client side: ask a running rspamd about one message (`POST
/checkv2` on its normal worker) or teach its classifier (`POST /learnspam`, `/learnham` on its
controller).

Theory of operation. The envelope travels in request headers (From, Rcpt once per recipient,
IP, Helo, User, Queue-Id, rspamd's names) and the message is the request body, streamed from
whatever the caller yields (its spool file, chunk by chunk) with the size known up front, so
the request carries a Content-Length and no copy of the message is ever joined in memory. The
JSON reply becomes a `Scan`, a value: the action rspamd chose, its score, the header changes
it asks for (`milter.add_headers` / `remove_headers`), a new Subject, and the SMTP text it
wants the client to see. Anything that keeps us from a verdict (connection refused, timeout,
an HTTP error, a reply that is not rspamd's JSON) is one `RspamdUnavailable`: what then
happens to the mail is the caller's policy, not ours.

With `settings`, the request carries rspamd's `Settings` header (settings for this scan
only, which its settings module applies): Hato tells rspamd the SPF, DKIM, DMARC and ARC
results it has, so that rspamd does not check them again (intake/spamauth.py).

The checks go through post.py (one connection per check: rspamd closes it after each
reply), learning through aiohttp. Must not import anything of hato but model.
"""

from __future__ import annotations

import asyncio
import enum
import functools
import json
import re
from collections.abc import AsyncIterable, AsyncIterator, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from hato.filters.post import Endpoint, HttpError, post

if TYPE_CHECKING:  # imported where learning uses it: a server without [rspamd] does not
    import aiohttp  # hold aiohttp's client (issue 15 item 2); boot/predrop.py preloads it

# RFC 5322 §3.6.8: field-name = 1*ftext (printable US-ASCII except ":").
_FIELD_NAME = re.compile(r"[\x21-\x39\x3b-\x7e]+")


class RspamdAction(enum.StrEnum):
    """What rspamd's reply may say (its actions.conf; "no action" when no threshold is met)."""

    NO_ACTION = "no action"
    GREYLIST = "greylist"
    ADD_HEADER = "add header"
    REWRITE_SUBJECT = "rewrite subject"
    SOFT_REJECT = "soft reject"
    REJECT = "reject"


# rspamd's action names to ours: a dict look-up per reply, not the enum's constructor (several
# Python calls on the loop for each check).
_ACTIONS: dict[object, RspamdAction] = {action.value: action for action in RspamdAction}


class RspamdUnavailable(Exception):
    """No verdict: rspamd is down, too slow, or answered something we cannot read."""


@dataclass(frozen=True, slots=True)
class Scan:
    """Rspamd's verdict on one message."""

    action: RspamdAction
    score: float
    required: float
    add_headers: tuple[tuple[str, str], ...] = ()  # in the order rspamd gave them
    remove_headers: tuple[str, ...] = ()  # field names, every occurrence
    subject: str | None = None  # the new Subject of "rewrite subject"
    smtp_message: str | None = None  # rspamd's public reason (messages.smtp_message)
    symbols: tuple[str, ...] = ()  # for the log


@dataclass(frozen=True, slots=True)
class Envelope:
    """What rspamd is told about the transaction besides the message."""

    mail_from: str  # "" for the null reverse-path
    recipients: tuple[str, ...]
    client_ip: str
    helo: str
    user: str | None = None  # the authenticated account: rspamd skips some checks for it
    queue_id: str = ""
    # rspamd's `Settings` for this scan (UCL/JSON): e.g. its checks we have done, turned off,
    # and our results inserted as its symbols (hato.intake.spamauth).
    settings: str | None = None

    def headers(self) -> list[tuple[str, str]]:
        """rspamd's protocol request headers (docs: "Rspamd protocol", HTTP headers)."""
        out = [("From", self.mail_from), ("IP", self.client_ip), ("Helo", self.helo)]
        out += [("Rcpt", rcpt) for rcpt in self.recipients]
        if self.user:
            out.append(("User", self.user))
        if self.queue_id:
            out.append(("Queue-Id", self.queue_id))
        if self.settings:
            out.append(("Settings", self.settings))
        return out


def parse_scan(reply: Mapping[str, Any]) -> Scan:
    """The `Scan` in a /checkv2 JSON reply; RspamdUnavailable when it is not one."""
    try:
        action = _ACTIONS[reply["action"]]
        score = float(reply.get("score", 0.0))
        required = float(reply.get("required_score", 0.0))
    except (KeyError, ValueError, TypeError) as exc:
        raise RspamdUnavailable(f"unreadable reply: {exc}") from None
    milter = reply.get("milter")
    milter = milter if isinstance(milter, dict) else {}
    messages = reply.get("messages")
    messages = messages if isinstance(messages, dict) else {}
    subject = reply.get("subject")
    smtp_message = messages.get("smtp_message")
    symbols = reply.get("symbols")
    return Scan(
        action=action,
        score=score,
        required=required,
        add_headers=_added(milter.get("add_headers")),
        remove_headers=tuple(filter(_field_name, map(str, milter.get("remove_headers") or {}))),
        subject=subject if isinstance(subject, str) else None,
        smtp_message=smtp_message if isinstance(smtp_message, str) else None,
        symbols=tuple(sorted(symbols)) if isinstance(symbols, dict) else (),
    )


def _added(value: object) -> tuple[tuple[str, str], ...]:
    """milter.add_headers: {name: value} or {name: {"value": v, "order": n}} or a list of
    those (several fields of one name)."""
    if not isinstance(value, dict):
        return ()
    out: list[tuple[str, str]] = []
    for name, spec in value.items():
        if not _field_name(name := str(name)):
            continue
        for item in spec if isinstance(spec, list) else (spec,):
            text = item.get("value") if isinstance(item, dict) else item
            if isinstance(text, str):
                out.append((name, text))
    return tuple(out)


@functools.lru_cache(maxsize=256)  # rspamd names the same few fields in every reply
def _field_name(name: str) -> bool:
    return _FIELD_NAME.fullmatch(name) is not None


@dataclass(frozen=True, slots=True)
class Learned:
    """The controller's answer to a learn request."""

    learned: bool  # false: rspamd had already learned it so (or refused it), see `detail`
    detail: str
    # The controller answered 5xx: a passing state of its own (its SQLite statfile busy,
    # "database is locked"), worth asking again; a 4xx (already learned, too short) is not.
    temporary: bool = False


class RspamdClient:
    """One rspamd: its normal worker (`url`) and, for learning, its controller."""

    def __init__(
        self,
        url: str,
        *,
        timeout: float,
        controller_url: str | None = None,
        password: str | None = None,
    ) -> None:
        self.url = url.rstrip("/")
        self.controller_url = (controller_url or url).rstrip("/")
        self.timeout = timeout
        self.password = password
        self._endpoint = Endpoint.of(self.url)
        self._session: aiohttp.ClientSession | None = None  # the controller's (learning)

    def _http(self) -> aiohttp.ClientSession:
        import aiohttp

        if self._session is None or self._session.closed:
            # Our own connector: rspamd is one host, reused for every message.
            self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=self.timeout))
        return self._session

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def check(
        self, envelope: Envelope, size: int, message: AsyncIterable[bytes] | tuple[bytes, ...]
    ) -> Scan:
        """POST /checkv2: rspamd's verdict on the `size` octets `message` yields, or holds
        in memory as a tuple of parts (over a connection of its own, post.py: rspamd closes
        it after each reply anyway)."""
        url = f"{self.url}/checkv2"
        try:
            async with asyncio.timeout(self.timeout):
                status, text = await post(
                    self._endpoint, "/checkv2", envelope.headers(), size, message
                )
        except (HttpError, OSError) as exc:
            raise RspamdUnavailable(f"{url}: {exc}") from None
        except TimeoutError:
            raise RspamdUnavailable(f"{url}: no answer in {self.timeout:g} s") from None
        if status != 200:
            raise RspamdUnavailable(f"HTTP {status} from {url}")
        return parse_scan(_json_object(text, status, url))

    async def learn(self, spam: bool, size: int, message: AsyncIterable[bytes]) -> Learned:
        """POST /learnspam or /learnham to the controller (its `password` when it has one)."""
        path = "learnspam" if spam else "learnham"
        status, reply = await self._post(
            f"{self.controller_url}/{path}", [], size, message, controller=True
        )
        if reply.get("success") is True:
            return Learned(True, "learned")
        return Learned(False, str(reply.get("error", reply)), temporary=status >= 500)

    async def _post(
        self,
        url: str,
        headers: list[tuple[str, str]],
        size: int,
        body: AsyncIterable[bytes],
        *,
        controller: bool,
    ) -> tuple[int, dict[str, Any]]:
        import aiohttp
        from multidict import CIMultiDict

        sent = [*headers, ("Content-Length", str(size))]
        if controller and self.password:
            sent.append(("Password", self.password))
        try:
            # Rcpt repeats: a multidict carries repeated request headers.
            async with self._http().post(url, data=body, headers=CIMultiDict(sent)) as response:
                text = await response.read()
                if response.status != 200 and not controller:
                    raise RspamdUnavailable(f"HTTP {response.status} from {url}")
        except (aiohttp.ClientError, OSError) as exc:
            raise RspamdUnavailable(f"{url}: {exc}") from None
        except TimeoutError:
            raise RspamdUnavailable(f"{url}: no answer in {self.timeout:g} s") from None
        reply = _json_object(text, response.status, url)
        if controller and response.status != 200 and "error" not in reply:
            raise RspamdUnavailable(f"HTTP {response.status} from {url}")
        return response.status, reply


def _json_object(text: bytes, status: int, url: str) -> dict[str, Any]:
    try:
        reply = json.loads(text)
    except ValueError:
        raise RspamdUnavailable(f"HTTP {status} from {url}: not JSON") from None
    if not isinstance(reply, dict):
        raise RspamdUnavailable(f"HTTP {status} from {url}: not a JSON object")
    return reply


async def chunks_of(data: bytes) -> AsyncIterator[bytes]:
    """A message held in memory, as a request body (one chunk, no copy)."""
    yield data
