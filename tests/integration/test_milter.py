"""[[milter]] end to end (issue 17, item 2): `hato serve` asks a real milter (rspamd's proxy
worker in milter mode, Debian's `rspamd`, private configuration) about each message on
port 25 over the milter protocol and applies its answer: the fields it adds are in the
stored message, its refusal reaches the client; a milter that is down or silent follows
default_action."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from peers import filtering, maildir
from peers.milters import MilteredHato, RspamdMilter
from peers.net import LOOPBACK, free_port, require_peer
from peers.rspamd import GTUBE


@pytest.fixture(scope="module")
def milter(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RspamdMilter]:
    require_peer("rspamd")
    server = RspamdMilter(tmp_path_factory.mktemp("rspamd-milter"))
    server.start()
    try:
        yield server
    finally:
        server.stop()


def _names(stored: bytes) -> list[bytes]:
    head = stored.split(b"\r\n\r\n", 1)[0]
    return [line.split(b":", 1)[0] for line in head.split(b"\r\n") if line[:1].isalpha()]


@pytest.fixture
def hato(tmp_path: Path, milter: RspamdMilter) -> Iterator[MilteredHato]:
    server = MilteredHato(tmp_path / "data", [milter.milter_address])
    server.start()
    try:
        yield server
    finally:
        server.stop()


def test_the_milters_header_fields_are_stored_and_its_reject_reaches_the_client(
    hato: MilteredHato,
) -> None:
    sent = filtering.message("clean-1", "Shall we have lunch tomorrow?")
    code, text = filtering.send(hato, sent)
    assert code == 250, text
    (found,) = maildir.wait_for_marker(hato.mailbox("someone", "dest.example"), "clean-1")
    stored = found.read_bytes()
    # rspamd's milter_headers fields, asked for with SMFIR_ADDHEADER, on the stored message.
    assert {b"X-Spamd-Result", b"X-Rspamd-Action"} <= set(_names(stored)), stored[:2000]
    assert stored.endswith(sent.split(b"\r\n\r\n", 1)[1])
    assert hato.wait_for_log(r"event=milter .*reply=(continue|accept)"), hato.log_text()[-2000:]

    code, text = filtering.send(hato, filtering.message("gtube-1", GTUBE))
    # rspamd's reject, as its own SMFIR_REPLYCODE.
    assert code // 100 == 5 and "Gtube" in text, (code, text)
    assert text.startswith("5.7."), text
    assert not maildir.find_marker(maildir.all_messages(hato.mailboxes()), "gtube-1")


def test_a_large_message_goes_through_in_body_chunks(hato: MilteredHato) -> None:
    # 300 KB: several SMFIC_BODY chunks of at most 65535 octets, streamed from the spool.
    body = "\r\n".join(f"line {n:06d} of a long and honest letter" for n in range(8000))
    sent = filtering.message("big-1", body)
    assert len(sent) > 4 * 65535
    assert filtering.send(hato, sent)[0] == 250
    (found,) = maildir.wait_for_marker(hato.mailbox("someone", "dest.example"), "big-1")
    stored = found.read_bytes()
    assert b"X-Spamd-Result" in _names(stored)
    assert stored.endswith(sent.split(b"\r\n\r\n", 1)[1])


@pytest.mark.parametrize("action", ["tempfail", "accept"])
def test_a_milter_down_or_silent_follows_default_action(tmp_path: Path, action: str) -> None:
    silent, silent_port = filtering.silent_listener()
    down = f"inet:{LOOPBACK}:{free_port()}"  # nothing listens
    servers = []
    try:
        for name, address in (("down", down), ("silent", f"inet:{LOOPBACK}:{silent_port}")):
            server = MilteredHato(
                tmp_path / name,
                [address],
                f'default_action = "{action}"\nconnect_timeout = 1\ncommand_timeout = 1\n',
            )
            servers.append(server)
            server.start()
            code, text = filtering.send(server, filtering.message(f"{name}-1", "hello"))
            found = server.wait_for_log(f"event=milter-unavailable .*action={action}")
            assert found, server.log_text()[-2000:]
            # /metrics: the failure, its cause and the default action applied, per milter.
            cause = "error" if name == "down" else "timeout"
            labels = f'action="{action}",cause="{cause}",milter="{address}",stage="message"'
            lines = server.metric_lines("hato_milter_unavailable_total")
            assert f"hato_milter_unavailable_total{{{labels}}} 1.0" in lines, lines
            if action == "tempfail":
                # Never a 250 for mail the milter did not see.
                assert (code, text[:5]) == (451, "4.3.0"), text
                assert not maildir.all_messages(server.mailboxes())
            else:
                assert code == 250, text
                maildir.wait_for_marker(server.mailbox("someone", "dest.example"), f"{name}-1")
    finally:
        for server in servers:
            server.stop()
        silent.close()


def test_milters_run_in_order_and_a_down_one_with_accept_is_passed_over(
    tmp_path: Path, milter: RspamdMilter
) -> None:
    down = f"inet:{LOOPBACK}:{free_port()}"
    server = MilteredHato(
        tmp_path / "data", [down, milter.milter_address], 'default_action = "accept"\n'
    )
    server.start()
    try:
        code, text = filtering.send(server, filtering.message("gtube-2", GTUBE))
        assert code // 100 == 5 and "Gtube" in text, (code, text)
        assert server.wait_for_log("event=milter-unavailable .*action=accept")
    finally:
        server.stop()
