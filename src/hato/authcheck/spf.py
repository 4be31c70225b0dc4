"""SPF (RFC 7208): is this client IP allowed to send for this domain? Async, on `Resolver`.

Theory of operation: `check_host` is the function of RFC 7208 §4. It finds the domain's one
`v=spf1` TXT record (§4.4, §4.5), parses the whole record first, so that a syntax error anywhere
is a permerror (§4.6), then evaluates the mechanisms left to right (§4.6.2), following
`include` (§5.2) and `redirect` (§6.1) recursively under one shared budget of 10 DNS-querying
terms and 2 void lookups (§4.6.4). Errors travel as two private exceptions (`PermError`,
`TempError`) to the top, where they become results; nothing else is caught. On a fail the
`exp=` explanation is fetched and expanded (§6.2). Macros (§7) are tokenized at parse time
(spf_record.py, so a bad one is a syntax error) and expanded at evaluation time (`%{p}` needs
DNS).
`check_mail_from` and `check_helo` add the identity rules of §2.3 and §2.4.

Must not import anything of hato except `hato.model`; all DNS goes through `model.Resolver`.
"""

from __future__ import annotations

import enum
import ipaddress
import re
import urllib.parse
from dataclasses import dataclass, field

from hato.authcheck.spf_record import (
    Macro,
    PermError,
    Record,
    TempError,
    Term,
    Token,
    is_spf_record,
    parse_record,
    tokenize,
)
from hato.model.dns import DnsAnswer, DnsNameError, DnsStatus, RdType, Resolver, normalize_name

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


class SpfResultCode(enum.Enum):
    """RFC 7208 §2.6: the seven results."""

    NONE = "none"
    NEUTRAL = "neutral"
    PASS = "pass"
    FAIL = "fail"
    SOFTFAIL = "softfail"
    TEMPERROR = "temperror"
    PERMERROR = "permerror"


@dataclass(frozen=True, slots=True)
class SpfResult:
    """What `check_host` found. `mechanism`: the term that matched as written in the deciding
    record (`-all`, `ip4:192.0.2.0/24`), "" when none did. `explanation`: the expanded `exp=`
    text on fail (§6.2), "" when there is none. `detail`: why, for the log only."""

    result: SpfResultCode
    domain: str
    mechanism: str = ""
    explanation: str = ""
    detail: str = ""


# RFC 7208 §4.6.2: the qualifier gives the result of a matching mechanism; "+" is the default.
_QUALIFIERS = {
    "+": SpfResultCode.PASS,
    "-": SpfResultCode.FAIL,
    "~": SpfResultCode.SOFTFAIL,
    "?": SpfResultCode.NEUTRAL,
}
_DNS_TERMS = frozenset({"include", "a", "mx", "ptr", "exists"})  # §4.6.4, plus redirect
_LOOKUP_LIMIT = 10  # RFC 7208 §4.6.4: at most 10 DNS-querying terms per check
_VOID_LIMIT = 2  # RFC 7208 §4.6.4: void lookups SHOULD be limited to two
_NAME_LIMIT = 10  # RFC 7208 §4.6.4: at most 10 MX names / PTR names looked at


# -- the check --------------------------------------------------------------------------------


