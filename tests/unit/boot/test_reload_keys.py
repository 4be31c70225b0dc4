"""boot.reload: which keys changed, and which of them a reload can apply (issue 13)."""

from __future__ import annotations

import dataclasses
from dataclasses import fields
from pathlib import Path
from types import SimpleNamespace
from typing import TYPE_CHECKING, cast

import pytest

from hato.boot.build import listener_config, send_limit_settings
from hato.boot.filters import SpamFilters
from hato.boot.reload import LIVE_KEYS, changed_keys, decide
from hato.config import Settings
from hato.model import Role
from hato.server.metrics import Metrics
from kit import config
from kit.clock import FakeClock

if TYPE_CHECKING:
    from hato.boot.shared import Shared
    from hato.config.sections import ListenerSettings

BASE = config.config_text(server='data_dir = "data"')


def _settings(extra: str = "", base: str = BASE) -> Settings:
    return config.parse(extra, Path("/srv"), base=base)


def test_nothing_changed() -> None:
    assert changed_keys(_settings(), _settings()) == []
    outcome = decide(_settings(), _settings(), "hato.toml")
    assert outcome.applied and outcome.changed == ()


def test_live_keys_are_applied_together() -> None:
    new = _settings(
        '\n[[transport]]\ndomain = "far.test"\nrelay = "127.0.0.1:2526"\n'
        '\n[[domain]]\nname = "new.test"\n\n[limits]\nmessages_per_hour = 5\n'
    )
    outcome = decide(_settings(), new, "hato.toml")
    assert outcome.applied
    assert set(outcome.changed) == {"transport", "domain", "limits.messages_per_hour"}


def test_one_restart_key_refuses_the_whole_file() -> None:
    new = _settings('\n[[domain]]\nname = "new.test"\n\n[limits]\nmax_message_size = "2M"\n')
    outcome = decide(_settings(), new, "hato.toml")
    assert not outcome.applied
    assert outcome.restart == ("limits.max_message_size",)
    assert "domain" in outcome.changed


def test_restart_keys_are_named_by_their_toml_path() -> None:
    moved = BASE.replace("127.0.0.1:2525", "127.0.0.1:2527").replace('"data"', '"other"')
    outcome = decide(_settings(), _settings(base=moved), "hato.toml")
    assert set(outcome.restart) == {"listener", "server.data_dir"}


def test_renaming_the_first_domain_needs_a_restart() -> None:
    renamed = BASE.replace('name = "example.org"', 'name = "example.net"')
    outcome = decide(_settings(), _settings(base=renamed), "hato.toml")
    assert outcome.restart == ("domain[0].name",)


def _what_is_taken(settings: Settings, tmp_path: Path) -> list[object]:
    """What a reload hands on of the per-listener keys: each listener's `ListenerConfig` (its
    values that compare by value) and the send limiter's settings."""
    shared = cast(
        "Shared",
        SimpleNamespace(
            tls=None,
            dns=None,
            resolver=None,  # the address book: only held (own_domains), not asked here
            clock=FakeClock(),
            data_dir=tmp_path,
            reports=None,
            filters=SpamFilters(),
            screen_store=None,
            metrics=Metrics(),
        ),
    )
    taken: list[object] = [send_limit_settings(settings)]
    for role in Role:
        listener = _as_role(settings.listeners[0], role)
        config = listener_config(settings, shared, listener, [])
        taken += [
            (f.name, getattr(config, f.name))
            for f in fields(config)
            if _by_value(getattr(config, f.name))
        ]
    return taken


def _by_value(value: object) -> bool:
    """A value that compares by value (not a room such as the inbound checker)."""
    equal: object = type(value).__eq__
    return equal is not object.__eq__


def _as_role(listener: ListenerSettings, role: Role) -> ListenerSettings:
    return listener.model_copy(update={"role": role})


def _another(value: object) -> object:
    if isinstance(value, bool):
        return not value
    if isinstance(value, int | float):
        return value + 1
    if isinstance(value, tuple):
        return value[:-1] if len(value) > 1 else ("PLAIN", "LOGIN")
    raise AssertionError(f"no other value for {value!r}: teach _another")


@pytest.mark.parametrize(
    "key", sorted(key for key in LIVE_KEYS if key.split(".")[0] in ("limits", "auth"))
)
def test_every_live_key_of_limits_and_auth_is_taken_by_a_reload(key: str, tmp_path: Path) -> None:
    # A key said to be live that nothing hands on would be "reloaded" and not in force.
    old = _settings()
    section_name, name = key.split(".")
    section = getattr(old, section_name)
    changed = section.model_copy(update={name: _another(getattr(section, name))})
    new = dataclasses.replace(old, **{section_name: changed})
    assert changed_keys(old, new) == [key]
    assert _what_is_taken(old, tmp_path) != _what_is_taken(new, tmp_path)
