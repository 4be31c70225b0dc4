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
from peers.clients import auth_plain, submissions_session
from peers.hato import HatoServer
from peers.net import RawSession
from peers.server import USER_PASSWORD, AuthSetup, MakeServer, submission_setup
from peers.tls import TestCA

CONTRIB = Path(__file__).parents[2] / "contrib" / "fail2ban"
FILTER = CONTRIB / "filter.d" / "hato.conf"
JAIL = CONTRIB / "jail.d" / "hato.conf"
ALICE = "alice@users.test"
BOB = "bob@users.test"


def _b64(text: str) -> bytes:
    return base64.b64encode(text.encode())


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
    with submissions_session(server, test_ca) as session:
        for password in ("wrong-1", "wrong-2", "wrong-3"):
            assert auth_plain(session, ALICE, password)[0] == 535
        assert _login(session, ALICE, "wrong-4")[0] == 535
        assert auth_plain(session, "nobody@users.test", "x")[0] == 535
        # A client cannot plant another address (or a whole fake line) through its user name.
        assert auth_plain(session, "x client=198.51.100.9 y", "x")[0] == 535
        fake = "x\n2026-01-01T00:00:00.000Z WARNING hato.smtpd: event=auth-failed session=1 "
        assert auth_plain(session, fake + "client=198.51.100.10 user=z", "x")[0] == 535
        assert auth_plain(session, ALICE, USER_PASSWORD)[0] == 235
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
    with submissions_session(server, test_ca) as session:
        assert auth_plain(session, ALICE, USER_PASSWORD)[0] == 235
    waits: list[float] = []
    with submissions_session(server, test_ca) as session:
        for attempt in range(3):
            started = time.monotonic()
            code, lines = auth_plain(session, ALICE, f"wrong-{attempt}")
            waits.append(time.monotonic() - started)
            assert (code, lines[-1][4:9]) == (535, b"5.7.8"), lines
        # The fourth failure reaches max_failures: 421 4.7.0 and the connection is closed.
        code, lines = auth_plain(session, ALICE, "wrong-3")
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
    with submissions_session(server, test_ca) as session:
        assert auth_plain(session, ALICE, USER_PASSWORD)[0] == 235

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
        with submissions_session(server, test_ca) as session:
            assert auth_plain(session, ALICE, "wrong")[0] == 535
            assert auth_plain(session, ALICE, "wrong")[0] == 535
            assert auth_plain(session, ALICE, USER_PASSWORD)[0] == 235
    # Six failures in all, never three in a row: never blocked.
    with submissions_session(server, test_ca) as session:
        assert auth_plain(session, ALICE, USER_PASSWORD)[0] == 235


def _scram_wrong(session: RawSession, user: str) -> tuple[int, list[bytes]]:
    """One SCRAM-SHA-256 exchange (RFC 5802 §5) with a proof that cannot be right."""
    code, lines = session.command(b"AUTH SCRAM-SHA-256 " + _b64(f"n,,n={user},r=attacker"))
    assert code == 334, lines
    server_first = base64.b64decode(lines[-1][4:]).decode()
    nonce = server_first.split(",")[0]
    proof = base64.b64encode(b"\0" * 32).decode()
    return session.command(_b64(f"c=biws,{nonce},p={proof}"))


def _refused(server: HatoServer, port: int, source: str, ca: TestCA | None = None) -> bool:
    """Whether a new connection from `source` is greeted 421 (True) or 220 (False)."""
    context = ca.client_context() if ca is not None else None
    with RawSession(server.host, port, tls=context, source=source) as s:
        code = s.reply()[0]
    assert code in (220, 421), code
    return code == 421


# ---- targeted lockout (issue 12, item 4) ------------------------------------------------------


