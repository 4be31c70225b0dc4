"""Judging the mail we receive on `mx`: SPF, DKIM, ARC and DMARC, the Authentication-Results
header we add (RFC 8601), and what the DMARC policy asks us to do with the message.

Theory of operation: the session hands over the whole message (header section and body, as
received, bounded in size) once DATA has ended and before the queue commit; the header
section is split into fields once, for DKIM, ARC and DMARC alike; the checks run concurrently
through the DNS seam, under one time budget for the whole message (DMARC gets what SPF, DKIM
and ARC left of it); anything that cannot be decided in time is a temperror, never a hang.
What the caches already decided (an SPF result, no ARC set to check) starts no task.
dkimpy's hashing runs in a small pool of worker processes (`ProcessPool`), never on the event
loop, so a big message with many signatures stalls no other session; the verification of a
message of at most 64 KiB (times its signatures) is done at once, on the loop, which costs a
third of the pool's CPU and none of a thread hand-off's waits for the GIL
(authcheck/offload.py, NEARBY_LIMIT). Past 10 MiB
only the header section is handed over, with the body hashes of its DKIM signatures computed
in threads (`lanes`) as it streamed in (intake/capture.py); SPF and DMARC are the same. The
verdict is
a value: the header lines to prepend and whether to accept, refuse (550 5.7.1) or quarantine
(deliver to the Junk folder).
"""

from __future__ import annotations

import asyncio
import enum
import random
from collections.abc import Callable
from dataclasses import dataclass, replace

from hato.authcheck import (
    ArcResult,
    ArcStatus,
    DkimOutcome,
    DkimResult,
    DkimStatus,
    DmarcPolicy,
    DmarcResult,
    DmarcStatus,
    FromProblem,
    MethodResult,
    SpfOutcome,
    SpfResult,
    SpfResultCode,
    build_header,
    dkim_methods,
    evaluate,
    from_domains,
    spf_method,
    strictest,
    verify_arc,
    verify_dkim,
)
from hato.authcheck.arc import arc_fields
from hato.authcheck.dkim import MAX_SIGNATURES, header_block
from hato.authcheck.offload import BySize, ProcessPool, WorkerPool, inline
from hato.authcheck.ownfrom import (
    as_if_reject,
    display_name_domains,
    held,
    ours_or_below,
    sender_domains,
)
from hato.authcheck.spf_cache import SpfCache
from hato.intake.capture import LargeMessage
from hato.model import Clock, Reply, ReversePath
from hato.model.dns import Resolver
from hato.model.header import HeaderField, split_header_fields
from hato.policy import (
    Accept,
    Defer,
    DisplayNameFacts,
    OwnDomains,
    OwnFromFacts,
    Quarantine,
    Reject,
    display_name_decision,
    own_from_decision,
)
from hato.reports import Recorder
from hato.reports.capture import dmarc_events

DMARC_REJECT = Reply(550, "5.7.1", "Message rejected by the sender domain's DMARC policy")
# RFC 3463 §3.5: X.4.3 "directory server failure" (DNS); RFC 7489 §11.2 temperror, so retry.
DMARC_SHARE = 0.25  # of the time budget, kept for DMARC's own lookups
DMARC_DEFER = Reply(451, "4.4.3", "Temporary DNS failure checking the sender's domain, try later")


class Enforcement(enum.Enum):
    POLICY = "policy"  # follow p=/sp=/np=: reject -> 550 5.7.1, quarantine -> Junk
    QUARANTINE = "quarantine"  # never refuse: reject policies are quarantined too
    REPORT = "report"  # only say so in Authentication-Results


@dataclass(frozen=True, slots=True)
class InboundVerdict:
    header: bytes  # the Authentication-Results field to prepend
    arc: ArcStatus = ArcStatus.NONE  # the chain found (for sealing when we forward, RFC 8617)
    refuse: Reply | None = None
    quarantine: bool = False
    summary: str = ""  # "spf=pass dkim=pass dmarc=pass" for the log
    spf_pass: bool = False  # the MAIL FROM passed SPF (RFC 7208 §2.6.3): a checked sender


# RFC 5322 §3.6.2, §3.6.6: the originator fields readers show, From and the others.
_ORIGINATOR_NAMES = frozenset({"from", "sender", "resent-from", "resent-sender"})


