"""A message that is costly to check or to sign stalls nobody (issue 12, item 7): the real
server checks a message with 20 DKIM signatures over a 1.5 MB body and 60 ARC sets, and signs
a 3 MB message of its own user, while another session on the same server keeps getting its
replies. DNS questions are counted in the test DNS server's log: 8 DKIM keys at most, and no
ARC key at all (more than 50 sets: RFC 8617 §5.2 says fail, before any lookup)."""

from __future__ import annotations

import smtplib
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from peers import maildir
from peers.authcheck import CheckingHato
from peers.hato import hato_binary
from peers.server import USER_PASSWORD, DomainSetup, MailSetup, TlsFiles

from dnsserver import DnsTestServer, ZoneValue, txt_strings
from hato.authcheck import DkimAlgorithm, generate_key
from hato.server.tls import ensure_self_signed

_, KEY_TXT = generate_key(DkimAlgorithm.RSA_SHA256)
SIGNATURES = 20
ARC_SETS = 60

# The other session's NOOPs (a latency probe, in a loop as long as the check runs) are junk
# commands each: [limits] max_junk_commands out of their way.
PROBE_NOOPS = 10_000_000


def _zone() -> dict[str, dict[str, list[ZoneValue]]]:
    zone: dict[str, dict[str, list[ZoneValue]]] = {
        "sender.test": {"TXT": ["v=spf1 ip4:127.0.0.1 -all"]},
        "_dmarc.sender.test": {"TXT": ["v=DMARC1; p=none"]},
    }
    for n in range(SIGNATURES):
        zone[f"s{n}._domainkey.sender.test"] = {"TXT": [txt_strings(KEY_TXT)]}
    for n in range(1, ARC_SETS + 1):
        zone[f"as{n}._domainkey.arc.test"] = {"TXT": [txt_strings(KEY_TXT)]}
        zone[f"ams{n}._domainkey.arc.test"] = {"TXT": [txt_strings(KEY_TXT)]}
    return zone


class WatchedDns(DnsTestServer):
    """Sets `dkim_asked` at the first question for a DKIM key: the check has begun."""

    def __init__(self, zone: dict[str, dict[str, list[ZoneValue]]]) -> None:
        super().__init__(zone)
        self.dkim_asked = threading.Event()

    def answer(self, request: Any) -> Any:
        reply = super().answer(request)
        if "._domainkey.sender.test" in str(request.q.qname):
            self.dkim_asked.set()
        return reply

    def key_questions(self, zone: str) -> list[str]:
        return [name for name, rtype in self.queries if name.endswith("._domainkey." + zone)]


@pytest.fixture
def dns() -> Iterator[WatchedDns]:
    server = WatchedDns(_zone())
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def checking(tmp_path: Path, dns: WatchedDns) -> Iterator[CheckingHato]:
    setup = MailSetup(
        domains=(DomainSetup("example.org", users=("bob",)),),
        max_message_size=4 * 1024 * 1024,
        max_junk_commands=PROBE_NOOPS,
    )
    server = CheckingHato(tmp_path / "data", setup, dns.nameserver)
    server.start()
    yield server
    server.stop()


def _costly_message() -> bytes:
    # Syntactically valid signatures with real keys in DNS but a wrong bh=: dkimpy has to
    # canonicalize and hash the whole body for each one before it can say "fail".
    signatures = b"".join(
        b"DKIM-Signature: v=1; a=rsa-sha256; c=relaxed/relaxed; d=sender.test; s=s%d;"
        b" h=from:subject; bh=AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=; b=AAAA\r\n" % n
        for n in range(SIGNATURES)
    )
    arc = b"".join(
        b"ARC-Seal: i=%d; a=rsa-sha256; cv=%s; d=arc.test; s=as%d; t=1; b=AAAA\r\n"
        b"ARC-Message-Signature: i=%d; a=rsa-sha256; c=relaxed/relaxed; d=arc.test; s=ams%d;"
        b" h=from; bh=AAAA; t=1; b=AAAA\r\n"
        b"ARC-Authentication-Results: i=%d; arc.test; spf=pass\r\n"
        % (i, b"none" if i == 1 else b"pass", i, i, i, i)
        for i in range(ARC_SETS, 0, -1)
    )
    body = b"".join(
        b"line %07d of a long body, with words that canonicalization has to look at\r\n" % n
        for n in range(20_000)
    )
    header = (
        b"From: <news@sender.test>\r\nTo: <bob@example.org>\r\nSubject: costly\r\n"
        + maildir.MARKER_HEADER
        + b": costly-1\r\n\r\n"
    )
    return signatures + arc + header + body


def test_a_costly_check_runs_beside_other_sessions_with_bounded_dns(
    checking: CheckingHato, dns: WatchedDns
) -> None:
    done = threading.Event()
    errors: list[BaseException] = []

    def send() -> None:
        try:
            with smtplib.SMTP(checking.host, checking.port, timeout=120) as smtp:
                smtp.sendmail("news@sender.test", ["bob@example.org"], _costly_message())
        except BaseException as exc:  # handed to the test's thread
            errors.append(exc)
        finally:
            done.set()
            dns.dkim_asked.set()  # so that the test does not wait for a check that never began

    with smtplib.SMTP(checking.host, checking.port, timeout=120) as other:
        other.ehlo("other.test")
        sender = threading.Thread(target=send)
        sender.start()
        assert dns.dkim_asked.wait(60), "the check never asked for a DKIM key"
        assert not done.is_set(), errors
        began = time.monotonic()
        latencies: list[float] = []
        while not done.is_set():
            start = time.monotonic()
            assert other.noop()[0] == 250
            latencies.append(time.monotonic() - start)
        checked = time.monotonic() - began
        sender.join()
    assert not errors, errors
    # While the costly message was being checked, the other session was answered again and
    # again, each time in a small part of the whole check's time (with the check on the event
    # loop, one NOOP waited for nearly all of it).
    assert len(latencies) >= 5, (latencies, checked)
    assert max(latencies) < checked / 4, (max(latencies), checked)
    assert len(set(dns.key_questions("sender.test"))) == 8
    assert dns.key_questions("arc.test") == []
    (found,) = maildir.wait_for_marker(checking.mailbox("bob", "example.org"), "costly-1")
    header = found.read_bytes().split(b"\r\n\r\n", 1)[0].decode()
    results = header[header.index("Authentication-Results: hato.test;") :]
    assert results.count("dkim=fail") == 8 and "arc=fail" in results


