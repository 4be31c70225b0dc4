"""A fake SMTP driver for the outbound courier's unit tests: peers by IP address, scripted."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass, field

from hato.delivery.outbound_attempt import Session
from hato.delivery.smtp_client import (
    BodySource,
    Capabilities,
    ConnectOptions,
    DeliveryError,
    MailParams,
    RecipientSpec,
    SendResult,
    TlsInfo,
    TlsMode,
)
from hato.model import Delivered, Outcome, Reply, ReversePath, TempFailed

CONNECT_FAILED = Reply(421, "4.4.1", "Connection refused or timed out")


@dataclass
class Peer:
    """What one address answers: `rcpt` maps a local part to its outcome (default Delivered)."""

    name: str = "mx.peer.test"
    rcpt: dict[str, Outcome] = field(default_factory=dict)
    requiretls: bool = False
    starttls_fails: bool = False
    open_error: DeliveryError | None = None
    hang: bool = False
    closes_idle: bool = False  # drops every connection once idle: a reused one is stale


@dataclass
class Sent:
    address: str
    mail_from: ReversePath
    recipients: list[str]
    params: MailParams | None


class FakeSession:
    def __init__(self, net: FakeNet, options: ConnectOptions, peer: Peer) -> None:
        self.net, self.options, self.peer = net, options, peer
        self.closed = False
        self.resets = 0
        self._caps = Capabilities(esmtp=True, requiretls=peer.requiretls, server_name=peer.name)

    @property
    def capabilities(self) -> Capabilities:
        return self._caps

    @property
    def tls(self) -> TlsInfo | None:
        return (
            None if self.options.tls_mode is TlsMode.NONE else TlsInfo("TLSv1.3", "x", None, True)
        )

    @property
    def usable(self) -> bool:
        return not self.closed

    async def send(
        self,
        mail_from: ReversePath,
        recipients: Sequence[RecipientSpec],
        body: BodySource,
        *,
        mail_params: MailParams | None = None,
    ) -> SendResult:
        if self.peer.hang:
            await asyncio.sleep(3600)
        if self.peer.closes_idle and self.resets:
            # What ClientSession reports when the RSET sent with MAIL finds the peer gone.
            self.closed = True
            stale = TempFailed(Reply(421, "4.4.2", "Connection dropped"))
            return SendResult(tuple(stale for _ in recipients), stale=True)
        data = b"".join([chunk async for chunk in body.chunks()])
        self.net.bodies.append(data)
        self.net.sent.append(
            Sent(self.options.host, mail_from, [str(r.address) for r in recipients], mail_params)
        )
        return SendResult(
            tuple(self.peer.rcpt.get(r.address.local, Delivered("250 ok")) for r in recipients)
        )

    async def reset(self) -> None:
        self.resets += 1

    async def close(self) -> None:
        self.closed = True


class FakeNet:
    """The courier's `opener`: `peers` by IP address; everything else refuses connections."""

    def __init__(self, peers: dict[str, Peer] | None = None) -> None:
        self.peers = peers or {}
        self.opened: list[ConnectOptions] = []
        self.sessions: list[FakeSession] = []
        self.sent: list[Sent] = []
        self.bodies: list[bytes] = []

    async def open(self, options: ConnectOptions) -> Session:
        self.opened.append(options)
        peer = self.peers.get(options.host)
        if peer is None:
            raise DeliveryError("connect", CONNECT_FAILED)
        if peer.open_error is not None:
            raise peer.open_error
        if peer.starttls_fails and options.tls_mode is not TlsMode.NONE:
            raise DeliveryError("tls", Reply(421, "4.7.5", "TLS handshake failed"))
        session = FakeSession(self, options, peer)
        self.sessions.append(session)
        return session