def _originators(fields: list[HeaderField]) -> list[tuple[str, HeaderField]]:
    """The From, Sender and Resent-* fields with their names in lower case, in one pass over
    the section. A name is compared as DMARC's From always was: decoded and stripped of any
    white space (`From\x0b:` is a From to a reader that trims more than RFC 5322 §4.5 WSP)."""
    named = ((f.name.decode("latin-1").strip().lower(), f) for f in fields)
    return [(n, f) for n, f in named if n in _ORIGINATOR_NAMES]


@dataclass(frozen=True, slots=True)
class _Evidence:
    """What the checks of one message found, for the own-domains judgement."""

    spf: SpfResult
    dkim: tuple[DkimResult, ...]
    arc: ArcResult
    client_ip: str
    froms: list[str]  # the From fields' unfolded values
    senders: list[HeaderField]  # the Sender and Resent-* fields


def _trusted_seal(rule: OwnDomains, arc: ArcResult) -> bool:
    """A valid ARC chain whose newest seal is a trusted sealer's (RFC 8617 §7.2: a receiver
    may let a chain it trusts override a DMARC failure by local policy)."""
    newest = max(arc.sets, key=lambda s: s.instance, default=None)
    return (
        arc.status is ArcStatus.PASS
        and newest is not None
        and rule.sealed_by_trusted(newest.domain)
    )


