"""policy/admin.py: what `hato user blocked|unblock|held|release` do, on the in-memory
throttle of one process (the server runs them when asked on its control socket)."""

from __future__ import annotations

import pytest

from hato.policy.admin import NotAClient, PolicyAdmin, blocked_key
from hato.policy.authlimit import AuthThrottle, AuthThrottleSettings
from kit.clock import FakeClock


@pytest.mark.parametrize(
    ("given", "key"),
    [
        ("192.0.2.7", "192.0.2.7"),
        (" 192.0.2.7 ", "192.0.2.7"),
        ("::ffff:192.0.2.7", "192.0.2.7"),
        ("2001:db8:1:2::99", "2001:db8:1:2::/64"),
        ("[2001:db8:1:2::99]", "2001:db8:1:2::/64"),
        ("2001:db8:1:2::/64", "2001:db8:1:2::/64"),
    ],
)
def test_a_client_is_named_as_the_throttle_counts_it(given: str, key: str) -> None:
    assert blocked_key(given) == key


@pytest.mark.parametrize("given", ["bob@example.org", "192.0.2.0/24", "2001:db8::/48", ""])
def test_anything_else_is_refused(given: str) -> None:
    with pytest.raises(NotAClient):
        blocked_key(given)


def test_blocks_are_listed_on_the_wall_clock_and_one_is_lifted_with_one_log_line() -> None:
    clock = FakeClock(1_800_000_000.0, 50.0)  # the memory throttle counts on the monotonic one
    throttle = AuthThrottle(clock, AuthThrottleSettings(max_failures=2, block_time=600))
    lines: list[str] = []
    admin = PolicyAdmin(throttle, None, lines.append)
    for ip in ("192.0.2.7", "192.0.2.7", "2001:db8:1:2::5", "2001:db8:1:2::6"):
        throttle.record_failure(ip, "bob@example.org")
    assert admin.blocks() == [
        ("192.0.2.7", 1_800_000_600.0),
        ("2001:db8:1:2::/64", 1_800_000_600.0),
    ]
    assert admin.unblock("192.0.2.8") is None and lines == []  # not blocked: nothing logged
    assert admin.unblock("2001:db8:1:2::/64") == "2001:db8:1:2::/64"
    assert lines == ["event=admin-unblock client=2001:db8:1:2::/64"]
    assert not throttle.blocked("2001:db8:1:2::77")
    assert not throttle.record_failure("2001:db8:1:2::5", None).blocked  # its count starts anew
    clock.advance(600)
    assert admin.blocks() == []  # ended


def test_without_a_limiter_nobody_is_held() -> None:
    admin = PolicyAdmin(None, None, pytest.fail)
    assert (admin.holds(), admin.release("bob@example.org"), admin.blocks()) == ([], False, [])
