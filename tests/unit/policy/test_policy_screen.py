"""The mx screen's decisions: weighted DNSBL/DNSWL scores (Postfix's site syntax), client
keys, the connection rate and greylisting on a clock the test moves."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from dnsserver import FakeResolver
from hato.config.screen_sections import ScreenSettings, parse_dnsbl_site
from hato.model.dns import RdType
from hato.policy.decision import Accept, Defer, Reject
from hato.policy.greylist import GreylistSettings, ScreenStore
from hato.policy.screen import (
    RATE_EXCEEDED,
    DnsblSite,
    client_key,
    dnsbl_decision,
    dnsbl_score,
)
from kit.clock import T0, FakeClock


def site(text: str) -> DnsblSite:
    spec = parse_dnsbl_site(text)
    return DnsblSite(spec.zone, spec.weight, spec.pattern)


ZEN = site("zen.example=127.0.0.[2..11]*3")
DNSWL = site("wl.example=127.0.[0..255].[1..3]*-2")
PLAIN = site("plain.example")


def resolver(**answers: list[str]) -> FakeResolver:
    """answers: zone label ('zen', 'wl', 'plain') -> the A records for 192.0.2.1."""
    return FakeResolver(
        {(f"1.2.0.192.{zone}.example", RdType.A): codes for zone, codes in answers.items()}
    )


def score(dns: FakeResolver, *sites: DnsblSite) -> tuple[int, tuple[str, ...], tuple[str, ...]]:
    s = asyncio.run(dnsbl_score("192.0.2.1", sites or (ZEN, DNSWL, PLAIN), dns))
    return s.total, s.listed, s.allowed


def test_weights_add_up_and_patterns_filter_answers() -> None:
    assert score(resolver(zen=["127.0.0.2"])) == (3, ("zen.example",), ())
    assert score(resolver(zen=["127.0.0.2"], wl=["127.0.15.2"])) == (
        1,
        ("zen.example",),
        ("wl.example",),
    )
    # 127.0.0.12 is outside [2..11]; 127.0.15.0 outside [1..3]: neither counts.
    assert score(resolver(zen=["127.0.0.12"], wl=["127.0.15.0"])) == (0, (), ())
    # Without a pattern any 127.0.0.0/8 answer counts, with weight 1.
    assert score(resolver(plain=["127.0.0.9"])) == (1, ("plain.example",), ())
    # One answer among several matching is enough.
    assert score(resolver(zen=["127.0.0.200", "127.0.0.4"]))[0] == 3


def test_each_zone_is_asked_once_even_when_listed_twice() -> None:
    dns = resolver(zen=["127.0.0.10"])
    twice = (ZEN, site("zen.example=127.0.0.10*2"))
    assert score(dns, *twice) == (5, ("zen.example",), ())
    assert dns.asked == [("1.2.0.192.zen.example", RdType.A)]


def test_a_list_that_cannot_be_asked_counts_as_not_listed() -> None:
    dns = resolver(plain=["127.0.0.2"])
    dns.tempfail.add("zen.example")
    result = asyncio.run(dnsbl_score("192.0.2.1", (ZEN, PLAIN), dns))
    assert (result.total, [zone for zone, _ in result.unknown]) == (1, ["zen.example"])


def test_decision_names_the_lists_at_the_threshold() -> None:
    listed = asyncio.run(
        dnsbl_score("192.0.2.1", (ZEN, PLAIN), resolver(zen=["127.0.0.2"], plain=["127.0.0.2"]))
    )
    decision = dnsbl_decision("192.0.2.1", listed, threshold=4)
    assert isinstance(decision, Reject)
    assert (decision.reply.code, decision.reply.enhanced) == (554, "5.7.1")
    assert decision.reply.text.endswith(
        "client [192.0.2.1] blocked using zen.example, plain.example"
    )
    assert dnsbl_decision("192.0.2.1", listed, threshold=5) == Accept()


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("zen.example=127.0.0*3", "4 octets"),
        ("zen.example=127.0.0.[11..2]", "reversed"),
        ("zen.example=127.0.0.256", "outside 0..255"),
        ("zen.example*0", "weight of 0"),
        ("zen.example*x", "ZONE[=PATTERN][*WEIGHT]"),
    ],
)
def test_bad_sites_are_named(text: str, problem: str) -> None:
    with pytest.raises(ValueError, match=problem.replace("[", r"\[").replace("*", r"\*")):
        parse_dnsbl_site(text)


def test_postfix_lists_of_octets() -> None:
    spec = parse_dnsbl_site("bl.example=127.0.0.[2;4..5]")
    assert spec.pattern is not None and spec.pattern[3] == ((2, 2), (4, 5))


def test_screen_is_off_without_its_keys() -> None:
    assert not ScreenSettings.model_validate({}).active
    assert not ScreenSettings.model_validate({"allow": ["192.0.2.0/24"]}).active
    assert ScreenSettings.model_validate({"greylist": True}).active


def test_client_keys() -> None:
    assert client_key("192.0.2.7") == "192.0.2.7/32"
    assert client_key("::ffff:192.0.2.7") == "192.0.2.7/32"
    assert client_key("192.0.2.7", ipv4_prefix=24) == "192.0.2.0/24"
    # RFC 4291 §2.5.1: one /64 is one client.
    assert client_key("2001:db8:1:2:aaaa::1") == client_key("2001:db8:1:2:bbbb::9")
    assert client_key("2001:db8:1:2::1") != client_key("2001:db8:1:3::1")


def test_connection_rate_counts_a_minute_from_the_first_connection() -> None:
    clock = FakeClock(T0, T0)
    store = ScreenStore(clock, None)
    assert [store.connection("a", 2) for _ in range(2)] == [Accept(), Accept()]
    assert store.connection("a", 2) == Defer(RATE_EXCEEDED)
    assert store.connection("b", 2) == Accept()
    clock.advance(59.9)
    assert store.connection("a", 2) == Defer(RATE_EXCEEDED)
    clock.advance(0.1)  # the minute since the first connection is over
    assert store.connection("a", 2) == Accept()


def test_greylist_delay_retry_window_and_max_age(tmp_path: Path) -> None:
    clock = FakeClock(T0, T0)
    settings = GreylistSettings(delay=300, retry_window=3600, max_age=86_400)
    store = ScreenStore(clock, tmp_path / "screen.db")

    def ask(rcpt: str = "Bob@Example.org") -> bool:
        decision = store.greylist("192.0.2.0/24", "a@sender.example", rcpt, settings)
        return isinstance(decision, Accept)

    first = store.greylist("192.0.2.0/24", "a@sender.example", "bob@example.org", settings)
    assert isinstance(first, Defer) and first.reply.code == 451
    assert first.reply.text == "Greylisted: please try again in 300 seconds"
    clock.advance(299)
    assert not ask()
    clock.advance(1)
    assert ask()  # after the delay (the recipient's case does not matter)
    clock.advance(80_000)
    assert ask()  # known, and seen again: remembered from now on
    clock.advance(86_401)
    assert not ask()  # unseen for longer than max_age: a new triplet again
    # A retry later than delay + retry_window starts over.
    assert not ask("carol@example.org")
    clock.advance(300 + 3601)
    assert not ask("carol@example.org")
    clock.advance(300)
    assert ask("carol@example.org")
    # Another process (a sibling worker) sees the same triplets.
    sibling = ScreenStore(clock, tmp_path / "screen.db")
    assert isinstance(
        sibling.greylist("192.0.2.0/24", "a@sender.example", "carol@example.org", settings), Accept
    )


def test_greylist_delay_zero_passes_the_first_retry() -> None:
    store = ScreenStore(FakeClock(T0, T0), None)
    settings = GreylistSettings(delay=0)
    assert isinstance(store.greylist("n", "s", "r", settings), Defer)
    assert store.greylist("n", "s", "r", settings) == Accept()


def test_a_client_that_waited_is_remembered_for_the_ttl() -> None:
    clock = FakeClock(T0, T0)
    store = ScreenStore(clock, None)
    assert not store.passed("192.0.2.7/32")
    store.remember_pass("192.0.2.7/32", 60)
    assert store.passed("192.0.2.7/32") and not store.passed("192.0.2.8/32")
    clock.advance(60)
    assert not store.passed("192.0.2.7/32")