class InboundChecker:
    def __init__(
        self,
        resolver: Resolver,
        *,
        authserv_id: str,
        clock: Clock,
        enforcement: Enforcement = Enforcement.POLICY,
        budget: float = 20.0,
        rng: random.Random | None = None,
        recorder: Recorder | None = None,
        own: OwnDomains | None = None,
        is_own: Callable[[str], bool] | None = None,
    ) -> None:
        self._resolver = resolver
        # [authcheck] own_domains: mail claiming one of our domains (policy/ownfrom.py);
        # `is_own` says which domains are ours (the address book in force, and our hostname).
        self.own = own
        self._is_own = is_own
        self._recorder = recorder  # [reports]: the DMARC aggregate report data (hato.reports)
        self._authserv_id = authserv_id
        self._clock = clock
        self._enforcement = enforcement
        self._budget = budget
        self._rng = rng or random.Random()
        self.offload = ProcessPool()
        self._spf_cache = SpfCache(clock)  # results for the TTL of their answers
        # Small messages are verified at once: cheaper than the pool or a thread (NEARBY_LIMIT).
        self.routes = BySize(inline, self.offload)
        self.lanes = WorkerPool()  # streamed body hashes (intake/capture.py)

    async def check(
        self, *, client_ip: str, helo: str, mail_from: ReversePath, message: bytes | LargeMessage
    ) -> InboundVerdict:
        """`message` whole, or past MAX_CHECKED_SIZE its header and streamed body hashes:
        SPF and DMARC need no body and are the same for both (intake/capture.py)."""
        sender = "" if mail_from is None else str(mail_from)
        deadline = asyncio.get_running_loop().time() + self._budget
        # DMARC keeps a share of the budget for its policy: a DKIM check that ran out of time
        # (a slow body hash, a slow key server) is then a temperror the policy defers (451),
        # not one that left DMARC no time to learn p=reject and so delivered a spoof.
        early = deadline - self._budget * DMARC_SHARE
        head = message.header if isinstance(message, LargeMessage) else message
        fields = split_header_fields(header_block(head))  # once, for every check below
        # Each check that may ask DNS runs concurrently with the others; one the caches have
        # decided (a kept SPF result, a message with no ARC set) starts no task.
        kept = self._spf_cache.cached(client_ip, sender, helo=helo)
        chain = not isinstance(message, LargeMessage) and bool(arc_fields(fields))
        if kept is None or chain:
            spf, dkim, arc = await asyncio.gather(
                self._spf(client_ip, helo, sender, early) if kept is None else _ready(kept),
                self._dkim(message, fields, early),
                self._arc(message, fields, early),
            )
        else:
            spf = kept
            dkim = await self._dkim(message, fields, early)
            arc = await self._arc(message, fields, early)
        originators = _originators(fields)
        froms = [f.text() for n, f in originators if n == "from"]
        dmarc = await self._dmarc(froms, spf, dkim, deadline)
        methods: list[MethodResult] = [spf_method(spf, mailfrom=sender, helo=helo)]
        methods.extend(dkim_methods(dkim))
        methods.extend(_dmarc_methods(dmarc))
        if arc.status is not ArcStatus.NONE:
            methods.append(arc.method_result())
        header = build_header(self._authserv_id, methods)
        summary = " ".join(f"{m.method}={m.result}" for m in methods)
        decisive = dmarc if isinstance(dmarc, FromProblem) else strictest(dmarc)
        verdict = InboundVerdict(
            header, arc.status, summary=summary, spf_pass=spf.result is SpfResultCode.PASS
        )
        verdict = self._decide(verdict, decisive)
        if verdict.refuse is None and not isinstance(dmarc, FromProblem):
            verdict = await self._own_domains(
                verdict,
                dmarc,
                _Evidence(
                    spf, dkim, arc, client_ip, froms, [f for n, f in originators if n != "from"]
                ),
                deadline,
            )
        if self._recorder is not None and not isinstance(dmarc, FromProblem):
            self._record(dmarc, client_ip, sender, spf, dkim, verdict)
        return verdict

    def _record(
        self,
        dmarc: tuple[DmarcResult, ...],
        client_ip: str,
        sender: str,
        spf: SpfResult,
        dkim: tuple[DkimResult, ...],
        verdict: InboundVerdict,
    ) -> None:
        assert self._recorder is not None
        if verdict.refuse is DMARC_DEFER:
            return  # RFC 7489 §11.2 temperror: the client tries again, counted then
        applied = "reject" if verdict.refuse else "quarantine" if verdict.quarantine else "none"
        events = dmarc_events(dmarc, time=self._clock.now(), source_ip=client_ip,
                              mail_from=sender, spf=spf, dkim=dkim, applied=applied)  # fmt: skip
        for event in events:
            self._recorder.record_dmarc(event)

    def _decide(self, verdict: InboundVerdict, dmarc: DmarcResult | FromProblem) -> InboundVerdict:
        if self._enforcement is Enforcement.REPORT:
            return verdict
        if isinstance(dmarc, FromProblem):
            # RFC 7489 §6.6.1 leaves a message with no Author Domain to local policy. Readers
            # still show a sender (an encoded-word decoded, RFC 2047 §5 forbids it in an
            # address; a bare name), which no DMARC policy could vouch for: a spoof of a
            # p=reject domain would pass. RFC 5322 §3.6: a From with a mailbox is required.
            if self._enforcement is Enforcement.POLICY:
                return replace(verdict, refuse=no_author(dmarc))
            return replace(verdict, quarantine=True)
        if dmarc.status is DmarcStatus.TEMPERROR and dmarc.disposition is not DmarcPolicy.NONE:
            # RFC 7208 §8.6 / RFC 7489 §11.2: a temporary DNS error decides nothing for good;
            # what a failure would reject or quarantine is deferred, never refused with 5xx.
            return replace(verdict, refuse=DMARC_DEFER)
        if dmarc.status is not DmarcStatus.FAIL:
            return verdict
        # RFC 7489 §6.6.4 / §10.2: the receiver applies the policy as local policy allows.
        if dmarc.disposition is DmarcPolicy.REJECT and self._enforcement is Enforcement.POLICY:
            return replace(verdict, refuse=DMARC_REJECT)
        if dmarc.disposition in (DmarcPolicy.REJECT, DmarcPolicy.QUARANTINE):
            return replace(verdict, quarantine=True)
        return verdict

    async def _own_domains(
        self,
        verdict: InboundVerdict,
        dmarc: tuple[DmarcResult, ...],
        evidence: _Evidence,
        deadline: float,
    ) -> InboundVerdict:
        """A From in one of our own domains (or below one, without a DMARC record of its own)
        is judged as if the domain said p=reject (policy/ownfrom.py): a stranger's spoof of
        our users, to our users, is refused even when our domain publishes no DMARC record or
        p=none (RFC 7489 §6.6.4, local policy). Then the Sender and Resent-* addresses, the
        same way, and last a From display name that reads as one of our addresses."""
        rule, is_own = self.own, self._is_own
        if rule is None or is_own is None:
            return verdict
        outcome = verdict
        near = [r for r in dmarc if ours_or_below(r.from_domain, is_own)]
        ours = [r for r in near if held(r, is_own)]
        if ours:
            facts = self._own_facts(rule, ours, evidence)
            outcome = self._apply(outcome, own_from_decision(rule, facts), "own")
            if outcome.refuse is not None:
                return outcome
        senders = evidence.senders
        if senders:
            found = await self._sender_facts(rule, senders, evidence, deadline)
            if found is not None:
                found = replace(found, sender_field=True)
                outcome = self._apply(outcome, own_from_decision(rule, found), "own_sender")
                if outcome.refuse is not None:
                    return outcome
        if near:
            return outcome  # our address is the author: judged above, whatever its name says
        if not any(ours_or_below(d, is_own) for d in display_name_domains(evidence.froms)):
            return outcome
        names = DisplayNameFacts(
            relayed=rule.relayed(evidence.client_ip),
            # SpamAssassin's FromNameSpoof `fns_ignore_dkim` too: a list's own signature.
            vouched=_trusted_seal(rule, evidence.arc)
            or any(
                r.status is DkimStatus.PASS and rule.sealed_by_trusted(r.domain)
                for r in evidence.dkim
            ),
        )
        return self._apply(outcome, display_name_decision(rule, names), "own_name")

    def _own_facts(
        self, rule: OwnDomains, ours: list[DmarcResult], evidence: _Evidence
    ) -> OwnFromFacts:
        """What the checks found for the held domains `ours` (none: a pass)."""
        kept = SpfOutcome.of(evidence.spf)
        statuses = {as_if_reject(r, kept, _outcomes(r.from_domain, evidence.dkim)) for r in ours}
        return OwnFromFacts(
            passed=statuses <= {DmarcStatus.PASS},
            temperror=DmarcStatus.TEMPERROR in statuses and DmarcStatus.FAIL not in statuses,
            relayed=rule.relayed(evidence.client_ip),
            arc_trusted=_trusted_seal(rule, evidence.arc),
        )

    async def _sender_facts(
        self, rule: OwnDomains, fields: list[HeaderField], evidence: _Evidence, deadline: float
    ) -> OwnFromFacts | None:
        """RFC 5322 §3.6.2 Sender, §3.6.6 Resent-From and Resent-Sender: an address of ours
        there is held to what a From of ours is (None: none of ours). Fields that cannot be
        read (past DMARC's bounds for a From: 4 KiB, 10 domains) might name ours: they fail."""
        is_own = self._is_own
        assert is_own is not None
        domains = sender_domains(f.text() for f in fields)
        if domains is None:
            facts = self._own_facts(rule, [], evidence)
            return replace(facts, passed=False, temperror=False)
        wanted = [d for d in domains if ours_or_below(d, is_own)]
        if not wanted:
            return None
        try:
            async with asyncio.timeout_at(deadline):
                results = [await self._evaluate(d, evidence.spf, evidence.dkim) for d in wanted]
        except TimeoutError:
            results = [
                DmarcResult(DmarcStatus.TEMPERROR, DmarcPolicy.NONE, d, detail="time budget")
                for d in wanted
            ]
        ours = [r for r in results if held(r, is_own)]
        return self._own_facts(rule, ours, evidence) if ours else None

    @staticmethod
    def _apply(
        verdict: InboundVerdict, decision: Accept | Reject | Defer | Quarantine, name: str
    ) -> InboundVerdict:
        """The verdict with an own-domains decision applied; `name` for the log summary."""
        if isinstance(decision, Defer):
            # The same reply as DMARC's temperror: not counted in the aggregate report (the
            # client tries again, `_record`).
            return replace(
                verdict, refuse=DMARC_DEFER, summary=f"{verdict.summary} {name}=temperror"
            )
        if isinstance(decision, Reject):
            return replace(verdict, refuse=decision.reply, summary=f"{verdict.summary} {name}=fail")
        if isinstance(decision, Quarantine):
            return replace(verdict, quarantine=True, summary=f"{verdict.summary} {name}=fail")
        return verdict

    async def _spf(self, ip: str, helo: str, sender: str, deadline: float) -> SpfResult:
        try:
            async with asyncio.timeout_at(deadline):
                return await self._spf_cache.check_mail_from(
                    ip, sender, helo=helo, resolver=self._resolver, receiver=self._authserv_id
                )
        except TimeoutError:
            domain = sender.rpartition("@")[2] or helo
            return SpfResult(SpfResultCode.TEMPERROR, domain, detail="time budget exceeded")

    async def _dkim(
        self, message: bytes | LargeMessage, fields: list[HeaderField], deadline: float
    ) -> tuple[DkimResult, ...]:
        try:
            async with asyncio.timeout_at(deadline):
                if isinstance(message, LargeMessage):
                    hashes = await message.digests()
                    return await verify_dkim(
                        message.header,
                        self._resolver,
                        offload=self.offload,
                        body_hashes=hashes,
                        fields=fields,
                    )
                signatures = sum(1 for f in fields if f.name.lower() == b"dkim-signature")
                offload = self.routes.for_size(len(message), min(signatures, MAX_SIGNATURES))
                return await verify_dkim(message, self._resolver, offload=offload, fields=fields)
        except TimeoutError:
            if isinstance(message, LargeMessage):
                message.lane.abandon()  # stop hashing what no one waits for
            return (DkimResult(DkimStatus.TEMPERROR, reason="time budget exceeded"),)

    async def _arc(
        self, message: bytes | LargeMessage, fields: list[HeaderField], deadline: float
    ) -> ArcResult:
        if isinstance(message, LargeMessage):
            # Not verified past MAX_CHECKED_SIZE (docs/configuration.md): no arc= result, and
            # no ARC set of ours when forwarded. DMARC's verdict never rests on ARC here.
            return ArcResult(ArcStatus.NONE, reason="message too large to verify")
        try:
            async with asyncio.timeout_at(deadline):
                offload = self.routes.for_size(len(message))
                return await verify_arc(message, self._resolver, offload=offload, fields=fields)
        except TimeoutError:
            return ArcResult(ArcStatus.FAIL, reason="time budget exceeded")

    async def _dmarc(
        self,
        froms: list[str],
        spf: SpfResult,
        dkim: tuple[DkimResult, ...],
        deadline: float,
    ) -> tuple[DmarcResult, ...] | FromProblem:
        """One result per From domain (RFC 7489 §6.6.1), from the From fields' values of the
        whole header section read the one way every check reads it (model/header.py: the
        name stripped, so "From :" too), never Python's parser, which stops at the first
        malformed line and skips "From :" fields readers show."""
        authors = from_domains(("from", text) for text in froms)
        if isinstance(authors, FromProblem):
            return authors
        try:
            async with asyncio.timeout_at(deadline):
                if len(authors) == 1:  # the common case: no task to make
                    return (await self._evaluate(authors[0], spf, dkim),)
                return tuple(await asyncio.gather(*(self._evaluate(a, spf, dkim) for a in authors)))
        except TimeoutError:
            return tuple(
                DmarcResult(
                    DmarcStatus.TEMPERROR, DmarcPolicy.NONE, a, detail="time budget exceeded"
                )
                for a in authors
            )

    async def _evaluate(
        self, author: str, spf: SpfResult, dkim: tuple[DkimResult, ...]
    ) -> DmarcResult:
        outcomes = _outcomes(author, dkim)
        return await evaluate(
            author, SpfOutcome.of(spf), outcomes, resolver=self._resolver, rng=self._rng
        )


