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
"""

from __future__ import annotations

from collections.abc import Sequence

from hato.authcheck.dmarc import (
    Alignment,
    DkimOutcome,
    DmarcResult,
    DmarcStatus,
    SpfOutcome,
    aligned,
)


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
