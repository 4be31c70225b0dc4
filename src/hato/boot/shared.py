"""What every listener of one process shares (part of the composition root): the long-lived
rooms that a reload keeps, and the resolver a reload swaps. Apart from boot/build.py so that
the builders of the pieces (boot/screen.py, ...) can name it without importing build.

May import every room.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from hato.accounts import UserStore
from hato.boot.filters import SpamFilters
from hato.crypto import KeyStore
from hato.directory.resolver import RecipientResolver, Resolution
from hato.directory.srs import Srs
from hato.dns import DnsPythonResolver
from hato.intake.context import IntakeContext
from hato.intake.finish import Door
from hato.model import Address, Clock, SystemClock
from hato.policy import AuthThrottle, SendLimiter
from hato.policy.greylist import ScreenStore
from hato.queue import QueueStore
from hato.reports import Recorder
from hato.server.auth import VerifySlots
from hato.server.clientsetup import Published
from hato.server.metrics import Metrics
from hato.server.tls import ReloadingContext


@dataclass(slots=True)
class Shared:
    """The long-lived pieces every listener shares; a reload (SIGHUP) keeps them."""

    clock: SystemClock
    data_dir: Path
    queue: QueueStore
    dns: DnsPythonResolver
    users: UserStore
    keys: KeyStore
    tls: ReloadingContext | None
    throttle: AuthThrottle
    limiter: SendLimiter
    verify_slots: VerifySlots
    resolver: CurrentResolver
    srs: tuple[Srs, Clock] | None = None  # [local] srs: the resolver's reversal (a restart key)
    filters: SpamFilters = field(default_factory=SpamFilters)  # rspamd clients ([rspamd])
    metrics: Metrics = field(default_factory=Metrics)
    screen_store: ScreenStore | None = None  # DATA_DIR/screen.db, once [screen] needs it
    # What the web endpoint serves for each domain (MTA-STS, autoconfig); a reload swaps it.
    published: Published = field(default_factory=Published)
    reports: Recorder | None = None  # [reports] enabled: DATA_DIR/reports.db (boot/reportwatch)
    # What the configuration in force cannot do (a DKIM key it cannot read, ...): logged when
    # found, shown by `hato status` until a reload or restart finds it fixed.
    problems: list[str] = field(default_factory=list)
    # The contexts of the doors without a listener (local submission, the notices) with their
    # door: a reload gives them their end-of-message rooms again (boot.build door_config).
    doors: list[tuple[IntakeContext, Door]] = field(default_factory=list)


class CurrentResolver:
    """The recipient resolver of the configuration in force; a reload swaps `current`, and
    every holder (sessions, the routing courier, local submission) sees the new one."""

    def __init__(self, current: RecipientResolver) -> None:
        self.current = current

    def resolve(self, address: Address, *, wildcards: bool = True) -> Resolution:
        return self.current.resolve(address, wildcards=wildcards)

    def owns(self, user: Address, address: Address) -> bool:
        return self.current.owns(user, address)

    def is_local_domain(self, domain: str) -> bool:
        return self.current.is_local_domain(domain)
