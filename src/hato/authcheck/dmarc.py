"""DMARC (RFC 7489, with RFC 9091's `np`): does the From: domain's owner vouch for this message,
and what should happen to it if not?

Theory of operation: the caller has run SPF (on the RFC5321.MailFrom identity) and DKIM, and
hands in their outcomes as small values (`SpfOutcome`, `DkimOutcome`), together with the
RFC5322.From domains that `from_domains(headers)` extracted (§6.6.1). `evaluate` finds the policy
record at `_dmarc.<from-domain>`, else at `_dmarc.<organizational domain>` (§6.6.3; the
organizational domain comes from the Public Suffix List, §3.2), checks identifier alignment
(§3.1), and gives a `DmarcResult`: the status for Authentication-Results (pass / fail / none /
temperror / permerror) and the disposition the domain asks for (none / quarantine / reject),
after `pct` sampling (§6.6.4) with the random source passed in. What to do with the
disposition (reject with 550 5.7.1, file into Junk, only report) is the caller's choice.
A message with several From domains is evaluated once per domain; `strictest` names the
result that decides (§6.6.1).

Must not import anything of hato except `hato.model` (and this room); all DNS goes through
`model.Resolver`.
"""

from __future__ import annotations

import enum
import functools
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from email.utils import getaddresses
from typing import Protocol

from publicsuffixlist import PublicSuffixList

from hato.authcheck.spf import SpfResult
from hato.model import AddressError, domain_a_label, normalize_domain
from hato.model.dns import DnsNameError, DnsStatus, RdType, Resolver, normalize_name


class DmarcPolicy(enum.Enum):
    """RFC 7489 §6.3 "p": what the domain owner asks for mail that fails."""

    NONE = "none"
    QUARANTINE = "quarantine"
    REJECT = "reject"


class Alignment(enum.Enum):
    """RFC 7489 §3.1: relaxed (same organizational domain) or strict (same domain)."""

    RELAXED = "r"
    STRICT = "s"


class DmarcStatus(enum.Enum):
    """The `dmarc=` result of RFC 7489 §11.2 / RFC 8601 §2.7.x."""

    PASS = "pass"
    FAIL = "fail"
    NONE = "none"
    TEMPERROR = "temperror"
    PERMERROR = "permerror"


class DmarcRecordError(ValueError):
    """The record is not a valid DMARC record (RFC 7489 §6.3)."""


@dataclass(frozen=True, slots=True)
class DmarcRecord:
    """RFC 7489 §6.3 tags (and RFC 9091 §4.1 `np`). `rua`/`ruf` are kept as written."""

    policy: DmarcPolicy
    subdomain_policy: DmarcPolicy | None = None
    nonexistent_policy: DmarcPolicy | None = None
    pct: int = 100
    adkim: Alignment = Alignment.RELAXED
    aspf: Alignment = Alignment.RELAXED
    rua: tuple[str, ...] = ()
    ruf: tuple[str, ...] = ()
    fo: tuple[str, ...] = ("0",)


@dataclass(frozen=True, slots=True)
class SpfOutcome:
    """The SPF check of the RFC5321.MailFrom identity: its domain (for a null reverse-path, the
    HELO domain, RFC 7489 §3.1.2 via RFC 7208 §2.4) and the result ("pass", "fail", ...)."""

    domain: str
    result: str

    @classmethod
    def of(cls, spf: SpfResult) -> SpfOutcome:
        """From a `check_mail_from` result."""
        return cls(spf.domain, spf.result.value)


@dataclass(frozen=True, slots=True)
class DkimOutcome:
    """One DKIM signature's verification: its d= domain and result ("pass", "fail", ...)."""

    domain: str
    result: str
    selector: str = ""


@dataclass(frozen=True, slots=True)
class DmarcResult:
    """What `evaluate` decided. `disposition` is what to do with the message (after pct);
    `policy` the policy that applied (p, sp or np) before sampling; `policy_domain` where
    the record was found; `detail` for the log only."""

    status: DmarcStatus
    disposition: DmarcPolicy
    from_domain: str
    policy_domain: str = ""
    record: DmarcRecord | None = None
    policy: DmarcPolicy | None = None
    spf_aligned: bool = False
    dkim_aligned: bool = False
    sampled_out: bool = False
    detail: str = ""