@dataclass(slots=True)
class _Check:
    """The state of one check_host call, shared across include/redirect (§4.6.4)."""

    ip: IPAddress
    sender: str
    helo: str
    receiver: str
    now: float
    resolver: Resolver
    lookups: int = 0
    voids: int = 0
    ptr_names: dict[str, tuple[str, ...]] = field(default_factory=dict)

    @property
    def local_part(self) -> str:
        return self.sender.rpartition("@")[0]

    @property
    def sender_domain(self) -> str:
        return self.sender.rpartition("@")[2]

    async def query(self, name: str, rdtype: RdType, *, term: bool = False) -> DnsAnswer:
        """Ask DNS; TEMPFAIL raises TempError (§2.6.6). `term`: count void answers (§4.6.4)."""
        try:
            answer = await self.resolver.query(name, rdtype)
        except DnsNameError:
            answer = DnsAnswer(name, rdtype, DnsStatus.NXDOMAIN)  # an impossible name: no such
        if answer.status is DnsStatus.TEMPFAIL:
            raise TempError(f"DNS {rdtype} {name}: {answer.detail or 'temporary failure'}")
        if term and not answer.ok:
            self.voids += 1
            if self.voids > _VOID_LIMIT:
                raise PermError("more than 2 void lookups")
        return answer

    def count_lookup(self) -> None:
        self.lookups += 1
        if self.lookups > _LOOKUP_LIMIT:
            raise PermError("more than 10 DNS-querying terms")

    def family_type(self) -> RdType:
        return RdType.A if self.ip.version == 4 else RdType.AAAA

    async def addresses(self, name: str, *, term: bool = False) -> list[IPAddress]:
        answer = await self.query(name, self.family_type(), term=term)
        return [ipaddress.ip_address(a) for a in answer.addresses()]

    async def validated_names(self) -> tuple[str, ...]:
        """RFC 7208 §5.5: the client's PTR names whose A/AAAA include the client (first 10)."""
        key = str(self.ip)
        if key in self.ptr_names:
            return self.ptr_names[key]
        try:
            answer = await self.query(ipaddress.ip_address(key).reverse_pointer, RdType.PTR)
        except TempError:
            answer = DnsAnswer(key, RdType.PTR, DnsStatus.TEMPFAIL)  # §5.5: an error: no match
        names: list[str] = []
        for host in answer.hosts()[:_NAME_LIMIT]:
            try:
                if self.ip in await self.addresses(host):
                    names.append(normalize_name(host))
            except TempError:
                continue  # §5.5: a failed A/AAAA lookup skips that name
        self.ptr_names[key] = tuple(names)
        return self.ptr_names[key]

    # -- macros -------------------------------------------------------------------------------

    async def expand(self, tokens: tuple[Token, ...], domain: str, *, exp: bool = False) -> str:
        parts = [t if isinstance(t, str) else await self._macro(t, domain) for t in tokens]
        text = "".join(parts)
        if exp:
            return text
        # RFC 7208 §7.3: a name over 253 characters loses labels on the left until it fits.
        text = text.rstrip(".")
        while len(text) > 253 and "." in text:
            text = text.split(".", 1)[1]
        return text

    async def _macro(self, macro: Macro, domain: str) -> str:
        value = await self._macro_value(macro.letter.lower(), domain)
        # RFC 7208 §7.3: split on the delimiters (default "."), reverse, keep the rightmost N.
        parts = re.split("[" + re.escape(macro.delimiters or ".") + "]", value)
        if macro.reverse:
            parts.reverse()
        if macro.digits:
            parts = parts[-macro.digits :]
        text = ".".join(parts)
        # RFC 7208 §7.3: an upper-case macro letter is URL-escaped (RFC 3986 unreserved kept).
        return urllib.parse.quote(text, safe="") if macro.letter.isupper() else text

    async def _macro_value(self, letter: str, domain: str) -> str:
        ip = self.ip
        match letter:
            case "s":
                return self.sender
            case "l":
                return self.local_part
            case "o":
                return self.sender_domain
            case "d":
                return domain
            case "i":
                # RFC 7208 §7.3: IPv6 "i" is dot-separated nibbles (upper-case hex, as the
                # RFC 7208 test suite expects in exp text; DNS does not mind the case).
                return str(ip) if ip.version == 4 else ".".join(ip.packed.hex().upper())
            case "c":
                return str(ip)
            case "v":
                return "in-addr" if ip.version == 4 else "ip6"
            case "h":
                return self.helo
            case "r":
                return self.receiver
            case "t":
                return str(int(self.now))
            case "p":
                return await self._validated_name(domain)
        raise AssertionError(f"macro letter {letter} passed tokenize")

    async def _validated_name(self, domain: str) -> str:
        # RFC 7208 §7.3: prefer <domain> itself, then a subdomain of it, else any; "unknown".
        names = await self.validated_names()
        for name in names:
            if name == domain:
                return name
        for name in names:
            if name.endswith("." + domain):
                return name
        return names[0] if names else "unknown"


async def _spf_record(check: _Check, domain: str) -> Record | None:
    """RFC 7208 §4.4, §4.5: the domain's one SPF record; None when there is none."""
    answer = await check.query(domain, RdType.TXT)
    found = [text for text in answer.texts() if is_spf_record(text)]
    if len(found) > 1:
        raise PermError(f"{domain} has {len(found)} SPF records")  # §4.5
    if not found:
        return None
    try:
        text = found[0].decode("ascii")
    except UnicodeDecodeError:
        raise PermError("non-ASCII SPF record") from None  # §3.1
    return parse_record(text)


async def _evaluate(check: _Check, domain: str, *, want_exp: bool) -> SpfResult:
    record = await _spf_record(check, domain)
    if record is None:
        return SpfResult(SpfResultCode.NONE, domain, detail=f"no SPF record at {domain}")
    for term in record.terms:
        if term.kind in _DNS_TERMS:
            check.count_lookup()
        if await _matches(check, term, domain):
            result = _QUALIFIERS[term.qualifier]
            explanation = ""
            if result is SpfResultCode.FAIL and want_exp and record.exp is not None:
                explanation = await _explanation(check, record.exp, domain)
            return SpfResult(result, domain, term.text, explanation)
    if record.redirect is not None:
        # RFC 7208 §6.1: redirect counts as a lookup; a target without a record is permerror.
        check.count_lookup()
        target = await check.expand(record.redirect, domain)
        redirected = await _evaluate(check, normalize_name(target), want_exp=want_exp)
        if redirected.result is SpfResultCode.NONE:
            raise PermError(f"redirect to {target}, which has no SPF record")
        return redirected
    return SpfResult(SpfResultCode.NEUTRAL, domain, detail="no mechanism matched")  # §4.7


