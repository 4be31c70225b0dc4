"""[[milter]] settings: Postfix's address forms, roles, timeouts and default_action; a wrong
value is one line naming the fix."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from hato.config.filter_sections import MilterDefault, MilterSettings
from hato.model import Role


@pytest.mark.parametrize(
    "address", ["inet:127.0.0.1:8891", "inet:[::1]:8891", "inet6:[::1]:1", "unix:/run/x.sock"]
)
def test_addresses(address: str) -> None:
    assert MilterSettings.model_validate({"address": address}).address == address


@pytest.mark.parametrize(
    "address", ["tcp:127.0.0.1:8891", "inet:127.0.0.1", "inet:h:0", "unix:relative", 8891]
)
def test_bad_addresses_name_the_form(address: object) -> None:
    with pytest.raises(ValidationError, match=r'e\.g\. "inet:127\.0\.0\.1:8891"'):
        MilterSettings.model_validate({"address": address})


def test_defaults_are_postfixs() -> None:
    milter = MilterSettings.model_validate(
        {"address": "inet:127.0.0.1:8891", "eom_timeout": 120, "roles": ["submission"]}
    )
    assert milter.default_action is MilterDefault.TEMPFAIL
    assert (milter.connect_timeout, milter.command_timeout, milter.eom_timeout) == (30, 30, 120)
    assert milter.roles == (Role.SUBMISSION,)
