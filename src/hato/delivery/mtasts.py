"""MTA-STS (RFC 8461): the `_mta-sts` TXT record, the HTTPS policy, its cache, MX matching.

Theory of operation: `MtaSts.policy_for(domain)` answers the policy that applies to mail for
`domain` now, or None. It asks DNS for ``_mta-sts.DOMAIN`` TXT (RFC 8461 §3.1); a cached policy
whose id equals the record's id and whose max_age has not passed is used as is (§5.1); else the
policy is fetched over HTTPS from ``https://mta-sts.DOMAIN/.well-known/mta-sts.txt`` (§3.3),
parsed (§3.2) and cached for its max_age. When DNS or the fetch fails, an unexpired cached policy
still applies (§5.1: this is what protects against an attacker who blocks the discovery).
`StsPolicy.matches(host)` is the MX pattern rule of §4.1.

The fetcher is a seam (`PolicyFetcher`); `HttpsPolicyFetcher` is the HTTPS one (httpsget.py),
whose connection can be sent elsewhere for tests (a local HTTPS server with a test CA).

Must not import anything of hato but model (and delivery/httpsget.py).
"""

from __future__ import annotations

import asyncio
import enum
import logging
import re
import ssl
from dataclasses import dataclass
from typing import Protocol

from hato.delivery.httpsget import HttpsGetError, https_get
from hato.model import Clock, logfmt
from hato.model.dns import DnsStatus, RdType, Resolver, normalize_name

log = logging.getLogger("hato.delivery.mtasts")

# RFC 8461 §3.2: max_age is at most 31557600 seconds (about one year).
MAX_AGE_LIMIT = 31_557_600
# RFC 8461 §3.3: policy bodies are small; senders should limit them (64 KiB is the usual cap).
MAX_POLICY_SIZE = 64 * 1024
# RFC 8461 §3.1: id is 1*32(ALPHA / DIGIT).
_ID = re.compile(r"[A-Za-z0-9]{1,32}")


class StsMode(enum.Enum):
    ENFORCE = "enforce"  # §5: deliver only to matching MX hosts over PKIX-verified TLS
    TESTING = "testing"  # §5: report failures (here: log them), deliver anyway
    NONE = "none"  # §5: no policy


class StsError(ValueError):
    """A TXT record or policy that RFC 8461 §3.1/§3.2 does not allow."""


@dataclass(frozen=True, slots=True)
class StsPolicy:
    mode: StsMode
    mx: tuple[str, ...]
    max_age: int
    id: str = ""

    def matches(self, host: str) -> bool:
        return any(mx_pattern_matches(p, host) for p in self.mx)


def mx_pattern_matches(pattern: str, host: str) -> bool:
    """RFC 8461 §4.1: a pattern is a host name, or ``*.`` plus a domain where the wildcard
    stands for exactly one leftmost label (``*.example.com`` matches ``mx.example.com`` but
    neither ``example.com`` nor ``a.b.example.com``). Compared case-insensitively."""
    pattern, host = normalize_name(pattern), normalize_name(host)
    if pattern.startswith("*."):
        label, dot, rest = host.partition(".")
        return bool(label) and bool(dot) and rest == pattern[2:]
    return pattern == host


def parse_sts_record(text: str) -> str:
    """RFC 8461 §3.1: ``v=STSv1; id=20160831085700Z;`` -> the id. Raises StsError."""
    fields: dict[str, str] = {}
    for part in text.split(";"):
        part = part.strip(" \t")
        if not part:
            continue
        key, sep, value = part.partition("=")
        if not sep:
            raise StsError(f"field without '=': {part!r}")
        fields.setdefault(key.strip(), value.strip())
    if not text.lstrip().startswith("v=STSv1") or fields.get("v") != "STSv1":
        raise StsError("the record must start with v=STSv1")
    record_id = fields.get("id", "")
    if not _ID.fullmatch(record_id):
        raise StsError(f"id must be 1 to 32 letters or digits, got {record_id!r}")
    return record_id


def parse_policy(text: str, policy_id: str = "") -> StsPolicy:
    """RFC 8461 §3.2: ``key: value`` lines (CRLF or LF); version, mode, max_age required, mx
    required unless mode is none; unknown keys ignored. Raises StsError."""
    values: dict[str, str] = {}
    mx: list[str] = []
    for raw in text.splitlines():
        line = raw.strip()
        if not line:
            continue
        key, sep, value = line.partition(":")
        if not sep:
            raise StsError(f"line without ':': {line[:60]!r}")
        key, value = key.strip(), value.strip()
        if key == "mx":
            mx.append(value.lower())
        else:
            values.setdefault(key, value)
    if values.get("version") != "STSv1":
        raise StsError("version must be STSv1")
    try:
        mode = StsMode(values.get("mode", ""))
    except ValueError:
        raise StsError(
            f"mode must be enforce, testing or none, got {values.get('mode')!r}"
        ) from None
    age_text = values.get("max_age", "")
    # RFC 8461 §3.2: max_age = 1*10DIGIT, at most 31557600.
    if not age_text.isdigit() or len(age_text) > 10:
        raise StsError(f"max_age must be a number of seconds, got {age_text!r}")
    max_age = min(int(age_text), MAX_AGE_LIMIT)
    if mode is not StsMode.NONE and not mx:
        raise StsError("a policy in enforce or testing mode needs mx lines")
    return StsPolicy(mode, tuple(mx), max_age, policy_id)