class FromProblem(enum.Enum):
    """RFC 7489 §6.6.1: why no RFC5322.From domain could be found. The caller records each
    as DMARC permerror (there is no policy to apply)."""

    NO_FROM = "no From header"
    NO_ADDRESS = "From header has no address with a domain"
    BAD_DOMAIN = "From domain is not a valid domain name"
    UNREADABLE = "From header too deeply nested to read"
    TOO_MANY = "From header names more than 10 domains"  # MAX_AUTHOR_DOMAINS
    TOO_LONG = "From header longer than 4 KiB"  # MAX_FROM_SIZE


class Rng(Protocol):
    """A random source: `random.Random` fits; tests pass a fixed one."""

    def random(self) -> float: ...


# -- the From domain (RFC 7489 §6.6.1) --------------------------------------------------------


def from_domains(headers: Iterable[tuple[str, str]]) -> tuple[str, ...] | FromProblem:
    """Every RFC5322.From domain (lower case, A-labels, in order of appearance), or the problem
    that leaves none.

    `headers`: (name, unfolded value) pairs of the message header, in order, as
    `hato.model.header` splits them (the way mail readers do). RFC 7489 §6.6.1: a message with
    several From domains, in one field or in several (RFC 5322 §3.6 allows one; readers show
    one of them), is checked with each as the Author Domain, and the strictest policy among
    the failing ones applies (`strictest`). An address whose domain is not a domain name is
    left out, so it cannot turn a failing domain beside it into a permerror.
    """
    values = tuple(value for name, value in headers if name.strip().lower() == "from")
    if not values:
        return FromProblem.NO_FROM
    size = sum(map(len, values))
    if size > MAX_FROM_SIZE:
        return FromProblem.TOO_LONG  # never parsed: the parser's time grows with it
    if size <= _KEPT_FROM_SIZE:
        return _author_domains(values)  # a sender's From is the same message after message
    return _author_domains.__wrapped__(values)


# RFC 7489 §6.6.1: each From domain is an Author Domain, a policy look-up or two; a stranger's
# From naming thousands would cost as many DNS queries. Mail DMARC protects has one author.
MAX_AUTHOR_DOMAINS = 10
# RFC 5322 §2.1.1 lines are at most 998 octets, but folding lets a field run on for the whole
# header section; parsing 256 KiB of From takes the event loop seconds (measured: 2 to 6 s of
# groups, "<" or addresses). A From with its display names fits in a fraction of this.
MAX_FROM_SIZE = 4096
# From fields up to this size have their domains kept (by their text: a function of it alone).
_KEPT_FROM_SIZE = 1024


@functools.lru_cache(maxsize=4096)
def _author_domains(values: tuple[str, ...]) -> tuple[str, ...] | FromProblem:
    try:
        parsed = getaddresses(values)
    except RecursionError:
        # RFC 5322 §3.2.2: comments nest; the parser recurses once per level (a few hundred
        # "(" are enough), so a field nested that deep has no domain we can name.
        return FromProblem.UNREADABLE
    found = [address.rpartition("@")[2] for _n, address in parsed if "@" in address]
    found = [domain for domain in found if domain.strip()]
    if not found:
        return FromProblem.NO_ADDRESS
    domains: dict[str, None] = {}
    for domain in found:
        ascii_domain = author_domain(domain)
        if ascii_domain:
            domains[ascii_domain] = None
    if len(domains) > MAX_AUTHOR_DOMAINS:
        return FromProblem.TOO_MANY
    return tuple(domains) or FromProblem.BAD_DOMAIN