def no_author(problem: FromProblem) -> Reply:
    """The refusal of a message whose From names no domain DMARC could judge (RFC 3463 X.7.1:
    delivery not authorized, as a DMARC reject)."""
    return Reply(550, "5.7.1", f"Message refused: {problem.value} (RFC 5322 section 3.6.2)")


def _outcomes(author: str, dkim: tuple[DkimResult, ...]) -> list[DkimOutcome]:
    """The signatures as DMARC reads them for `author`. A DKIM check cut off by the budget
    names no domain: it might have held an aligned signature, so it counts as the author's
    temperror."""
    return [
        DkimOutcome(r.domain or author, r.status.value, r.selector)
        for r in dkim
        if r.domain or r.status is DkimStatus.TEMPERROR
    ]


async def _ready(result: SpfResult) -> SpfResult:
    return result


def _dmarc_methods(dmarc: tuple[DmarcResult, ...] | FromProblem) -> tuple[MethodResult, ...]:
    """One dmarc entry per From domain (RFC 8601 §2.2 allows a method to appear again)."""
    if isinstance(dmarc, FromProblem):
        return (MethodResult("dmarc", "permerror", reason=dmarc.value),)
    return tuple(_dmarc_method(result) for result in dmarc)


def _dmarc_method(dmarc: DmarcResult) -> MethodResult:
    # RFC 7489 §11.2: dmarc=<result> header.from=<domain>; policy.dmarc (RFC 8601 registry).
    props: tuple[tuple[str, str], ...] = (("header.from", dmarc.from_domain),)
    if dmarc.policy is not None:
        props += (("policy.dmarc", dmarc.policy.value),)
    return MethodResult("dmarc", dmarc.status.value, properties=props)
