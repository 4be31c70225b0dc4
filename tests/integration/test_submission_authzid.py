"""Who a login may act as, on the real server (RFC 4616 §2, RFC 5802 §5.1): the authorization
identity of PLAIN and SCRAM-SHA-256 must be the login's own account (in any case, as accounts
are), never another user's."""

from __future__ import annotations

import base64
import hashlib
import hmac

from peers.clients import submissions_session
from peers.hato import HatoServer
from peers.net import RawSession
from peers.server import USER_PASSWORD
from peers.tls import TestCA


def _b64(data: bytes) -> bytes:
    return base64.b64encode(data)


def _scram(session: RawSession, login: str, authzid: str) -> tuple[int, list[bytes]]:
    """A SCRAM-SHA-256 client (RFC 5802 §3, RFC 7677) up to the server's last answer."""
    gs2 = f"n,a={authzid}," if authzid else "n,,"
    bare = f"n={login},r=clientnonce0123456789"
    code, lines = session.command(b"AUTH SCRAM-SHA-256 " + _b64((gs2 + bare).encode()))
    if code != 334:
        return code, lines
    server_first = base64.b64decode(lines[-1][4:]).decode()
    attrs = dict(item.split("=", 1) for item in server_first.split(","))
    salted = hashlib.pbkdf2_hmac(
        "sha256", USER_PASSWORD.encode(), base64.b64decode(attrs["s"]), int(attrs["i"])
    )
    client_key = hmac.digest(salted, b"Client Key", "sha256")
    final = f"c={_b64(gs2.encode()).decode()},r={attrs['r']}"
    auth_message = f"{bare},{server_first},{final}".encode()
    signature = hmac.digest(hashlib.sha256(client_key).digest(), auth_message, "sha256")
    proof = bytes(a ^ b for a, b in zip(client_key, signature, strict=True))
    code, lines = session.command(_b64(f"{final},p={_b64(proof).decode()}".encode()))
    if code != 334:
        return code, lines
    return session.command(b"")


def test_plain_with_the_own_login_as_authzid_in_another_case_is_accepted(
    shared_submission: HatoServer, test_ca: TestCA
) -> None:
    with submissions_session(shared_submission, test_ca) as session:
        token = _b64(f"Alice@USERS.test\0alice@users.test\0{USER_PASSWORD}".encode())
        assert session.command(b"AUTH PLAIN " + token)[0] == 235
        assert session.command(b"MAIL FROM:<alice@users.test>")[0] == 250


def test_plain_with_another_users_authzid_is_refused(
    shared_submission: HatoServer, test_ca: TestCA
) -> None:
    with submissions_session(shared_submission, test_ca) as session:
        token = _b64(f"bob@users.test\0alice@users.test\0{USER_PASSWORD}".encode())
        code, lines = session.command(b"AUTH PLAIN " + token)
        assert (code, lines[-1][4:9]) == (535, b"5.7.8")


def test_scram_with_another_users_authzid_is_refused(
    shared_submission: HatoServer, test_ca: TestCA
) -> None:
    with submissions_session(shared_submission, test_ca) as session:
        code, lines = _scram(session, "alice@users.test", "bob@users.test")
        assert (code, lines[-1][4:9]) == (535, b"5.7.8")
        # Not logged in as anyone: MAIL still needs AUTH.
        assert session.command(b"MAIL FROM:<alice@users.test>")[0] == 530


def test_scram_with_the_own_login_as_authzid_is_accepted(
    shared_submission: HatoServer, test_ca: TestCA
) -> None:
    with submissions_session(shared_submission, test_ca) as session:
        assert _scram(session, "alice@users.test", "ALICE@users.test")[0] == 235
    with submissions_session(shared_submission, test_ca) as session:
        assert _scram(session, "alice@users.test", "")[0] == 235
