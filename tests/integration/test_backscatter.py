"""A stranger on port 25 may not make Hato write to a third party (docs/security.md,
2026-12-08 eighth session), against the real `hato serve`.

A message for one of our aliases that forwards to another server, carrying that alias's own
`Delivered-To:` (RFC 9228 §4: it came back through it), was accepted with 250 and its copy
then bounced 5.4.6 at delivery, to the MAIL FROM, which anyone may forge: with a victim's
address there, a stranger had our server send the victim a bounce holding the header section
it wrote (up to 256 KiB of its own text). Refused 554 5.4.6 at the end of DATA now, like too
many hops: nothing is queued, nobody but the client is told.
"""

from __future__ import annotations

import smtplib
from collections.abc import Iterator
from pathlib import Path

import pytest
from peers.hato import HatoServer
from peers.server import DomainSetup, MailSetup

AD = b"X-Ad: " + b"buy now at https://shop.example " * 30 + b"\r\n"


@pytest.fixture
def hato(workdir: Path) -> Iterator[HatoServer]:
    server = HatoServer(
        workdir / "data",
        MailSetup(
            domains=(
                DomainSetup("example.test", users=("alice",), aliases=(("fwd", ("x@far.test",)),)),
            ),
            direct_local_delivery=False,  # even alice's copy waits in the queue: none may
        ),
    )
    server.start()
    try:
        yield server
    finally:
        server.stop()


def _send(server: HatoServer, rcpts: list[str], message: bytes) -> tuple[int, bytes]:
    with smtplib.SMTP(server.host, server.port, timeout=30) as client:
        client.ehlo()
        assert client.mail("victim@third.test")[0] == 250
        for rcpt in rcpts:
            assert client.rcpt(rcpt)[0] == 250
        return client.data(message)


@pytest.mark.parametrize(
    "rcpts", [["fwd@example.test"], ["alice@example.test", "FWD@Example.test"]]
)
def test_a_copy_an_alias_would_forward_again_is_refused_at_the_end_of_data(
    hato: HatoServer, rcpts: list[str]
) -> None:
    message = b"Delivered-To: Fwd@example.test\r\n" + AD + b"Subject: looped\r\n\r\nspam body\r\n"
    code, text = _send(hato, rcpts, message)
    assert (code, text[:6]) == (554, b"5.4.6 "), (code, text)
    assert hato.wait_for_log(r"event=message-refused .*reason=forward-loop rcpt=fwd@example\.test")
    listed = hato.hato("queue", "list")
    assert listed.returncode == 0 and "victim@third.test" not in listed.stdout, listed
    assert "event=dsn-queued" not in hato.log_text()
    assert "event=queued" not in hato.log_text()


def test_a_delivered_to_of_another_address_is_no_loop(hato: HatoServer) -> None:
    message = b"Delivered-To: list@elsewhere.test\r\nSubject: fine\r\n\r\nx\r\n"
    code, _ = _send(hato, ["fwd@example.test", "alice@example.test"], message)
    assert code == 250
