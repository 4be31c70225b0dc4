"""The outbound courier with a fake driver and a fake resolver: routing, transports, loops."""

from __future__ import annotations

import asyncio
import random
from dataclasses import replace

from outbound_fakes import FakeNet, Peer

from dnsserver import FakeResolver, FakeValue
from hato.delivery.mx import RelayTarget
from hato.delivery.outbound import ATTEMPT_TIMEOUT, OutboundCourier
from hato.delivery.smtp_client import DeliveryError, TlsMode
from hato.delivery.transport import OutboundSettings, Smarthost, Transport, TransportKind
from hato.model import (
    Address,
    Delivered,
    Handoff,
    Outcome,
    PermFailed,
    QueuedMessage,
    QueuedRecipient,
    Reply,
    TempFailed,
)
from hato.model.dns import DnsStatus, MxRecord, RdType
from kit.clock import FakeClock

SETTINGS = OutboundSettings(helo_name="mail.us.test")
MESSAGE = QueuedMessage("Q1", Address("alice", "us.test"), 0.0, "", 5, body=b"Hi\r\n")
DNS: dict[tuple[str, RdType], FakeValue] = {
    ("example.com", RdType.MX): [MxRecord(10, "mx1.example.com"), MxRecord(20, "mx2.example.com")],
    ("mx1.example.com", RdType.A): ["192.0.2.1"],
    ("mx2.example.com", RdType.A): ["192.0.2.2"],
    ("mx2.example.com", RdType.AAAA): ["2001:db8::2"],
}


def rcpts(*texts: str) -> list[QueuedRecipient]:
    return [QueuedRecipient(i, Address.parse(t), Address.parse(t)) for i, t in enumerate(texts)]


def courier(
    net: FakeNet,
    dns: dict[tuple[str, RdType], FakeValue] | None = None,
    settings: OutboundSettings = SETTINGS,
    **kwargs: object,
) -> OutboundCourier:
    resolver = FakeResolver(dns if dns is not None else DNS)
    return OutboundCourier(
        settings,
        resolver,
        clock=FakeClock(1000.0, 1000.0),
        rng=random.Random(1),
        opener=net.open,
        **kwargs,  # type: ignore[arg-type]
    )


def deliver(c: OutboundCourier, *texts: str, message: QueuedMessage = MESSAGE) -> list[Outcome]:
    return asyncio.run(c.deliver(message, rcpts(*texts)))


def reply_of(outcome: Outcome) -> Reply:
    assert isinstance(outcome, TempFailed | PermFailed), outcome
    return outcome.reply


def test_mx_hosts_in_order_ipv6_first_next_one_when_refused() -> None:
    net = FakeNet({"192.0.2.2": Peer()})
    outcomes = deliver(courier(net), "bob@example.com")
    assert outcomes == [Delivered("250 ok", Handoff.RELAYED)]
    assert [o.host for o in net.opened] == ["192.0.2.1", "2001:db8::2", "192.0.2.2"]
    assert {o.port for o in net.opened} == {25}
    assert net.opened[0].server_name == "mx1.example.com"
    assert net.opened[0].tls_mode is TlsMode.OPPORTUNISTIC  # RFC 3207 by default
    assert net.bodies == [b"Hi\r\n"]


def test_4xx_tries_next_mx_5xx_is_final() -> None:
    temp = TempFailed(Reply(450, "4.2.0", "greylisted"))
    perm = PermFailed(Reply(550, "5.1.1", "no such user"))
    net = FakeNet({"192.0.2.1": Peer(rcpt={"grey": temp, "gone": perm}), "192.0.2.2": Peer()})
    outcomes = deliver(courier(net), "grey@example.com", "gone@example.com", "ok@example.com")
    assert outcomes == [
        Delivered("250 ok", Handoff.RELAYED),
        replace(perm, remote_mta="mx.peer.test"),  # named in the DSN's Remote-MTA
        Delivered("250 ok", Handoff.RELAYED),
    ]
    assert [(s.address, s.recipients) for s in net.sent] == [
        ("192.0.2.1", ["grey@example.com", "gone@example.com", "ok@example.com"]),
        ("192.0.2.2", ["grey@example.com"]),
    ]


def test_all_mx_down_keeps_the_last_temporary_reply() -> None:
    outcomes = deliver(courier(FakeNet()), "bob@example.com")
    assert reply_of(outcomes[0]).enhanced == "4.4.1" and isinstance(outcomes[0], TempFailed)


