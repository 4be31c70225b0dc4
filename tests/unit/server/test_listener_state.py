"""Connection accounting of a listener (server/context.py ListenerState)."""

from __future__ import annotations

from typing import TYPE_CHECKING, cast

from hato.server.context import ListenerState

if TYPE_CHECKING:
    from hato.server.session import SmtpSession


def _session(n: int) -> SmtpSession:
    return cast("SmtpSession", object.__new__(type(f"S{n}", (), {})))


def test_ipv6_clients_count_by_their_64_and_reservations_count_too() -> None:
    state = ListenerState("submissions@[::]:465", max_connections=10, max_per_ip=2)
    state.reserve("2001:db8:1:2::1")  # a TLS handshake in progress
    state.enter(_session(1), "2001:db8:1:2:ffff::9")  # another address of the same /64
    assert not state.admit("2001:db8:1:2::77")
    assert state.admit("2001:db8:1:3::1") and state.admit("192.0.2.1")
    state.release("2001:db8:1:2::1")
    assert state.admit("2001:db8:1:2::77")
    assert state.active == 1 and state.per_ip == {"2001:db8:1:2::/64": 1}


def test_the_listener_total_includes_handshakes() -> None:
    state = ListenerState("submissions@0.0.0.0:465", max_connections=2, max_per_ip=5)
    state.reserve("192.0.2.1")
    state.reserve("192.0.2.2")
    assert not state.admit("192.0.2.3")
    state.release("192.0.2.1")
    assert state.admit("192.0.2.3")
    assert state.empty.is_set()  # handshakes are no sessions: a stop does not wait for them
