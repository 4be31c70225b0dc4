"""Building the rooms from the settings: what each listener's sessions get, the resolver, the
TLS context, and what the running server shares (part of the composition root).

Everything here is a function of the settings (and the long-lived pieces in `Shared`), so the
same code builds the first configuration and every reload of it (boot.reload).

May import every room.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from hato.accounts import UserStore
from hato.boot.dbcache import CachedUsers
from hato.boot.filters import milters_for_role
from hato.boot.process import EX_CANTCREAT, EX_CONFIG, StartupError
from hato.boot.screen import build_screen
from hato.boot.shared import CurrentResolver, Shared
from hato.boot.stampwatch import process_watch
from hato.delivery.owner import OwnerError, resolve_owner
from hato.directory.resolver import AliasTable, LocalDomain, RecipientResolver
from hato.directory.srs import Srs, load_key
from hato.intake.context import DoorConfig, IntakeContext
from hato.intake.finish import Door
from hato.intake.inbound import Enforcement, InboundChecker
from hato.intake.signing import OutboundSigner, load_sealers, load_signers
from hato.model import (
    Address,
    Clock,
    Role,
    UserDirectory,
    logfmt,
)
from hato.policy import (
    AuthThrottleSettings,
    ClientNetwork,
    DisplayNameAction,
    ListenerNetworkRules,
    NetworkTable,
    OwnDomainAction,
    OwnDomains,
    SendLimitSettings,
)
from hato.server.context import ListenerConfig
from hato.server.httpguard import HttpLimits
from hato.server.privileges import acting_as_owner, give_to
from hato.server.tls import (
    ReloadingContext,
    TLSConfigError,
    ensure_self_signed,
    self_signed_files,
)
from hato.smtp import ServerSettings

if TYPE_CHECKING:
    from hato.config import Settings
    from hato.config.ops_sections import HttpLimitSettings
    from hato.config.sections import ListenerSettings

log = logging.getLogger("hato")


def server_settings(settings: Settings, role: Role, tls: bool) -> ServerSettings:
    """What the core of a listener of this role offers and enforces."""
    limits = settings.limits
    submission = role is not Role.MX
    return ServerSettings(
        hostname=settings.server.hostname,
        max_message_size=limits.max_message_size,
        max_recipients=limits.max_recipients,
        max_bad_commands=limits.max_bad_commands,
        max_refused_recipients=limits.max_refused_recipients,
        max_junk_commands=limits.max_junk_commands,
        max_text_line=limits.max_text_line,
        # RFC 3207 on mx when a certificate is configured; always on port 587.
        offer_starttls=tls and role is not Role.SUBMISSIONS,
        # RFC 4954 / RFC 6409: AUTH only on submission roles (never on mx), only after TLS.
        auth_mechanisms=tuple(settings.auth.mechanisms) if submission else (),
        require_auth=submission,  # RFC 6409 §4.3 / RFC 4954 §6: 530 5.7.0 before AUTH
        require_tls=role is Role.SUBMISSION,  # RFC 3207 §4: 530 5.7.0 before STARTTLS
        dsn=True,  # RFC 3461: NOTIFY/ORCPT/RET/ENVID are kept and honoured
    )


def auth_throttle_settings(settings: Settings) -> AuthThrottleSettings:
    a = settings.auth
    return AuthThrottleSettings(
        failure_delay=a.failure_delay,
        max_failure_delay=a.max_failure_delay,
        max_failures=a.max_failures,
        max_account_failures=a.max_account_failures,
        failure_window=a.failure_window,
        block_time=a.block_time,
    )


def send_limit_settings(settings: Settings) -> SendLimitSettings:
    limits = settings.limits
    return SendLimitSettings(
        messages_per_hour=limits.messages_per_hour,
        recipients_per_hour=limits.recipients_per_hour,
        spike_recipients=limits.spike_recipients,
        spike_window=limits.spike_window,
        spike_hold=limits.spike_hold,
        hold_time=limits.hold_time,
    )


def send_as_grants(settings: Settings) -> dict[Address, frozenset[Address]]:
    """[[domain]] send_as: the extra sender addresses of each account, lower-case."""
    grants: dict[Address, set[Address]] = {}
    for domain in settings.domains:
        for local, targets in domain.send_as.items():
            user = Address(local.lower(), domain.name.lower())
            grants.setdefault(user, set()).update(
                Address(t.local.lower(), t.domain.lower()) for t in targets
            )
    return {user: frozenset(addresses) for user, addresses in grants.items()}


def build_tls(settings: Settings, data_dir: Path) -> ReloadingContext | None:
    """The configured certificate, or a self-signed one when a submission listener needs TLS
    and none is configured (the embedded default)."""
    try:
        if settings.tls is not None and settings.tls.acme is not None:
            from hato.boot.acme import placeholder  # the ACME client only when configured

            files = placeholder(data_dir, settings.server.hostname)
            return ReloadingContext.load(files.cert, files.key)
        if settings.tls is not None:
            assert settings.tls.cert is not None and settings.tls.key is not None  # sections.py
            return ReloadingContext.load(settings.tls.cert, settings.tls.key)
        if all(listener.role is Role.MX for listener in settings.listeners):
            return None
        tls = data_dir / "tls"
        # Root's from an older version: the user's first. Then made as that user (root, but
        # never writing through a link the user planted).
        _give_to_data_dir_owner(data_dir, (tls, *self_signed_files(tls)))
        with acting_as_owner(data_dir):
            cert, key = ensure_self_signed(tls, settings.server.hostname)
        log.warning(
            logfmt(
                "tls-self-signed",
                cert=cert,
                detail="no [tls] configured: using a self-signed certificate",
            )
        )
        return ReloadingContext.load(cert, key)
    except TLSConfigError as exc:
        raise StartupError(str(exc), EX_CONFIG) from exc


def _give_to_data_dir_owner(data_dir: Path, paths: Sequence[Path]) -> None:
    """Made by root before the privilege drop, but the server's (the data directory's owner):
    else the drop's check finds them, or a later renewal cannot write them (issue 13)."""
    if os.geteuid() != 0:
        return
    owner = data_dir.stat()
    if owner.st_uid == 0:
        return
    for path in paths:
        give_to(path, owner.st_uid, owner.st_gid)  # not through a link the user planted