def test_null_mx_nxdomain_tempfail() -> None:
    dns: dict[tuple[str, RdType], FakeValue] = {
        ("null.test", RdType.MX): [MxRecord(0, "")],
        ("flaky.test", RdType.MX): DnsStatus.TEMPFAIL,
    }
    net = FakeNet()
    outcomes = deliver(courier(net, dns), "a@null.test", "b@nowhere.test", "c@flaky.test")
    assert isinstance(outcomes[0], PermFailed) and reply_of(outcomes[0]).enhanced == "5.1.10"
    assert isinstance(outcomes[1], PermFailed) and reply_of(outcomes[1]).enhanced == "5.1.2"
    assert isinstance(outcomes[2], TempFailed) and reply_of(outcomes[2]).enhanced == "4.4.3"
    assert net.opened == []


def test_implicit_mx_and_domain_without_any_address() -> None:
    dns: dict[tuple[str, RdType], FakeValue] = {
        ("implicit.test", RdType.A): ["192.0.2.9"],
        ("bare.test", RdType.TXT): ["v=spf1 -all"],
    }
    net = FakeNet({"192.0.2.9": Peer()})
    outcomes = deliver(courier(net, dns), "a@implicit.test", "b@bare.test")
    assert outcomes[0] == Delivered("250 ok", Handoff.RELAYED)
    assert isinstance(outcomes[1], PermFailed) and reply_of(outcomes[1]).enhanced == "5.1.2"


def test_address_literal_and_test_port() -> None:
    net = FakeNet({"192.0.2.77": Peer()})
    c = courier(net, {}, OutboundSettings(helo_name="mail.us.test", mx_port=2525))
    assert deliver(c, "bob@[192.0.2.77]") == [Delivered("250 ok", Handoff.RELAYED)]
    assert (net.opened[0].host, net.opened[0].port, net.opened[0].server_name) == (
        "192.0.2.77",
        2525,
        "",
    )


def test_loopback_is_a_loop_unless_allowed() -> None:
    dns: dict[tuple[str, RdType], FakeValue] = {
        ("example.com", RdType.MX): [MxRecord(10, "localhost.example.com")],
        ("localhost.example.com", RdType.A): ["127.0.0.1"],
    }
    net = FakeNet({"127.0.0.1": Peer()})
    outcomes = deliver(courier(net, dns), "bob@example.com")
    assert isinstance(outcomes[0], PermFailed) and reply_of(outcomes[0]).enhanced == "5.4.6"
    assert net.opened == []
    allowed = OutboundSettings(helo_name="mail.us.test", allow_loopback=True)
    assert deliver(courier(net, dns, allowed), "bob@example.com") == [
        Delivered("250 ok", Handoff.RELAYED)
    ]


def test_peer_greeting_with_our_name_is_a_loop() -> None:
    net = FakeNet({"192.0.2.1": Peer(name="MAIL.us.test"), "192.0.2.2": Peer()})
    outcomes = deliver(courier(net), "bob@example.com")
    assert isinstance(outcomes[0], PermFailed) and reply_of(outcomes[0]).text == (
        "Mail loops back to myself"
    )
    assert net.sent == []


def test_we_as_best_mx_is_a_loop() -> None:
    dns: dict[tuple[str, RdType], FakeValue] = {
        ("example.com", RdType.MX): [MxRecord(5, "mail.us.test")]
    }
    outcomes = deliver(courier(FakeNet(), dns), "bob@example.com")
    assert reply_of(outcomes[0]).enhanced == "5.4.6"


def test_5xx_greeting_is_final_tls_failure_retries_plain() -> None:
    banner = DeliveryError("greeting", Reply(554, "5.7.1", "go away"), permanent=True)
    net = FakeNet({"192.0.2.1": Peer(open_error=banner), "192.0.2.2": Peer()})
    outcomes = deliver(courier(net), "bob@example.com")
    assert isinstance(outcomes[0], PermFailed) and reply_of(outcomes[0]).text == "go away"
    broken_tls = FakeNet({"192.0.2.1": Peer(starttls_fails=True)})
    assert deliver(courier(broken_tls), "bob@example.com") == [Delivered("250 ok", Handoff.RELAYED)]
    assert [o.tls_mode for o in broken_tls.opened] == [TlsMode.OPPORTUNISTIC, TlsMode.NONE]


