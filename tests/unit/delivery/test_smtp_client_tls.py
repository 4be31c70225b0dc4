"""The SMTP client's STARTTLS, implicit TLS and AUTH against aiosmtpd (a PyPI test peer)."""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, AuthResult, Envelope, LoginPassword, Session
from peers.net import free_port

from hato.delivery.smtp_client import (
    BytesBody,
    ClientSession,
    ConnectOptions,
    DeliveryError,
    RecipientSpec,
    TlsMode,
)
from hato.model import Address, Delivered
from hato.server.tls import ensure_self_signed, server_context

BOB = RecipientSpec(Address("bob", "example.org"))


@dataclass
class Handler:
    messages: list[tuple[str, bytes, bool, Any]] = field(default_factory=list)

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        content = envelope.original_content or b""
        self.messages.append(
            (envelope.mail_from or "", content, session.ssl is not None, session.authenticated)
        )
        return "250 2.0.0 OK"


def authenticator(
    server: SMTP, session: Session, envelope: Envelope, mechanism: str, auth_data: object
) -> AuthResult:
    ok = isinstance(auth_data, LoginPassword) and (auth_data.login, auth_data.password) == (
        b"alice",
        b"secret",
    )
    return AuthResult(success=ok, handled=False)


@dataclass
class Peer:
    port: int
    handler: Handler
    cert_path: Path

    def client_context(self) -> ssl.SSLContext:
        """A verifying context that trusts the peer's self-signed certificate."""
        context = ssl.create_default_context(cafile=str(self.cert_path))
        return context

    def cert_der(self) -> bytes:
        return ssl.PEM_cert_to_DER_cert(self.cert_path.read_text())


def start_peer(tmp_path: Path, *, implicit: bool = False, **kw: Any) -> Iterator[Peer]:
    cert, key = ensure_self_signed(tmp_path / "tls", "localhost")
    handler = Handler()
    port = free_port()
    tls = server_context(cert, key)
    if implicit:
        kw["ssl_context"] = tls
        # aiosmtpd counts only STARTTLS as TLS for auth_require_tls, not implicit TLS.
        kw["auth_require_tls"] = False
    else:
        kw.setdefault("tls_context", tls)
    controller = Controller(
        handler,
        hostname="127.0.0.1",
        port=port,
        authenticator=authenticator,
        **({"auth_require_tls": True} | kw),
    )
    controller.start()
    try:
        yield Peer(port, handler, cert)
    finally:
        controller.stop()


@pytest.fixture
def peer(tmp_path: Path) -> Iterator[Peer]:
    yield from start_peer(tmp_path, require_starttls=True)


def options(peer: Peer, **kw: Any) -> ConnectOptions:
    return ConnectOptions("127.0.0.1", peer.port, "client.example.com", **kw)


def deliver(opts: ConnectOptions) -> tuple[Any, ClientSession]:
    async def scenario() -> tuple[Any, ClientSession]:
        session = await ClientSession.open(opts)
        try:
            result = await session.send(Address("alice", "example.com"), [BOB], BytesBody(b"hi"))
        finally:
            await session.close()
        return result, session

    return asyncio.run(asyncio.wait_for(scenario(), 20))


def test_starttls_verified_and_auth_plain(peer: Peer) -> None:
    seen: list[bytes] = []

    def dane(der: bytes) -> bool:
        seen.append(der)
        return der == peer.cert_der()

    result, session = deliver(
        options(
            peer,
            tls_mode=TlsMode.REQUIRED,
            server_name="localhost",
            ssl_context=peer.client_context(),
            verify_peer=dane,
            auth=("alice", "secret"),
        )
    )
    assert isinstance(result.outcomes[0], Delivered)
    assert session.tls is not None and session.tls.verified
    assert session.tls.version in ("TLSv1.2", "TLSv1.3") and session.tls.cipher
    assert seen == [peer.cert_der()]
    (sender, content, on_tls, auth_data) = peer.handler.messages[0]
    assert sender == "alice@example.com" and content == b"hi\r\n" and on_tls
    assert auth_data is True


def test_opportunistic_starttls_and_auth_login(tmp_path: Path) -> None:
    for peer in start_peer(tmp_path, auth_exclude_mechanism=["PLAIN"]):
        result, session = deliver(options(peer, auth=("alice", "secret")))
        assert isinstance(result.outcomes[0], Delivered)
        assert session.tls is not None and not session.tls.verified
        assert session.tls.peer_cert_der == peer.cert_der()
        assert peer.handler.messages[0][2]  # delivered over TLS


def test_wrong_password_is_an_auth_failure(peer: Peer) -> None:
    with pytest.raises(DeliveryError) as info:
        deliver(options(peer, auth=("alice", "wrong")))
    assert info.value.stage == "auth" and info.value.permanent
    assert info.value.reply.code == 535
    assert peer.handler.messages == []


def test_dane_mismatch_and_bad_name_are_tls_policy_failures(peer: Peer) -> None:
    with pytest.raises(DeliveryError) as info:
        deliver(options(peer, tls_mode=TlsMode.REQUIRED, verify_peer=lambda der: False))
    assert info.value.stage == "tls" and info.value.tls_policy
    with pytest.raises(DeliveryError) as info:
        deliver(
            options(
                peer,
                tls_mode=TlsMode.REQUIRED,
                server_name="mx.other.example",
                ssl_context=peer.client_context(),
            )
        )
    assert info.value.stage == "tls" and info.value.tls_policy
    # Issue 13: the reply names the check that failed, not only "TLS handshake failed".
    assert info.value.reply.text.startswith("TLS handshake failed: certificate verify failed: ")
    assert "mx.other.example" in info.value.reply.text  # OpenSSL: "Hostname mismatch, ..."
    assert peer.handler.messages == []


def test_an_untrusted_certificate_says_why(peer: Peer, tmp_path: Path) -> None:
    # The client trusts another CA only: the peer's certificate has no known issuer.
    other, _ = ensure_self_signed(tmp_path / "other", "other.example")
    trust = ssl.create_default_context(cafile=str(other))
    with pytest.raises(DeliveryError) as info:
        deliver(options(peer, tls_mode=TlsMode.REQUIRED, ssl_context=trust))
    reply = info.value.reply
    assert (reply.code, reply.enhanced) == (421, "4.7.5") and info.value.tls_policy
    assert "certificate verify failed: " in reply.text and "\n" not in reply.text, reply


def test_implicit_tls(tmp_path: Path) -> None:
    for peer in start_peer(tmp_path, implicit=True):
        result, session = deliver(
            options(
                peer,
                tls_mode=TlsMode.IMPLICIT,
                server_name="localhost",
                ssl_context=peer.client_context(),
                auth=("alice", "secret"),
            )
        )
        assert isinstance(result.outcomes[0], Delivered)
        assert session.tls is not None and session.tls.verified
        assert peer.handler.messages[0][3]  # authenticated (aiosmtpd's session.ssl is STARTTLS's)