def http_limits(section: HttpLimitSettings) -> HttpLimits:
    """[metrics] or [wkd]: the limits of that HTTP endpoint."""
    return HttpLimits(
        max_connections=section.max_connections,
        max_per_ip=section.max_connections_per_ip,
        header_timeout=float(section.header_timeout),
    )


def mailbox_owner(settings: Settings) -> tuple[int, int] | None:
    """[local] mailbox_owner as (uid, gid), checked usable now (after the privilege drop)."""
    if settings.local.mailbox_owner is None:
        return None
    try:
        owner = resolve_owner(settings.local.mailbox_owner, settings.mailboxes)
    except OwnerError as exc:
        raise StartupError(str(exc), EX_CONFIG) from exc
    return owner.uid, owner.gid


def build_srs(settings: Settings, clock: Clock) -> tuple[Srs, Clock] | None:
    """SRS for our aliases' forwards ([local] srs), with the data directory's key."""
    if not settings.local.srs:
        return None
    try:
        key = load_key(Path(settings.server.data_dir))
    except (OSError, ValueError) as exc:
        raise StartupError(
            f"local.srs: cannot read or make the SRS key: {exc}", EX_CANTCREAT
        ) from exc
    return Srs(key, max_age=settings.local.srs_max_age), clock


def build_resolver(
    settings: Settings,
    users: UserStore | UserDirectory,
    srs: tuple[Srs, Clock] | None = None,
) -> RecipientResolver:
    """The RCPT-time resolver; a UserStore's answers are cached until users.db changes."""
    domains = [
        LocalDomain(
            name=d.name,
            catch_all=str(d.catch_all) if d.catch_all else None,
            accept_any=d.accept_any,
            aliases={k: tuple(str(t) for t in v) for k, v in d.aliases.items()},
        )
        for d in settings.domains
    ]
    aliases = AliasTable.load(settings.local.aliases_file) if settings.local.aliases_file else None
    return RecipientResolver(
        domains,
        (
            CachedUsers(users, users.cache_stamp, process_watch())
            if isinstance(users, UserStore) and users.cache_stamp is not None
            else users
        ),
        alias_file=aliases,
        delimiter=settings.local.recipient_delimiter,
        postmaster=settings.local.postmaster,
        srs=srs,
    )