async def _matches(check: _Check, term: Term, domain: str) -> bool:
    target = normalize_name(await check.expand(term.spec, domain)) if term.spec else domain
    ip = check.ip
    match term.kind:
        case "all":
            return True  # RFC 7208 §5.1
        case "include":
            # RFC 7208 §5.2: pass matches; fail/softfail/neutral do not; none is permerror.
            inner = await _evaluate(check, target, want_exp=False)
            match inner.result:
                case SpfResultCode.PASS:
                    return True
                case SpfResultCode.NONE:
                    raise PermError(f"include:{target} has no SPF record")
                case SpfResultCode.TEMPERROR:
                    raise TempError(inner.detail)
                case SpfResultCode.PERMERROR:
                    raise PermError(inner.detail)
            return False
        case "a":
            return _in_any(ip, await check.addresses(target, term=True), term)  # §5.3
        case "mx":
            # RFC 7208 §5.4, §4.6.4: more than 10 MX names is a permerror.
            hosts = [mx.host for mx in (await check.query(target, RdType.MX, term=True)).mx()]
            if len(hosts) > _NAME_LIMIT:
                raise PermError(f"{target} has more than 10 MX records")
            for host in hosts:
                if host and _in_any(ip, await check.addresses(host), term):
                    return True
            return False
        case "ptr":
            # RFC 7208 §5.5: a validated name equal to, or under, the target.
            names = await check.validated_names()
            return any(n == target or n.endswith("." + target) for n in names)
        case "ip4" | "ip6":
            return term.network is not None and ip in term.network  # §5.6
        case "exists":
            # RFC 7208 §5.7: always an A query, whatever the client's address family.
            return (await check.query(target, RdType.A, term=True)).ok
    raise AssertionError(f"mechanism {term.kind} passed the parser")


def _in_any(ip: IPAddress, addresses: list[IPAddress], term: Term) -> bool:
    length = term.cidr4 if ip.version == 4 else term.cidr6
    return any(ip in ipaddress.ip_network(f"{a}/{length}", strict=False) for a in addresses)


async def _explanation(check: _Check, spec: tuple[Token, ...], domain: str) -> str:
    """RFC 7208 §6.2: any problem fetching or expanding the exp text means no explanation."""
    try:
        name = await check.expand(spec, domain)
        answer = await check.query(name, RdType.TXT)
        texts = answer.texts()
        if len(texts) != 1 or not texts[0].isascii():
            return ""
        return await check.expand(tokenize(texts[0].decode("ascii"), exp=True), domain, exp=True)
    except (PermError, TempError):
        return ""


def _client_ip(ip: str) -> IPAddress:
    address = ipaddress.ip_address(ip)
    # RFC 7208 §5: an IPv4-mapped IPv6 address is evaluated as the IPv4 address.
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def _valid_domain(domain: str) -> bool:
    # RFC 7208 §4.3: a malformed or single-label domain gives "none" straight away.
    labels = domain.split(".")
    return len(labels) > 1 and all(0 < len(label) <= 63 for label in labels)


async def check_host(
    ip: str,
    domain: str,
    sender: str,
    *,
    helo: str,
    resolver: Resolver,
    receiver: str = "unknown",
    now: float,
) -> SpfResult:
    """RFC 7208 §4: may `ip` send mail from `sender` for `domain`? Never raises for DNS
    problems or bad records (those are temperror and permerror); ValueError for a bad `ip`.
    `receiver` is our host name (%{r}); `now` the Unix time (%{t})."""
    domain = normalize_name(domain)
    # RFC 7208 §4.3: a sender without a local-part is "postmaster@domain".
    local, at, sender_domain = sender.rpartition("@")
    sender = f"{local or 'postmaster'}@{sender_domain}" if at else f"postmaster@{sender}"
    check = _Check(_client_ip(ip), sender, helo, receiver, now, resolver)
    if not _valid_domain(domain):
        return SpfResult(SpfResultCode.NONE, domain, detail=f"not a valid domain: {domain!r}")
    try:
        return await _evaluate(check, domain, want_exp=True)
    except TempError as error:
        return SpfResult(SpfResultCode.TEMPERROR, domain, detail=str(error))
    except PermError as error:
        return SpfResult(SpfResultCode.PERMERROR, domain, detail=str(error))


async def check_mail_from(
    ip: str,
    mail_from: str,
    *,
    helo: str,
    resolver: Resolver,
    receiver: str = "unknown",
    now: float,
) -> SpfResult:
    """The MAIL FROM identity (RFC 7208 §2.4): `mail_from` is the reverse-path without <>;
    for the null reverse-path "" the identity is postmaster@<helo>."""
    sender = mail_from or f"postmaster@{helo}"
    domain = sender.rpartition("@")[2]
    return await check_host(
        ip, domain, sender, helo=helo, resolver=resolver, receiver=receiver, now=now
    )


async def check_helo(
    ip: str, helo: str, *, resolver: Resolver, receiver: str = "unknown", now: float
) -> SpfResult:
    """The HELO identity (RFC 7208 §2.3): check_host with postmaster@<helo>."""
    return await check_host(
        ip, helo, f"postmaster@{helo}", helo=helo, resolver=resolver, receiver=receiver, now=now
    )
