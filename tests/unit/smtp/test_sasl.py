"""SASL mechanisms: RFC 4616 PLAIN, LOGIN, and SCRAM-SHA-256 against the RFC 7677 §3 example."""

import base64

from hato.model.auth import ScramCredentials
from hato.smtp.sasl import (
    Authenticated,
    Challenge,
    Failed,
    LoginMechanism,
    NeedCredentials,
    PlainMechanism,
    ScramSha256Mechanism,
    VerifyPassword,
    new_mechanism,
)

# RFC 7677 §3: user "user", password "pencil".
CLIENT_FIRST = b"n,,n=user,r=rOprNGfwEbeRWgbNEkqO"
SERVER_NONCE = "%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0"
SALT = base64.b64decode("W22ZaJ0SNY7soEsUEjb6gQ==")
SERVER_FIRST = (
    b"r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096"
)
CLIENT_FINAL = (
    b"c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,"
    b"p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ="
)
SERVER_FINAL = b"v=6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4="


def _scram(password: str = "pencil") -> tuple[ScramSha256Mechanism, ScramCredentials]:
    return ScramSha256Mechanism(lambda: SERVER_NONCE), ScramCredentials.derive(password, SALT)


def test_scram_sha256_rfc7677_example() -> None:
    mech, creds = _scram()
    assert mech.start(CLIENT_FIRST) == NeedCredentials("user")
    assert mech.credentials(creds, b"x" * 16) == Challenge(SERVER_FIRST)
    assert mech.respond(CLIENT_FINAL) == Challenge(SERVER_FINAL)
    assert mech.respond(b"") == Authenticated("user")


def test_scram_wrong_password_fails() -> None:
    mech, _ = _scram()
    mech.start(CLIENT_FIRST)
    mech.credentials(ScramCredentials.derive("not-pencil", SALT), b"x" * 16)
    assert isinstance(mech.respond(CLIENT_FINAL), Failed)


def test_scram_unknown_user_fails_after_a_plausible_challenge() -> None:
    mech, _ = _scram()
    mech.start(CLIENT_FIRST)
    step = mech.credentials(None, SALT)
    assert step == Challenge(SERVER_FIRST)
    assert isinstance(mech.respond(CLIENT_FINAL), Failed)


def test_scram_refuses_channel_binding_and_tampered_nonce() -> None:
    mech, _ = _scram()
    assert isinstance(mech.start(b"p=tls-unique,,n=user,r=abc"), Failed)
    mech, creds = _scram()
    mech.start(CLIENT_FIRST)
    mech.credentials(creds, SALT)
    assert isinstance(mech.respond(CLIENT_FINAL.replace(b"r=rOpr", b"r=XOpr")), Failed)


def test_plain() -> None:
    assert PlainMechanism().start(b"\0alice\0secret") == VerifyPassword("alice", "secret", "")
    assert PlainMechanism().start(None) == Challenge(b"")
    assert isinstance(PlainMechanism().start(b"alice\0secret"), Failed)
    assert isinstance(PlainMechanism().start(b"\0\0secret"), Failed)


def test_login() -> None:
    mech = LoginMechanism()
    assert mech.start(None) == Challenge(b"Username:")
    assert mech.respond(b"alice") == Challenge(b"Password:")
    assert mech.respond(b"secret") == VerifyPassword("alice", "secret", "")


def test_unknown_mechanism() -> None:
    assert new_mechanism("CRAM-MD5", lambda: "n") is None
    assert isinstance(new_mechanism("scram-sha-256", lambda: "n"), ScramSha256Mechanism)


def test_scram_passes_the_authzid_on_for_the_session_to_judge() -> None:
    # RFC 5802 §5.1: gs2-header "n,a=saslname,"; the name is escaped like n= ("=2C" is ",").
    mech, _ = _scram()
    assert mech.start(b"n,a=bob=2Cx@users.test,n=user,r=abc") == NeedCredentials(
        "user", "bob,x@users.test"
    )
    for bad in (b"n,a=,n=user,r=abc", b"n,a=b=ZZ,n=user,r=abc", b"n,x=bob,n=user,r=abc"):
        assert isinstance(_scram()[0].start(bad), Failed), bad