class PolicyFetcher(Protocol):
    async def fetch(self, domain: str) -> str:
        """The policy text for `domain`; raises StsFetchError."""
        ...


class StsFetchError(Exception):
    """The policy could not be fetched (network, TLS, HTTP status, content type, size)."""


class HttpsPolicyFetcher:
    """RFC 8461 §3.3: GET https://mta-sts.DOMAIN/.well-known/mta-sts.txt with a PKIX-verified
    certificate for mta-sts.DOMAIN, no redirects, 200 with text/plain only.

    `connect_to` ("host:port") sends every request there instead of resolving mta-sts.DOMAIN
    (tests: a local HTTPS server whose test CA is in `ssl_context`); the Host header and the
    certificate name checked stay mta-sts.DOMAIN."""

    def __init__(
        self,
        ssl_context: ssl.SSLContext | None = None,
        timeout: float = 60.0,
        connect_to: tuple[str, int] | None = None,
    ) -> None:
        self._ssl = ssl_context or ssl.create_default_context()
        self._timeout = timeout
        self._connect_to = connect_to

    async def fetch(self, domain: str) -> str:
        host = f"mta-sts.{domain}"
        path = "/.well-known/mta-sts.txt"
        try:
            async with asyncio.timeout(self._timeout):
                reply = await https_get(host, path, self._ssl, MAX_POLICY_SIZE, self._connect_to)
        except (HttpsGetError, TimeoutError, ssl.SSLError, OSError) as exc:
            raise StsFetchError(f"{type(exc).__name__}: {exc}") from None
        # RFC 8461 §3.3: "HTTP 3xx redirects MUST NOT be followed"; only 200 counts.
        if reply.status != 200:
            raise StsFetchError(f"HTTP status {reply.status}")
        if reply.content_type != "text/plain":
            raise StsFetchError(f"content type {reply.content_type!r}")
        body = reply.body
        if len(body) > MAX_POLICY_SIZE:
            raise StsFetchError("policy larger than 64 KiB")
        return body.decode("utf-8", errors="replace")


@dataclass(frozen=True, slots=True)
class _Cached:
    policy: StsPolicy
    expires: float


class MtaSts:
    """Policy discovery with a cache; `clock` gives wall time for max_age."""

    def __init__(
        self, resolver: Resolver, fetcher: PolicyFetcher, clock: Clock, fetch_timeout: float = 60.0
    ) -> None:
        self._resolver = resolver
        self._fetcher = fetcher
        self._clock = clock
        self._timeout = fetch_timeout
        self._cache: dict[str, _Cached] = {}
        # The RFC 8460 §4.3 result-type of each domain's last failed policy refresh, until one
        # succeeds (for the TLS reports: delivery/tlsreport.py).
        self.problems: dict[str, tuple[str, str]] = {}

    def cached(self, domain: str) -> StsPolicy | None:
        hit = self._cache.get(normalize_name(domain))
        if hit is None or hit.expires <= self._clock.now():
            return None
        return hit.policy

    async def policy_for(self, domain: str) -> StsPolicy | None:
        """The policy for `domain`, or None (no policy, or mode none)."""
        domain = normalize_name(domain)
        policy = await self._discover(domain)
        return None if policy is None or policy.mode is StsMode.NONE else policy

    async def _discover(self, domain: str) -> StsPolicy | None:
        cached = self.cached(domain)
        answer = await self._resolver.query(f"_mta-sts.{domain}", RdType.TXT)
        if answer.status is not DnsStatus.OK:
            # RFC 8461 §5.1: no record (or DNS failure) -> a cached, unexpired policy still holds.
            return cached
        ids = []
        for text in answer.texts():
            decoded = text.decode("utf-8", errors="replace")
            if not decoded.startswith("v=STSv1"):
                continue  # RFC 8461 §3.1: other TXT records are ignored
            try:
                ids.append(parse_sts_record(decoded))
            except StsError as exc:
                log.info(logfmt("mta-sts-bad-record", domain=domain, error=str(exc)))
        if len(ids) != 1:
            # RFC 8461 §3.1: several STS records (or none valid) -> as if there were none.
            return cached
        if cached is not None and cached.id == ids[0]:
            return cached  # RFC 8461 §5.1: same id -> no need to fetch again
        return await self._fetch(domain, ids[0], cached)

    async def _fetch(
        self, domain: str, policy_id: str, cached: StsPolicy | None
    ) -> StsPolicy | None:
        try:
            async with asyncio.timeout(self._timeout):
                text = await self._fetcher.fetch(domain)
            policy = parse_policy(text, policy_id)
        except (StsFetchError, StsError, TimeoutError) as exc:
            # RFC 8461 §5.1: a failed refresh keeps the cached policy until it expires.
            log.warning(logfmt("mta-sts-fetch-failed", domain=domain, error=str(exc)))
            self.problems[domain] = (_result_type(exc), str(exc))
            return cached
        self.problems.pop(domain, None)
        self._cache[domain] = _Cached(policy, self._clock.now() + policy.max_age)
        log.info(logfmt("mta-sts-policy", domain=domain, mode=policy.mode.value, id=policy_id))
        return policy


def _result_type(exc: Exception) -> str:
    """RFC 8460 §4.3: sts-policy-invalid (the text), sts-webpki-invalid (the HTTPS server's
    certificate), else sts-policy-fetch-error."""
    if isinstance(exc, StsError):
        return "sts-policy-invalid"
    if "Certificate" in str(exc) or "certificate" in str(exc):
        return "sts-webpki-invalid"
    return "sts-policy-fetch-error"
