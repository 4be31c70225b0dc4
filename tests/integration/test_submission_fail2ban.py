"""Failed AUTH on the real server: the log lines that contrib/fail2ban matches (checked with
Debian's fail2ban-regex and fail2ban-client), and Hato's own throttle: growing delays, then
421 4.7.0 and a temporary block (RFC 4954 §4 leaves the pace of retries to the server; RFC 5321
§3.8: 421 closes the connection).
"""

from __future__ import annotations

import base64
import shutil
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from peers.hato import HatoServer
from peers.net import RawSession
from peers.server import USER_PASSWORD, AuthSetup, MakeServer, submission_setup
from peers.tls import TestCA

CONTRIB = Path(__file__).parents[2] / "contrib" / "fail2ban"
FILTER = CONTRIB / "filter.d" / "hato.conf"
JAIL = CONTRIB / "jail.d" / "hato.conf"
ALICE = "alice@users.test"


def _b64(text: str) -> bytes:
    return base64.b64encode(text.encode())


def _session(server: HatoServer, ca: TestCA) -> RawSession:
    session = RawSession(server.host, server.submissions_port, tls=ca.client_context())
    assert session.reply()[0] == 220
    assert session.command(b"EHLO client.test")[0] == 250
    return session


def _plain(session: RawSession, user: str, password: str) -> tuple[int, list[bytes]]:
    return session.command(b"AUTH PLAIN " + _b64(f"\0{user}\0{password}"))


def _login(session: RawSession, user: str, password: str) -> tuple[int, list[bytes]]:
    assert session.command(b"AUTH LOGIN")[0] == 334
    assert session.command(_b64(user))[0] == 334
    return session.command(_b64(password))


def _server(make_server: MakeServer, ca: TestCA, auth: AuthSetup) -> HatoServer:
    server = make_server(submission_setup(ca.tls_files(), auth))
    if not isinstance(server, HatoServer):
        pytest.skip("about Hato's own AUTH")
    return server