def test_guesses_at_bobs_account_from_elsewhere_never_block_bob(
    make_server: MakeServer, test_ca: TestCA, workdir: Path, require_peer: Callable[[str], str]
) -> None:
    """Before: 30 failures at bob's account from other addresses made bob's one typo block his
    address for 15 minutes (port 25 too), and fail2ban banned him for the refused reconnects."""
    fail2ban_regex = require_peer("fail2ban-regex")
    cap = 0.2
    server = _server(
        make_server,
        test_ca,
        AuthSetup(failure_delay=cap / 4, max_failure_delay=cap, max_failures=10,
                  max_account_failures=30, block_time=600.0),
    )  # fmt: skip
    bob_home = "127.0.0.2"
    with submissions_session(server, test_ca, bob_home) as session:  # bob logs in as every day
        assert auth_plain(session, BOB, USER_PASSWORD)[0] == 235
    # Four attackers, eight guesses each, SCRAM and PLAIN: none reaches its own limit of 10,
    # together 32 against bob's account.
    waits: list[float] = []
    for attacker in ("127.0.0.3", "127.0.0.4", "127.0.0.5", "127.0.0.6"):
        with submissions_session(server, test_ca, attacker) as session:
            for guess in range(8):
                started = time.monotonic()
                if guess % 2:
                    code, lines = auth_plain(session, BOB, f"guess-{guess}")
                else:
                    code, lines = _scram_wrong(session, BOB)
                waits.append(time.monotonic() - started)
                assert (code, lines[-1][4:9]) == (535, b"5.7.8"), lines
    # The account's failures slow every stranger's guess at it, SCRAM and PLAIN alike: from
    # the third guess on, each fresh attacker's first attempt already waits the longest delay.
    assert min(waits[8::8]) >= cap * 0.9, waits
    assert server.wait_for_log(r"event=auth-account-attacked user=bob@users.test"), (
        server.log_text()
    )
    with submissions_session(server, test_ca, "127.0.0.7") as session:  # a stranger, PLAIN
        started = time.monotonic()
        assert auth_plain(session, BOB, "one-more-guess")[0] == 535
        assert time.monotonic() - started >= cap * 0.9

    # Bob's typo: 535 (not 421), and the right password works at once.
    with submissions_session(server, test_ca, bob_home) as session:
        code, lines = auth_plain(session, BOB, "typo")
        assert (code, lines[-1][4:9]) == (535, b"5.7.8"), lines
        assert auth_plain(session, BOB, USER_PASSWORD)[0] == 235
    assert not _refused(server, server.submissions_port, bob_home, test_ca)
    assert not _refused(server, server.port, bob_home)

    # An attacker who reaches its own limit is blocked on the submission ports, never on 25
    # (mail for its users still arrives).
    loud = "127.0.0.8"
    with submissions_session(server, test_ca, loud) as session:
        for _ in range(9):
            assert _scram_wrong(session, ALICE)[0] == 535
        code, lines = auth_plain(session, ALICE, "tenth")
        assert (code, lines[-1][4:9]) == (421, b"4.7.0"), lines
    assert _refused(server, server.submissions_port, loud, test_ca)
    assert not _refused(server, server.port, loud)

    assert server.wait_for_log(r"event=connection-refused .*client=127\.0\.0\.8"), server.log_text()
    copy = workdir / "targeted.log"
    copy.write_text(server.log_text())
    ips = _fail2ban_ips(fail2ban_regex, copy)
    # What fail2ban sees of each address is that address's own doing: bob's one typo, each
    # attacker's guesses, the loud one's ten and its refused reconnect.
    counts = {ip: ips.count(ip) for ip in set(ips)}
    assert counts == {
        bob_home: 1,
        "127.0.0.3": 8, "127.0.0.4": 8, "127.0.0.5": 8, "127.0.0.6": 8,
        "127.0.0.7": 1,
        loud: 11,
    }, counts  # fmt: skip


# ---- a block reaches sessions opened before it (item 12) --------------------------------------


def test_a_block_stops_guessing_on_sessions_opened_before_it(
    make_server: MakeServer, test_ca: TestCA
) -> None:
    """Before: a client blocked after 10 failures kept guessing on connections it had opened
    earlier (39 guesses where the limit is 10)."""
    server = _server(
        make_server,
        test_ca,
        AuthSetup(failure_delay=0.0, max_failures=3, block_time=600.0),
    )
    with (
        submissions_session(server, test_ca) as early,
        submissions_session(server, test_ca) as blocking,
    ):
        assert _scram_wrong(blocking, ALICE)[0] == 535
        assert _scram_wrong(blocking, ALICE)[0] == 535
        assert _scram_wrong(blocking, ALICE)[0] == 421  # the third: blocked
        # The session opened before the block may not guess any more either.
        code, lines = auth_plain(early, ALICE, "fourth")
        assert (code, lines[-1][4:9]) == (421, b"4.7.0"), lines
        with pytest.raises(OSError):
            early.command(b"NOOP")
    line = server.wait_for_log(r"event=auth-failed .*reason=\"client blocked\" blocked=yes")
    assert line, server.log_text()


# ---- an abandoned exchange is a failure (item 5) ----------------------------------------------


def test_cancelling_auth_counts_as_a_failure_and_is_logged(
    make_server: MakeServer, test_ca: TestCA
) -> None:
    """Before: "*" (RFC 4954 §4) after SCRAM's server-first message cost nothing and logged
    nothing: free probing, invisible to fail2ban."""
    server = _server(
        make_server, test_ca, AuthSetup(failure_delay=0.0, max_failures=3, block_time=600.0)
    )
    with submissions_session(server, test_ca) as session:
        for attempt in range(3):
            code, lines = session.command(
                b"AUTH SCRAM-SHA-256 " + _b64("n,,n=carol@users.test,r=x")
            )
            assert code == 334, lines
            code, lines = session.command(b"*")
            if attempt < 2:
                assert (code, lines[-1][4:9]) == (501, b"5.0.0"), lines
        # The third cancel reached max_failures: 501, then the connection is closed with 421.
        code, lines = session.reply()
        assert (code, lines[-1][4:9]) == (421, b"4.7.0"), lines
    assert _refused(server, server.submissions_port, "127.0.0.1", test_ca)
    found = server.wait_for_log(
        r"(?s)(event=auth-failed session=\S+ client=127\.0\.0\.1 user=carol@users.test "
        r"mechanism=SCRAM-SHA-256 reason=cancelled.*){3}"
    )
    assert found, server.log_text()
