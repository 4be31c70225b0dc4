"""The DMARC question asked of mail that claims to come from one of our own domains, as if
that domain published `p=reject` (docs/configuration.md, `[authcheck] own_domains`).

Theory: we know how our own mail leaves (DKIM-signed by us, from the hosts our SPF names).
A stranger on port 25 writing `From: ceo@our.domain` to one of our users passed DMARC when
the domain published no record or `p=none` (RFC 7489 §6.6.3 step 5: no record, no DMARC):
a spoof of our users to our users. So for an Author Domain of ours the verdict is made again
with relaxed alignment (RFC 7489 §3.1, the default of §6.3 `adkim`/`aspf`) whatever the
record says: one aligned SPF or DKIM pass (§4.2) passes; an aligned identifier whose check
ended in temperror defers (§11.2); anything else fails. A record that exists and decided
`pass` or `fail` is kept as it decided (its own `aspf`/`adkim`).

Which domains are held so: ours (`is_own`), and every name below one of ours that publishes
no DMARC record of its own. RFC 7489 §6.6.3 judges `x.example.org` by example.org's record
(its `sp=`) when `_dmarc.x.example.org` has none: the subdomain is ours as much as the domain
is, and a stranger writing `From: ceo@billing.example.org` is the same spoof. A subdomain
whose owner published its own record (a zone delegated to a mailing service, say) has said
what it wants, and its own record decides (`held`).

The same judgement holds for the other originator fields a reader shows (RFC 5322 §3.6.2
Sender, §3.6.6 Resent-From and Resent-Sender: "ceo on behalf of ..."), and
`display_name_domains` finds our domains in the text a reader shows beside the address: a
display name or comment that reads as one of our addresses.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Callable, Iterable, Sequence
from email.errors import HeaderParseError
from email.header import decode_header, make_header

from hato.authcheck.dmarc import (
    MAX_FROM_SIZE,
    Alignment,
    DkimOutcome,
    DmarcResult,
    DmarcStatus,
    FromProblem,
    SpfOutcome,
    aligned,
    author_domain,
    from_domains,
)

# RFC 1035 §2.3.4: at most 127 labels; a walk up a name is bounded by it.
_MAX_LABELS = 127
# Something a reader shows as an address: an at sign (RFC 5322 §3.4.1; the full-width U+FF20
# and the small U+FE6B read the same) after a local part's character, then a domain. Anchored
# at the at sign and the domain stops at the next one: linear in the text.
_AT = "@\uff20\ufe6b"
_NOT_ADDRESS = rf"\s<>()\[\]\"',;:\\{_AT}"
_WIDE_AT = re.compile("[\uff20\ufe6b]")
_ADDRESS_LIKE = re.compile(rf"(?<=[^{_NOT_ADDRESS}])[{_AT}]([^{_NOT_ADDRESS}]+)")


def as_if_reject(
    result: DmarcResult, spf: SpfOutcome | None, dkim: Sequence[DkimOutcome]
) -> DmarcStatus:
    """PASS, FAIL or TEMPERROR for `result.from_domain` (one of ours) under p=reject."""
    if result.status in (DmarcStatus.PASS, DmarcStatus.FAIL, DmarcStatus.TEMPERROR):
        return result.status  # a record of the domain decided (RFC 7489 §6.6.2)
    author = result.from_domain
    relaxed = Alignment.RELAXED  # RFC 7489 §6.3: adkim and aspf default to r
    identifiers: list[SpfOutcome | DkimOutcome] = [*([] if spf is None else [spf]), *dkim]
    if any(i.result.lower() == "pass" and aligned(i.domain, author, relaxed) for i in identifiers):
        return DmarcStatus.PASS  # RFC 7489 §4.2: one aligned pass is enough
    if any(
        i.result.lower() == "temperror" and aligned(i.domain, author, relaxed) for i in identifiers
    ):
        # RFC 7208 §2.6.6 / RFC 6376 §6.1.2: an aligned check that could not finish might
        # have passed; RFC 7489 §11.2 temperror, so the sender tries again.
        return DmarcStatus.TEMPERROR
    return DmarcStatus.FAIL


def below_own(domain: str, is_own: Callable[[str], bool]) -> bool:
    """Whether `domain` (lower case, A-labels) is a proper subdomain of one of ours."""
    labels = domain.rstrip(".").split(".")[:_MAX_LABELS]
    return any(is_own(".".join(labels[n:])) for n in range(1, len(labels)))


def ours_or_below(domain: str, is_own: Callable[[str], bool]) -> bool:
    return is_own(domain) or below_own(domain, is_own)


def held(result: DmarcResult, is_own: Callable[[str], bool]) -> bool:
    """Whether the own-domains rule judges this Author Domain: one of ours, or a name below
    one of ours without a DMARC record of its own (RFC 7489 §6.6.3: the record then looked at
    is the organizational domain's, its `sp=`). A lookup that failed (no policy domain) is
    held: `as_if_reject` keeps its temperror, so the sender tries again."""
    author = result.from_domain
    if is_own(author):
        return True
    return below_own(author, is_own) and result.policy_domain != author


def sender_domains(values: Iterable[str]) -> tuple[str, ...] | None:
    """The domains of the addresses in Sender, Resent-From and Resent-Sender fields (RFC 5322
    §3.6.2, §3.6.6; their unfolded values), read as DMARC reads From (the same parser and
    bounds: together at most 4 KiB and 10 domains); None when they cannot be read (too long,
    too many, nested too deep): then no one can say they name none of ours."""
    pairs = [("from", value) for value in values]
    if not pairs:
        return ()
    found = from_domains(pairs)
    if isinstance(found, tuple):
        return found
    if found in (FromProblem.NO_ADDRESS, FromProblem.BAD_DOMAIN):
        return ()  # no address with a domain: nothing of ours (RFC 5322 §3.4)
    return None


def display_name_domains(values: Iterable[str]) -> tuple[str, ...]:
    """The domains of what reads as an address anywhere in From fields (their unfolded
    values): the real addresses and any in display names or comments (RFC 5322 §3.4
    display-name, §3.2.2 comments), encoded-words (RFC 2047 §5, shown decoded by readers)
    decoded. The caller knows the real ones (`from_domains`); the rest are what a reader
    shows beside them. At most MAX_FROM_SIZE of text is read (DMARC refuses a longer From).
    A text with one at sign at most and no encoded-word holds no second address: () at once
    (the common From, read for every message on mx)."""
    text = "".join(values)[:MAX_FROM_SIZE]
    if text.count("@") <= 1 and "=?" not in text and not _WIDE_AT.search(text):
        return ()
    if "=?" in text:
        # Undecodable: read as written.
        with contextlib.suppress(HeaderParseError, LookupError, UnicodeError, ValueError):
            text = str(make_header(decode_header(text)))
    found: dict[str, None] = {}
    for match in _ADDRESS_LIKE.finditer(text):
        domain = author_domain(match.group(1))
        if domain:
            found[domain] = None
    return tuple(found)
