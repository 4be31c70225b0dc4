"""[rspamd]: absent means no check; what a valid section gives; a wrong key says the fix."""

from __future__ import annotations

from pathlib import Path

import pytest

from hato.boot.filters import SpamFilters
from hato.config import ConfigError
from hato.config.filter_sections import RspamdFailure, SpamResponse
from hato.filters import RspamdAction
from hato.intake.spamcheck import OnFailure, Response
from hato.model import Role
from kit.config import parse


def test_no_section_no_check(tmp_path: Path) -> None:
    settings = parse("", tmp_path)
    assert settings.rspamd is None
    assert SpamFilters().for_role(settings, Role.MX) is None


def test_a_section_with_its_defaults_checks_mx_only(tmp_path: Path) -> None:
    settings = parse('[rspamd]\nadd_header = "inbox"\non_failure = "accept"\n', tmp_path)
    section = settings.rspamd
    assert section is not None
    assert section.url == "http://127.0.0.1:11333" and section.timeout == 15.0
    assert section.on_failure is RspamdFailure.ACCEPT
    assert section.add_header is SpamResponse.INBOX
    filters = SpamFilters()
    spam = filters.for_role(settings, Role.MX)
    assert spam is not None and spam.on_failure is OnFailure.ACCEPT
    assert spam.responses[RspamdAction.ADD_HEADER] is Response.INBOX
    assert spam.responses[RspamdAction.REJECT] is Response.REJECT
    assert filters.for_role(settings, Role.SUBMISSION) is None
    # One client (one connection pool) per rspamd, whatever the listeners.
    again = filters.for_role(settings, Role.MX)
    assert again is not None and again.client is spam.client


def test_the_normal_worker_on_a_unix_socket(tmp_path: Path) -> None:
    settings = parse('[rspamd]\nurl = "unix:/run/rspamd/normal.sock"\n', tmp_path)
    assert settings.rspamd is not None
    assert settings.rspamd.url == "unix:/run/rspamd/normal.sock"
    spam = SpamFilters().for_role(settings, Role.MX)
    assert spam is not None and spam.client._endpoint.socket == "/run/rspamd/normal.sock"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ('url = "https://127.0.0.1:11333"', 'rspamd.url: "https://127.0.0.1:11333" is not an'),
        ('url = "http://127.0.0.1"', "rspamd.url:"),
        ('url = "unix:run/rspamd.sock"', 'rspamd.url: "unix:run/rspamd.sock": a unix socket needs'),
        ('roles = ["smtp"]', 'rspamd.roles: "smtp" is not a role'),
        ('on_failure = "drop"', "rspamd.on_failure:"),
        ('reject = "discard"', "rspamd.reject:"),
        ("bogus = 1", "rspamd.bogus:"),
    ],
)
def test_a_wrong_key_is_named_with_its_fix(tmp_path: Path, text: str, expected: str) -> None:
    with pytest.raises(ConfigError) as caught:
        parse(f"[rspamd]\n{text}\n", tmp_path)
    assert any(p.startswith(expected) for p in caught.value.problems), caught.value.problems