def _fail2ban_ips(fail2ban_regex: str, log: Path) -> list[str]:
    done = subprocess.run(
        [fail2ban_regex, "-o", "ip", str(log), str(FILTER)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout.split()


def test_fail2ban_regex_finds_every_failed_auth_and_only_the_real_ip(
    make_server: MakeServer, test_ca: TestCA, workdir: Path, require_peer: Callable[[str], str]
) -> None:
    fail2ban_regex = require_peer("fail2ban-regex")
    server = _server(make_server, test_ca, AuthSetup(failure_delay=0.0, max_failures=100))
    with _session(server, test_ca) as session:
        for password in ("wrong-1", "wrong-2", "wrong-3"):
            assert _plain(session, ALICE, password)[0] == 535
        assert _login(session, ALICE, "wrong-4")[0] == 535
        assert _plain(session, "nobody@users.test", "x")[0] == 535
        # A client cannot plant another address (or a whole fake line) through its user name.
        assert _plain(session, "x client=198.51.100.9 y", "x")[0] == 535
        fake = "x\n2026-01-01T00:00:00.000Z WARNING hato.smtpd: event=auth-failed session=1 "
        assert _plain(session, fake + "client=198.51.100.10 user=z", "x")[0] == 535
        assert _plain(session, ALICE, USER_PASSWORD)[0] == 235
    # Log lines may land a moment after the replies: wait for the last one.
    assert server.wait_for_log(r"event=auth-failed .*user=\"x\\x0a"), server.log_text()

    log = workdir / "hato-copy.log"
    log.write_text(server.log_text())
    failed = [line for line in server.log_text().splitlines() if "event=auth-failed" in line]
    assert len(failed) == 7, "\n".join(failed)
    ips = _fail2ban_ips(fail2ban_regex, log)
    assert ips == ["127.0.0.1"] * 7, ips
    assert "198.51.100" not in " ".join(ips)


def test_the_jail_passes_fail2bans_configuration_test(
    workdir: Path, require_peer: Callable[[str], str]
) -> None:
    client = require_peer("fail2ban-client")
    etc = Path("/etc/fail2ban")
    if not (etc / "jail.conf").is_file():
        pytest.fail("fail2ban is installed without /etc/fail2ban/jail.conf")
    config = workdir / "fail2ban"
    shutil.copytree(etc, config)
    for other in (config / "jail.d").iterdir():
        other.unlink()  # Debian enables sshd there, which needs a log this machine may lack
    shutil.copy(FILTER, config / "filter.d" / "hato.conf")
    shutil.copy(JAIL, config / "jail.d" / "hato.conf")
    done = subprocess.run(
        [client, "-c", str(config), "-t"], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stdout + done.stderr
    dump = subprocess.run(
        [client, "-c", str(config), "-d"], capture_output=True, text=True, timeout=60
    )
    assert "['add', 'hato'," in dump.stdout, dump.stdout + dump.stderr


# ---- Hato's own throttle ----------------------------------------------------------------------


def test_failed_auth_slows_down_then_421_and_a_temporary_block(
    make_server: MakeServer, test_ca: TestCA, workdir: Path, require_peer: Callable[[str], str]
) -> None:
    fail2ban_regex = require_peer("fail2ban-regex")
    # The block must outlast the last delay, or it could end before the 421 is even sent.
    delay, block = 0.3, 5.0
    server = _server(
        make_server,
        test_ca,
        AuthSetup(failure_delay=delay, max_failure_delay=4 * delay, max_failures=4,
                  block_time=block),
    )  # fmt: skip
    # Warm up the password checker (its first argon2id run is slower); a success clears counts.
    with _session(server, test_ca) as session:
        assert _plain(session, ALICE, USER_PASSWORD)[0] == 235
    waits: list[float] = []
    with _session(server, test_ca) as session:
        for attempt in range(3):
            started = time.monotonic()
            code, lines = _plain(session, ALICE, f"wrong-{attempt}")
            waits.append(time.monotonic() - started)
            assert (code, lines[-1][4:9]) == (535, b"5.7.8"), lines
        # The fourth failure reaches max_failures: 421 4.7.0 and the connection is closed.
        code, lines = _plain(session, ALICE, "wrong-3")
        assert (code, lines[-1][4:9]) == (421, b"4.7.0"), lines
        with pytest.raises(OSError):
            session.command(b"NOOP")
    # The delay doubles per failure: 0.3, 0.6, 1.2 s (plus the password check itself, whose
    # time varies with the machine's load, so only lower bounds and the growth are checked).
    for attempt, waited in enumerate(waits):
        assert waited >= delay * 2**attempt * 0.9, waits
    assert waits[2] - waits[0] >= 2 * delay, waits

    # Blocked: a new connection is refused at once, even with the right password at hand.
    blocked_at = time.monotonic()
    with RawSession(server.host, server.submissions_port, tls=test_ca.client_context()) as s:
        code, lines = s.reply()
        assert (code, lines[-1][4:9]) == (421, b"4.7.0"), lines
    with RawSession(server.host, server.submission_port) as s:
        assert s.reply()[0] == 421
    refused = server.wait_for_log(r"event=connection-refused .*reason=auth-blocked")
    assert refused, server.log_text()

    # After block_time the client may try again, and the right password works.
    time.sleep(max(0.0, block + 0.5 - (time.monotonic() - blocked_at)))
    with _session(server, test_ca) as session:
        assert _plain(session, ALICE, USER_PASSWORD)[0] == 235

    assert server.wait_for_log(r"(?s)(event=connection-refused .*){2}"), server.log_text()
    copy = workdir / "throttle.log"
    copy.write_text(server.log_text())
    ips = _fail2ban_ips(fail2ban_regex, copy)
    # Four auth-failed lines and two refused connections, all from the one client.
    assert ips == ["127.0.0.1"] * 6, ips


def test_a_successful_login_clears_the_count(make_server: MakeServer, test_ca: TestCA) -> None:
    server = _server(
        make_server, test_ca, AuthSetup(failure_delay=0.0, max_failures=3, block_time=60.0)
    )
    for _ in range(3):
        with _session(server, test_ca) as session:
            assert _plain(session, ALICE, "wrong")[0] == 535
            assert _plain(session, ALICE, "wrong")[0] == 535
            assert _plain(session, ALICE, USER_PASSWORD)[0] == 235
    # Six failures in all, never three in a row: never blocked.
    with _session(server, test_ca) as session:
        assert _plain(session, ALICE, USER_PASSWORD)[0] == 235