SUBMITTER = """
import smtplib, ssl, sys
host, port, password, path = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
context = ssl.create_default_context()
context.check_hostname = False
context.verify_mode = ssl.CERT_NONE
with smtplib.SMTP(host, port, timeout=120) as smtp:
    smtp.starttls(context=context)
    smtp.login("alice@example.org", password)
    smtp.sendmail("alice@example.org", ["bob@example.org"], open(path, "rb").read())
"""


def test_signing_a_big_message_stalls_no_other_session(tmp_path: Path, dns: WatchedDns) -> None:
    cert, key = ensure_self_signed(tmp_path / "tls", "hato.test")
    setup = MailSetup(
        domains=(DomainSetup("example.org", users=("alice", "bob")),),
        submission=True,
        tls=TlsFiles(cert, key),
        max_message_size=8 * 1024 * 1024,
        max_junk_commands=PROBE_NOOPS,
    )
    server = CheckingHato(tmp_path / "data", setup, dns.nameserver)
    server._prepare()
    subprocess.run(
        [hato_binary(), "dkim", "keygen", "example.org", "--config", str(server.config)],
        capture_output=True,
        check=True,
        cwd=server.work,
        timeout=60,
    )
    body = b"".join(b"line %07d of a message our user sends, signed as it is queued\r\n" % n
                    for n in range(50_000))  # fmt: skip
    header = b"From: <alice@example.org>\r\nTo: <bob@example.org>\r\nSubject: big\r\n"
    (tmp_path / "message").write_bytes(
        header + maildir.MARKER_HEADER + b": signed-big\r\n\r\n" + body
    )
    server.start()
    try:
        with smtplib.SMTP(server.host, server.port, timeout=120) as other:
            other.ehlo("other.test")
            sender = subprocess.Popen(
                [sys.executable, "-c", SUBMITTER, server.host, str(server.submission_port),
                 USER_PASSWORD, str(tmp_path / "message")],
                stderr=subprocess.PIPE,
            )  # fmt: skip
            began = time.monotonic()
            latencies: list[float] = []
            while sender.poll() is None:
                start = time.monotonic()
                assert other.noop()[0] == 250
                latencies.append(time.monotonic() - start)
            took = time.monotonic() - began
        assert sender.wait() == 0, sender.stderr.read() if sender.stderr else b""
        # The DKIM body hash of 3 MB (seconds of CPU here) ran beside the other session.
        assert len(latencies) >= 5 and max(latencies) < took / 4, (max(latencies), took)
        (found,) = maildir.wait_for_marker(server.mailbox("bob", "example.org"), "signed-big")
        assert b"DKIM-Signature: v=1; a=rsa-sha256;" in found.read_bytes()[:4096]
    finally:
        server.stop()


def test_one_signature_over_a_big_body_is_checked_beside_other_sessions(
    checking: CheckingHato, dns: WatchedDns
) -> None:
    # dkimpy canonicalizes the body with one regex pass, which holds the GIL throughout: in a
    # thread of the server's own process that would still stall every session (hence the
    # worker processes). One signature: the pass is nearly all of the check's time.
    body = b"".join(b"line %07d of a long body, words and  spaces\t to canonicalize \r\n" % n
                    for n in range(50_000))  # fmt: skip
    message = (
        b"DKIM-Signature: v=1; a=rsa-sha256; c=relaxed/relaxed; d=sender.test; s=s1;"
        b" h=from:subject; bh=AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=; b=AAAA\r\n"
        b"From: <news@sender.test>\r\nTo: <bob@example.org>\r\nSubject: one signature\r\n"
        + maildir.MARKER_HEADER
        + b": big-body-1\r\n\r\n"
        + body
    )
    sender = subprocess.Popen(
        [sys.executable, "-c", MX_SENDER, checking.host, str(checking.port)],
        stdin=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    with smtplib.SMTP(checking.host, checking.port, timeout=120) as other:
        other.ehlo("other.test")
        assert sender.stdin is not None
        sender.stdin.write(message)
        sender.stdin.close()
        began = time.monotonic()
        latencies: list[float] = []
        while sender.poll() is None:
            start = time.monotonic()
            assert other.noop()[0] == 250
            latencies.append(time.monotonic() - start)
        took = time.monotonic() - began
    assert sender.wait() == 0, sender.stderr.read() if sender.stderr else b""
    assert len(latencies) >= 5 and max(latencies) < took / 4, (max(latencies), took)
    (found,) = maildir.wait_for_marker(checking.mailbox("bob", "example.org"), "big-body-1")
    assert b"dkim=fail" in found.read_bytes()[:8192]


MX_SENDER = """
import smtplib, sys
with smtplib.SMTP(sys.argv[1], int(sys.argv[2]), timeout=120) as smtp:
    smtp.sendmail("news@sender.test", ["bob@example.org"], sys.stdin.buffer.read())
"""