def author_domain(text: str) -> str:
    """The A-label form of a From domain in the normal form addresses are compared in
    (model.normalize_domain: UTS #46, NFC), or "" for what is no domain name."""
    name = text.strip().rstrip(".")
    if name.startswith("["):
        return ""
    try:
        ascii_domain = domain_a_label(normalize_domain(name))
    except AddressError:
        return ""
    if not all(0 < len(label) <= 63 for label in ascii_domain.split(".")):
        return ""
    return ascii_domain


def strictest(results: Sequence[DmarcResult]) -> DmarcResult:
    """RFC 7489 §6.6.1: with several Author Domains, the most strict policy among the checks
    that fail. What decides is what would be done: refuse (fail, reject) before defer (a
    temperror where a failure would be acted on, RFC 7489 §11.2) before quarantine."""

    def weight(result: DmarcResult) -> int:
        if result.status is DmarcStatus.FAIL and result.disposition is DmarcPolicy.REJECT:
            return 3
        if result.status is DmarcStatus.TEMPERROR and result.disposition is not DmarcPolicy.NONE:
            return 2
        if result.status is DmarcStatus.FAIL and result.disposition is DmarcPolicy.QUARANTINE:
            return 1
        return 0

    return max(results, key=weight)


# -- the organizational domain and alignment (RFC 7489 §3.1, §3.2) ----------------------------


@functools.cache
def _public_suffixes() -> PublicSuffixList:
    return PublicSuffixList()  # the list bundled with the package (parsed once)


@functools.lru_cache(maxsize=4096)  # the list is fixed for the process: a function of `domain`
def organizational_domain(domain: str) -> str:
    """RFC 7489 §3.2: the public suffix plus one label; a public suffix itself stays as is."""
    domain = normalize_name(domain)
    return _public_suffixes().privatesuffix(domain) or domain


def aligned(identifier: str, author_domain: str, mode: Alignment) -> bool:
    """RFC 7489 §3.1.1, §3.1.2: strict needs the same domain, relaxed the same
    organizational domain. Both are compared as A-labels: the SPF domain comes from MAIL
    FROM in U-labels (RFC 6531), the author domain from `from_domains` in A-labels."""
    identifier, author_domain = _comparable(identifier), _comparable(author_domain)
    if mode is Alignment.STRICT or identifier == author_domain:
        return identifier == author_domain
    return organizational_domain(identifier) == organizational_domain(author_domain)


@functools.lru_cache(maxsize=4096)
def _comparable(domain: str) -> str:
    return author_domain(domain) or normalize_name(domain)


# -- the record (RFC 7489 §6.3, §6.4) ---------------------------------------------------------


def _policy(value: str, tag: str) -> DmarcPolicy:
    try:
        return DmarcPolicy(value.lower())
    except ValueError:
        raise DmarcRecordError(f"{tag}={value!r} is not none, quarantine or reject") from None


def _uris(value: str) -> tuple[str, ...]:
    # RFC 7489 §6.4: dmarc-uri *(*WSP "," *WSP dmarc-uri); kept as written.
    return tuple(uri.strip() for uri in value.split(",") if uri.strip())


def _has_valid_uri(uris: tuple[str, ...]) -> bool:
    # RFC 7489 §6.2: a reporting URI is an absolute URI with a scheme (mailto: in practice).
    return any(uri.partition(":")[0].isalpha() and ":" in uri for uri in uris)


def _tags(text: str) -> dict[str, str]:
    # RFC 7489 §6.4: tag=value pairs separated by ";", white space around them ignored.
    tags: dict[str, str] = {}
    for part in text.split(";"):
        if not part.strip():
            continue
        name, equals, value = part.partition("=")
        if not equals:
            raise DmarcRecordError(f"not a tag=value pair: {part.strip()!r}")
        tags.setdefault(name.strip().lower(), value.strip())
    return tags


def is_dmarc_record(text: str) -> bool:
    # RFC 7489 §6.6.3 step 2: records that do not start with "v=DMARC1" are discarded.
    first = text.split(";", 1)[0].replace(" ", "").replace("\t", "")
    return first == "v=DMARC1"


