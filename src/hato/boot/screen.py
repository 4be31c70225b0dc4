"""The mx [screen] from the configuration (hato.server.screen): built for mx listeners only,
and only when a key of [screen] turns something on; its shared state (DATA_DIR/screen.db) is
opened the first time a configuration needs it, and kept across reloads."""

from __future__ import annotations

from typing import TYPE_CHECKING

from hato.model import Role
from hato.policy.greylist import SCREEN_DB, GreylistSettings, ScreenStore
from hato.policy.screen import DnsblSite
from hato.server.screen import Screen, ScreenRules

if TYPE_CHECKING:
    from hato.boot.shared import Shared
    from hato.config import Settings


def screen_rules(settings: Settings) -> ScreenRules:
    s = settings.screen
    greylist = (
        GreylistSettings(s.greylist_delay, s.greylist_retry_window, s.greylist_max_age)
        if s.greylist
        else None
    )
    return ScreenRules(
        sites=tuple(DnsblSite(site.zone, site.weight, site.pattern) for site in s.dnsbl_sites),
        threshold=s.dnsbl_threshold,
        allow=tuple(s.allow),
        pregreet_wait=s.pregreet_wait,
        pregreet_ttl=s.pregreet_ttl,
        connection_rate=s.connection_rate,
        greylist=greylist,
    )


def build_screen(settings: Settings, shared: Shared, role: Role) -> Screen | None:
    """The Screen of a listener with `role`: None for submission (an authenticated client is
    never screened) or when [screen] turns nothing on (then it costs nothing)."""
    if role is not Role.MX or not settings.screen.active:
        return None
    if shared.screen_store is None:
        shared.screen_store = ScreenStore(shared.clock, shared.data_dir / SCREEN_DB)
    return Screen(
        screen_rules(settings),
        shared.screen_store,
        shared.dns,
        shared.clock,
        settings.server.hostname,
        shared.metrics,
    )