def listener_config(
    settings: Settings, shared: Shared, listener: ListenerSettings, problems: list[str]
) -> ListenerConfig:
    """Everything in a listener's SessionContext that the configuration decides; what it
    cannot do is added to `problems` (once, however many listeners ask)."""
    role = listener.role
    check = settings.authcheck
    authserv_id = check.authserv_id or settings.server.hostname
    inbound = None
    if check.inbound and role is Role.MX:
        inbound = InboundChecker(
            shared.dns,
            authserv_id=authserv_id,
            clock=shared.clock,
            enforcement=Enforcement(check.dmarc.value),
            budget=check.budget,
            recorder=shared.reports,
            own=own_domains(settings),
            is_own=_own_domain_test(shared.resolver, settings.server.hostname),
        )
    selectors = {d.name: d.dkim_selector for d in settings.domains}
    found: list[str] = []
    signers = (
        load_signers(shared.data_dir / "dkim", selectors, shared.clock, found) if check.sign else {}
    )
    problems.extend(p for p in found if p not in problems)
    return ListenerConfig(
        settings=server_settings(settings, role, shared.tls is not None),
        idle_timeout=float(settings.limits.idle_timeout),
        hop_limit=settings.limits.hopcount_limit,
        max_header_fields=settings.limits.max_header_fields,
        session_timeout=float(settings.limits.session_timeout),
        tls_handshake_timeout=float(settings.limits.tls_handshake_timeout),
        postmaster_domain=settings.domains[0].name,
        network_rules=ListenerNetworkRules(
            tuple(listener.refuse_networks), tuple(listener.allow_networks)
        ),
        networks=NetworkTable.of(
            ClientNetwork(n.name, tuple(n.cidrs), n.dnsbl) for n in settings.networks
        ),
        send_as=send_as_grants(settings),
        inbound=inbound,
        authserv_id=authserv_id,
        signer=OutboundSigner(signers) if role is not Role.MX else None,
        sealers=load_sealers(signers, authserv_id, shared.clock) if role is Role.MX else {},
        spam=shared.filters.for_role(settings, role),
        screen=build_screen(settings, shared, role),
        milters=milters_for_role(settings, role, shared.filters.milter_metrics),
    )


def own_domains(settings: Settings) -> OwnDomains:
    """[authcheck] own_domains and its exceptions (policy/ownfrom.py)."""
    check = settings.authcheck
    return OwnDomains(
        OwnDomainAction(check.own_domains.value),
        tuple(check.own_domains_relays),
        frozenset(d.rstrip(".").lower() for d in check.own_domains_arc_sealers),
        DisplayNameAction(check.own_domains_display_names.value),
    )


def _own_domain_test(resolver: CurrentResolver, hostname: str) -> Callable[[str], bool]:
    """Which From domains are ours: the local domains of the configuration in force, and our
    hostname (the From of our own DSNs, MAILER-DAEMON@hostname)."""
    host = hostname.rstrip(".").lower()
    return lambda domain: domain == host or resolver.is_local_domain(domain)


def door_config(settings: Settings, shared: Shared, door: Door) -> DoorConfig:
    """The end-of-message rooms (intake/finish.py) of a door without a listener: local
    submission has the submission role's (the DKIM keys with [authcheck] sign, its rspamd and
    milters); a notice the DKIM keys only (our hostname's domain signs it)."""
    selectors = {d.name: d.dkim_selector for d in settings.domains}
    sign = settings.authcheck.sign
    signers = load_signers(shared.data_dir / "dkim", selectors, shared.clock) if sign else {}
    signer = OutboundSigner(signers) if signers else None
    fields = settings.limits.max_header_fields
    if door is not Door.LOCAL:
        return DoorConfig(signer, max_header_fields=fields)
    return DoorConfig(
        signer,
        spam=shared.filters.for_role(settings, Role.SUBMISSION),
        milters=milters_for_role(settings, Role.SUBMISSION, shared.filters.milter_metrics),
        max_header_fields=fields,
    )


def open_door(settings: Settings, shared: Shared, ctx: IntakeContext, door: Door) -> None:
    """Give a door's context its end-of-message rooms, and to every reload after."""
    ctx.configure_door(door_config(settings, shared, door))
    shared.doors.append((ctx, door))