# Parsed records by their text: a busy MX sees the same few hundred records all day, and
# the text alone decides the result (the DNS cache decides which text is current).
@functools.lru_cache(maxsize=1024)
def parse_record(text: str) -> DmarcRecord:
    """Parse a DMARC TXT record. RFC 7489 §6.6.3: a record without a valid p (or with a bad
    sp) but with a valid rua URI acts as p=none; otherwise it is a DmarcRecordError.
    Unknown tags are ignored (§6.3)."""
    if not is_dmarc_record(text):
        raise DmarcRecordError("record does not start with v=DMARC1")
    tags = _tags(text)
    rua, ruf = _uris(tags.get("rua", "")), _uris(tags.get("ruf", ""))
    try:
        policy = _policy(tags.get("p", ""), "p")
        sp = _policy(tags["sp"], "sp") if "sp" in tags else None
    except DmarcRecordError:
        if not _has_valid_uri(rua):
            raise
        policy, sp = DmarcPolicy.NONE, None  # RFC 7489 §6.6.3: act as if p=none
    np = _policy(tags["np"], "np") if "np" in tags else None  # RFC 9091 §4.1
    pct_text = tags.get("pct", "100")
    # RFC 7489 §6.3: pct is an integer 0..100; ASCII digits only, and never so many that
    # int() refuses them (a ValueError that cut the session with 421).
    digits = pct_text.lstrip("0") or "0"
    if not (pct_text.isascii() and pct_text.isdigit()) or len(digits) > 3 or int(digits) > 100:
        raise DmarcRecordError(f"pct={pct_text[:20]!r} is not 0..100")
    return DmarcRecord(
        policy=policy,
        subdomain_policy=sp,
        nonexistent_policy=np,
        pct=int(digits),
        adkim=_alignment(tags.get("adkim", "r"), "adkim"),
        aspf=_alignment(tags.get("aspf", "r"), "aspf"),
        rua=rua,
        ruf=ruf,
        fo=tuple(opt.strip() for opt in tags.get("fo", "0").split(":")),
    )


def _alignment(value: str, tag: str) -> Alignment:
    try:
        return Alignment(value.lower())
    except ValueError:
        raise DmarcRecordError(f"{tag}={value!r} is not r or s") from None


# -- policy discovery and evaluation (RFC 7489 §6.6) ------------------------------------------


class _TempError(Exception):
    pass


async def _records_at(domain: str, resolver: Resolver) -> list[str]:
    """The v=DMARC1 texts at _dmarc.<domain>; _TempError when DNS cannot say."""
    try:
        answer = await resolver.query(f"_dmarc.{domain}", RdType.TXT)
    except DnsNameError:
        return []
    if answer.status is DnsStatus.TEMPFAIL:
        raise _TempError(f"_dmarc.{domain}: {answer.detail or 'temporary DNS failure'}")
    texts = (raw.decode("utf-8", errors="replace") for raw in answer.texts())
    return [text for text in texts if is_dmarc_record(text)]


async def _exists(domain: str, resolver: Resolver) -> bool:
    """RFC 9091 §2.1: a domain exists unless A, AAAA and MX all answer NXDOMAIN or NODATA.
    A DNS failure counts as existing: np must not apply on a guess."""
    for rdtype in (RdType.A, RdType.AAAA, RdType.MX):
        try:
            answer = await resolver.query(domain, rdtype)
        except DnsNameError:
            return False
        if answer.status not in (DnsStatus.NXDOMAIN, DnsStatus.NODATA):
            return True
    return False


