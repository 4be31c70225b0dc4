"""Who is a local recipient: the RCPT-time answer for our own domains.

Theory of operation: `RecipientResolver.resolve` maps an address to `NotLocal` (not one of our
domains), `Unknown` (our domain, nobody there: the session answers 550 5.1.1), or `Local` (the
mailboxes to deliver to and the remote addresses to forward to). For a local part the rules are
tried in this order, and the first that yields at least one mailbox or forward wins:

1. the local part is compared lower-case; one that cannot be a safe directory name is Unknown
   (so a quoted local part like ``"../x"`` can never reach the file system);
2. an existing user (`UserDirectory.exists`) -> that mailbox;
3. an alias, first the domain's configured aliases, then the aliases file -> each target is
   resolved again by these same rules (a local part of the same domain, a local address) or is a
   forward (a remote address);
4. ``user+tag`` -> ``user`` resolved again by these rules (the delimiter characters are
   configurable, as in Postfix's recipient_delimiter; "" turns this off);
5. a role name (``postmaster``, ``root``, ``abuse``, ``mailer-daemon``) -> the configured
   postmaster address (``[local] postmaster``); without one, ``root``, ``abuse`` and
   ``mailer-daemon`` are resolved as ``postmaster`` of the domain (so cron's mail to root
   reaches whoever postmaster is);
6. the domain's catch-all target, resolved again by these rules;
7. `accept_any` -> a mailbox of that local part (when rules 3 to 6 cannot apply, the user
   store is not asked at rule 2: it would name the same mailbox);
8. ``postmaster`` -> its own mailbox (RFC 5321 §4.5.1: postmaster must always be accepted).

At most 10 expansions (alias, +tag, catch-all) are followed; a target that is already being
expanded (a loop) yields nothing. A target that leads nowhere even on its own (an alias naming
an address with no account: ``sales = ["alice", "bob"]`` before ``bob`` is added) is listed in
`Local.unresolved`: the caller queues it like a mailbox, and `KnownMailboxes` fails it at
delivery, so the sender gets a bounce for it and the log a line, never silence.

Must not import anything of hato but model and this room.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

from hato.directory.aliases import AliasFileError, AliasTable, AliasTarget, parse_target
from hato.directory.names import is_safe_mailbox_name
from hato.directory.srs import Srs, is_srs
from hato.model import (
    Address,
    AddressError,
    Clock,
    UserDirectory,
    domain_a_label,
    normalize_domain,
)

__all__ = [  # AliasTable and AliasFileError re-exported: callers build a resolver from here
    "AliasFileError",
    "AliasTable",
    "Local",
    "LocalDomain",
    "NotLocal",
    "RecipientResolver",
    "Resolution",
    "Unknown",
]

MAX_DEPTH = 10
# RFC 5321 §4.5.1: "postmaster" is matched without regard to case.
POSTMASTER = "postmaster"
# Names programs and people write to that must reach a person: RFC 2142 §2 (abuse, postmaster),
# root (cron, daemons) and MAILER-DAEMON (replies to bounces).
ROLE_NAMES = frozenset({POSTMASTER, "root", "abuse", "mailer-daemon"})
MAX_KEPT = 16384  # resolutions kept under one generation of the users; past it, dropped


@runtime_checkable
class Versioned(Protocol):
    """A user directory that can tell when its answers may have changed (boot/dbcache.py)."""

    def generation(self) -> object | None:
        """Equal tokens: the same `exists` answers; None: cannot be told now."""
        ...


@dataclass(frozen=True, slots=True)
class LocalDomain:
    """One domain we deliver locally, as configured."""

    name: str  # lower-case
    catch_all: str | None = None  # local part or full address receiving unknown local parts
    accept_any: bool = False  # every well-formed local part is a mailbox of its own
    aliases: Mapping[str, tuple[str, ...]] = field(default_factory=dict)  # local part -> targets


@dataclass(frozen=True, slots=True)
class NotLocal:
    """The domain is not one of ours."""


@dataclass(frozen=True, slots=True)
class Unknown:
    """One of our domains, but no mailbox there (RFC 3463 X.1.1)."""


@dataclass(frozen=True, slots=True)
class Local:
    """Deliver to `mailboxes` (lower-case local parts) and forward to `forwards`; both
    deduplicated, in the order found. `unresolved` are alias targets that led nowhere."""

    mailboxes: tuple[Address, ...]
    forwards: tuple[Address, ...]
    unresolved: tuple[Address, ...] = ()


Resolution = NotLocal | Unknown | Local


@dataclass(frozen=True, slots=True)
class _Domain:
    name: str
    catch_all: AliasTarget | None
    accept_any: bool
    aliases: Mapping[str, tuple[AliasTarget, ...]]


@dataclass(slots=True)
class _Found:
    mailboxes: dict[Address, None] = field(default_factory=dict)
    forwards: dict[Address, None] = field(default_factory=dict)
    unresolved: dict[Address, None] = field(default_factory=dict)


def _domain_forms(name: str) -> set[str]:
    """The spellings of a domain that mean the same: as given, normalized the way addresses
    are (model.normalize_domain: UTS #46, NFC), A-label and U-label (IDNA)."""
    forms = {name.lower()}
    with contextlib.suppress(AddressError):
        normal = normalize_domain(name)
        forms |= {normal, domain_a_label(normal)}
    with contextlib.suppress(UnicodeError):
        forms.add(name.encode("idna").decode("ascii").lower())
    if name.isascii():
        with contextlib.suppress(UnicodeError):
            forms.add(name.encode("ascii").decode("idna").lower())
    return forms


def _config_target(domain: str, what: str, text: str) -> AliasTarget:
    try:
        return parse_target(text)
    except AliasFileError as exc:
        raise ValueError(f"local domain {domain!r}: {what}: {exc}") from None


class RecipientResolver:
    """Resolves RCPT addresses of our local domains (rules in the module docstring).

    With `srs` (and its `clock`), an SRS address of a local domain is a bounce to mail one of
    our aliases forwarded: a valid, fresh one forwards to the original sender (or resolves
    again, when that is one of ours), any other is Unknown (directory/srs.py)."""

    def __init__(
        self,
        domains: Sequence[LocalDomain],
        users: UserDirectory,
        alias_file: AliasTable | None = None,
        delimiter: str = "+",
        postmaster: Address | None = None,
        srs: tuple[Srs, Clock] | None = None,
    ) -> None:
        self._users = users
        # Each answer depends on the configuration (fixed: a reload builds a new resolver),
        # the accounts and, for an SRS address, the clock. So the answers for other addresses
        # are kept while the users' generation stays the same: the second resolution of a
        # recipient (RCPT, then directory/known.py before its Maildir) and the next message's
        # are a lookup, and any change to the accounts is seen as the directory sees it.
        self._generation: Callable[[], object | None] | None = (
            users.generation if isinstance(users, Versioned) else None
        )
        self._kept_under: object | None = None
        self._kept: dict[tuple[Address, bool], Resolution] = {}
        self._postmaster: AliasTarget | None = postmaster
        self._srs = srs
        self._alias_file = alias_file or AliasTable({})
        self._delimiters = frozenset(delimiter)
        self._domains: dict[str, _Domain] = {}
        for config in domains:
            domain = self._compile(config)
            for form in _domain_forms(domain.name):
                if form in self._domains:
                    raise ValueError(f"local domain {config.name!r} is configured twice")
                self._domains[form] = domain
        for key in self._alias_file.entries:
            _, at, name = key.rpartition("@")
            if at and name not in self._domains:
                where = self._alias_file.origins.get(key, "aliases file")
                raise AliasFileError(f"{where}: alias {key!r}: {name} is not a local domain")

    @staticmethod
    def _compile(config: LocalDomain) -> _Domain:
        name = config.name.lower()
        catch_all = None
        if config.catch_all is not None:
            catch_all = _config_target(name, "catch_all", config.catch_all)
        aliases = {
            local.lower(): tuple(
                _config_target(name, f"alias {local!r}", target) for target in targets
            )
            for local, targets in config.aliases.items()
        }
        return _Domain(name, catch_all, config.accept_any, aliases)

    def is_local_domain(self, domain: str) -> bool:
        return domain.lower() in self._domains

    def resolve(self, address: Address, *, wildcards: bool = True) -> Resolution:
        """The RCPT-time answer for `address`. With `wildcards` off, catch-all, accept_any and
        the postmaster fallback are not used: what is left names the address's real owners
        (users, aliases, +tag forms), which is what sender-login binding needs."""
        token = self._generation() if self._generation is not None else None
        if token is None or (self._srs is not None and is_srs(address)):
            return self._resolve(address, wildcards)  # the SRS answer ages with the clock
        if token != self._kept_under:
            self._kept.clear()
            self._kept_under = token
        key = (address, wildcards)
        kept = self._kept.get(key)
        if kept is None:
            kept = self._resolve(address, wildcards)
            if len(self._kept) >= MAX_KEPT:
                self._kept.clear()
            self._kept[key] = kept
        return kept

    def _resolve(self, address: Address, wildcards: bool) -> Resolution:
        domain = self._domains.get(address.domain.lower())
        if domain is None:
            return NotLocal()
        if self._srs is not None and wildcards and is_srs(address):
            return self._reverse(address)
        local = address.local.lower()
        found = _Found()
        if not self._local_part(domain, local, 0, frozenset(), found, wildcards):
            return Unknown()
        # A target left out only because it was met again (a loop) is delivered through the
        # other path; only one that resolves to nothing on its own is a dead end.
        dead = tuple(
            target
            for target in found.unresolved
            if target != address and isinstance(self._resolve(target, wildcards), Unknown)
        )
        return Local(tuple(found.mailboxes), tuple(found.forwards), dead)

    def dead_alias_targets(self) -> list[tuple[Address, Address]]:
        """(alias, target) for every configured alias target that leads to no mailbox."""
        domains = {d.name: d for d in self._domains.values()}
        entries: list[tuple[Address, tuple[AliasTarget, ...]]] = []
        for domain in domains.values():
            entries += [(Address(local, domain.name), t) for local, t in domain.aliases.items()]
        for key, targets in self._alias_file.entries.items():
            local, at, name = key.rpartition("@")
            named = [name] if at else list(domains)
            entries += [(Address(local if at else key, n), targets) for n in named]
        dead: list[tuple[Address, Address]] = []
        for alias, targets in entries:
            for target in targets:
                address = target if isinstance(target, Address) else Address(target, alias.domain)
                if isinstance(self.resolve(address), Unknown):
                    dead.append((alias, address))
        return dead

    def _reverse(self, address: Address) -> Resolution:
        assert self._srs is not None
        srs, clock = self._srs
        sender = srs.reverse(address, clock.now())
        if sender is None:
            return Unknown()  # a forged or expired SRS address: 550 5.1.1
        if self.is_local_domain(sender.domain):
            return self._resolve(sender, True)  # SRS1 -> our own SRS0, or a sender of ours
        return Local((), (sender,))

    def owns(self, user: Address, address: Address) -> bool:
        """Whether the account `user` may use `address` as its own: the address itself, its
        +tag forms, or an alias that delivers to `user`'s mailbox (never a catch-all)."""
        mailbox = Address(user.local.lower(), user.domain.lower())
        resolution = self.resolve(address, wildcards=False)
        return isinstance(resolution, Local) and mailbox in resolution.mailboxes

    def _local_part(
        self,
        domain: _Domain,
        local: str,
        depth: int,
        path: frozenset[tuple[str, str]],
        found: _Found,
        wildcards: bool = True,
    ) -> bool:
        """Apply the rules to `local` (lower-case) in `domain`; True if anything was found."""
        key = (domain.name, local)
        if key in path or depth > MAX_DEPTH:
            return False  # a loop, or too deep
        if not is_safe_mailbox_name(local):
            return False  # never a directory name: no path traversal through a local part
        path = path | {key}
        mailbox = Address(local, domain.name)
        targets = domain.aliases.get(local)
        if targets is None:
            targets = self._alias_file.lookup(local, domain.name)
        if wildcards and self._plain_accept_any(domain, local, targets):
            # Rules 2 and 7 give this same mailbox and none between them applies: whether it
            # is an account does not change the answer, so the user store is not asked (on
            # PostgreSQL "no such account" is a round trip every time: model/notified.py).
            found.mailboxes[mailbox] = None
            return True
        if self._users.exists(mailbox):
            found.mailboxes[mailbox] = None
            return True
        if targets is not None and self._targets(
            domain, targets, depth + 1, path, found, wildcards
        ):
            return True
        base = self._without_tag(local)
        if base is not None and self._local_part(domain, base, depth + 1, path, found, wildcards):
            return True
        if not wildcards:
            return False
        if local in ROLE_NAMES and self._role(domain, local, depth, path, found):
            return True
        if domain.catch_all is not None and self._targets(
            domain, (domain.catch_all,), depth + 1, path, found
        ):
            return True
        if domain.accept_any or local == POSTMASTER:
            found.mailboxes[mailbox] = None
            return True
        return False

    def _plain_accept_any(
        self, domain: _Domain, local: str, targets: tuple[AliasTarget, ...] | None
    ) -> bool:
        """Whether `local` ends at rule 7 (accept_any) if it is not an account: no alias, no
        +tag, not a role name, no catch-all before it."""
        return (
            domain.accept_any
            and domain.catch_all is None
            and targets is None
            and local not in ROLE_NAMES
            and self._without_tag(local) is None
        )

    def _role(
        self,
        domain: _Domain,
        local: str,
        depth: int,
        path: frozenset[tuple[str, str]],
        found: _Found,
    ) -> bool:
        if self._postmaster is not None:
            return self._targets(domain, (self._postmaster,), depth + 1, path, found)
        if local == POSTMASTER:
            return False  # its own mailbox, below (after catch-all and accept_any)
        return self._local_part(domain, POSTMASTER, depth + 1, path, found)

    def _targets(
        self,
        domain: _Domain,
        targets: tuple[AliasTarget, ...],
        depth: int,
        path: frozenset[tuple[str, str]],
        found: _Found,
        wildcards: bool = True,
    ) -> bool:
        any_found = False
        for target in targets:
            if isinstance(target, str):
                ok = self._local_part(domain, target.lower(), depth, path, found, wildcards)
                address = Address(target, domain.name)
            else:
                address = target
                target_domain = self._domains.get(target.domain.lower())
                if target_domain is None:
                    found.forwards[target] = None
                    ok = True
                else:
                    ok = self._local_part(
                        target_domain, target.local.lower(), depth, path, found, wildcards
                    )
            if ok:
                any_found = True
            else:
                found.unresolved[address] = None
        return any_found

    def _without_tag(self, local: str) -> str | None:
        """``user`` for ``user+tag`` (first delimiter wins), or None."""
        if not self._delimiters:
            return None
        for i, ch in enumerate(local):
            if ch in self._delimiters:
                return local[:i] if i > 0 else None
        return None