def test_relay_and_lmtp_transports_skip_mx() -> None:
    transports = {
        "example.com": Transport(TransportKind.RELAY, RelayTarget("192.0.2.50", 2525)),
        "local.test": Transport(TransportKind.LMTP, RelayTarget("192.0.2.60", 24)),
    }
    settings = OutboundSettings(helo_name="mail.us.test", transports=transports)
    net = FakeNet({"192.0.2.50": Peer(), "192.0.2.60": Peer()})
    resolver_table: dict[tuple[str, RdType], FakeValue] = {}
    c = courier(net, resolver_table, settings)
    assert deliver(c, "a@example.com", "b@local.test") == [
        Delivered("250 ok", Handoff.RELAYED),
        Delivered("250 ok"),  # LMTP is final delivery (RFC 2033)
    ]
    seen = {(o.host, o.port, o.lmtp) for o in net.opened}
    assert seen == {("192.0.2.50", 2525, False), ("192.0.2.60", 24, True)}


def test_smarthost_takes_every_domain_in_one_transaction_with_auth_over_tls() -> None:
    smarthost = Smarthost("192.0.2.25", 587, username="u", password="p")
    settings = OutboundSettings(helo_name="mail.us.test", smarthost=smarthost)
    net = FakeNet({"192.0.2.25": Peer()})
    assert (
        deliver(courier(net, {}, settings), "a@one.test", "b@two.test")
        == [Delivered("250 ok", Handoff.RELAYED)] * 2
    )
    (options,) = net.opened
    assert options.auth == ("u", "p") and options.tls_mode is TlsMode.REQUIRED
    assert options.ssl_context is not None  # verified by default
    assert net.sent[0].recipients == ["a@one.test", "b@two.test"]
    implicit = Smarthost("192.0.2.25", 465, implicit_tls=True, verify_certificate=False)
    net2 = FakeNet({"192.0.2.25": Peer()})
    c = courier(net2, {}, OutboundSettings(helo_name="h.test", smarthost=implicit))
    deliver(c, "a@one.test")
    assert net2.opened[0].tls_mode is TlsMode.IMPLICIT and net2.opened[0].ssl_context is None
    assert net2.opened[0].auth is None


def test_transport_entry_with_only_tls_keeps_the_smarthost() -> None:
    from hato.delivery.tlspolicy import TlsLevel

    smarthost = Smarthost("192.0.2.25")
    transports = {"bank.test": Transport(tls=TlsLevel.VERIFY)}
    settings = OutboundSettings("h.test", transports=transports, smarthost=smarthost)
    assert settings.transport_for("bank.test").kind is TransportKind.SMARTHOST
    assert settings.transport_for("other.test").kind is TransportKind.SMARTHOST
    assert OutboundSettings("h.test").transport_for("x.test").kind is TransportKind.MX


def test_dsn_parameters_passed_on() -> None:
    message = QueuedMessage(
        "Q2", None, 0.0, "", 3, body=b"x\r\n", params={"ENVID": "abc", "RET": "HDRS"}
    )
    net = FakeNet({"192.0.2.1": Peer()})
    deliver(courier(net), "bob@example.com", message=message)
    params = net.sent[0].params
    assert params is not None and (params.envid, params.ret, params.requiretls) == (
        "abc",
        "HDRS",
        False,
    )
    assert net.sent[0].mail_from is None


def test_whole_attempt_is_bounded() -> None:
    settings = OutboundSettings(helo_name="mail.us.test", attempt_timeout=0.05)
    net = FakeNet({"192.0.2.1": Peer(hang=True)})
    assert deliver(courier(net, settings=settings), "bob@example.com") == [
        TempFailed(ATTEMPT_TIMEOUT)
    ]
    assert net.sessions[0].closed  # a session cut off mid-transaction is never reused


def test_transport_table_matches_idn_and_case() -> None:
    transports = {"Bücher.example": Transport(TransportKind.RELAY, RelayTarget("192.0.2.5", 25))}
    settings = OutboundSettings("h.test", transports=transports)
    assert settings.transport_for("xn--bcher-kva.example").kind is TransportKind.RELAY
    assert settings.transport_for("BÜCHER.example").kind is TransportKind.RELAY