async def evaluate(
    from_domain: str,
    spf: SpfOutcome | None,
    dkim: Sequence[DkimOutcome],
    *,
    resolver: Resolver,
    rng: Rng,
) -> DmarcResult:
    """RFC 7489 §6.6: the DMARC verdict for a message whose RFC5322.From domain is
    `from_domain` (one of `from_domains(headers)`). `spf` is None when SPF was not checked."""
    author = normalize_name(from_domain)
    org = organizational_domain(author)
    try:
        # RFC 7489 §6.6.3: the author domain first, then the organizational domain.
        policy_domain, texts = author, await _records_at(author, resolver)
        if not texts and org != author:
            policy_domain, texts = org, await _records_at(org, resolver)
    except _TempError as error:
        return DmarcResult(DmarcStatus.TEMPERROR, DmarcPolicy.NONE, author, detail=str(error))
    if len(texts) != 1:
        # RFC 7489 §6.6.3 step 5: none, or several records: DMARC does not apply.
        detail = "no DMARC record" if not texts else f"{len(texts)} DMARC records"
        return DmarcResult(DmarcStatus.NONE, DmarcPolicy.NONE, author, policy_domain, detail=detail)
    try:
        record = parse_record(texts[0])
    except DmarcRecordError as error:
        # RFC 7489 §6.6.3 step 6: an invalid record means no DMARC processing.
        return DmarcResult(
            DmarcStatus.PERMERROR, DmarcPolicy.NONE, author, policy_domain, detail=str(error)
        )
    spf_ok = (
        spf is not None
        and spf.result.lower() == "pass"
        and aligned(spf.domain, author, record.aspf)
    )
    dkim_ok = any(
        d.result.lower() == "pass" and aligned(d.domain, author, record.adkim) for d in dkim
    )
    policy = await _applicable_policy(record, author, policy_domain, resolver)
    if spf_ok or dkim_ok:
        # RFC 7489 §4.2: one aligned pass is enough.
        return DmarcResult(
            DmarcStatus.PASS,
            DmarcPolicy.NONE,
            author,
            policy_domain,
            record,
            policy,
            spf_aligned=spf_ok,
            dkim_aligned=dkim_ok,
        )
    disposition, sampled_out = _sample(policy, record.pct, rng)
    if _undecided(spf, dkim, author, record):
        # RFC 7208 §2.6.6 / RFC 6376 §6.1.2 step 3: a temporary DNS error is a temporary
        # result; an aligned identifier that could not be checked might have passed, so
        # DMARC cannot say "fail" (RFC 7489 §11.2: temperror). The disposition stays what
        # a failure would get, so the caller can defer (4xx) instead of accepting or refusing.
        return DmarcResult(
            DmarcStatus.TEMPERROR,
            disposition,
            author,
            policy_domain,
            record,
            policy,
            sampled_out=sampled_out,
            detail="aligned SPF or DKIM check had a temporary error",
        )
    return DmarcResult(
        DmarcStatus.FAIL,
        disposition,
        author,
        policy_domain,
        record,
        policy,
        sampled_out=sampled_out,
        detail="no aligned SPF or DKIM pass",
    )


def _undecided(
    spf: SpfOutcome | None, dkim: Sequence[DkimOutcome], author: str, record: DmarcRecord
) -> bool:
    """True when an aligned identifier's check ended in temperror (RFC 8601 §2.7.1)."""
    spf_temp = (
        spf is not None
        and spf.result.lower() == "temperror"
        and aligned(spf.domain, author, record.aspf)
    )
    return spf_temp or any(
        d.result.lower() == "temperror" and aligned(d.domain, author, record.adkim) for d in dkim
    )


async def _applicable_policy(
    record: DmarcRecord, author: str, policy_domain: str, resolver: Resolver
) -> DmarcPolicy:
    if policy_domain == author:
        return record.policy  # RFC 7489 §6.3: p for the domain that published it
    # RFC 9091 §4.1: np for a non-existent subdomain, else sp, else p (RFC 7489 §6.3).
    if record.nonexistent_policy is not None and not await _exists(author, resolver):
        return record.nonexistent_policy
    return record.subdomain_policy or record.policy


def _sample(policy: DmarcPolicy, pct: int, rng: Rng) -> tuple[DmarcPolicy, bool]:
    """RFC 7489 §6.6.4: the policy applies to pct% of failing mail; the rest gets the next
    policy down (reject -> quarantine, quarantine -> none)."""
    if policy is DmarcPolicy.NONE or pct >= 100 or rng.random() * 100 < pct:
        return policy, False
    lesser = DmarcPolicy.QUARANTINE if policy is DmarcPolicy.REJECT else DmarcPolicy.NONE
    return lesser, True
