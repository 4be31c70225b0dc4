"""boot.reload: which keys changed, and which of them a reload can apply (issue 13)."""

from __future__ import annotations

from pathlib import Path

from hato.boot.reload import changed_keys, decide
from hato.config import Settings
from kit import config

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
