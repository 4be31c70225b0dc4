"""SASL server mechanisms for SMTP AUTH (RFC 4954): PLAIN, LOGIN, SCRAM-SHA-256.

Sans-IO: a mechanism takes the client's decoded responses and returns the next step. Password
checks (argon2id, slow) are not done here: PLAIN and LOGIN return the claimed credentials for the
session to verify off the event loop; SCRAM asks for the user's stored credentials and checks the
proof itself (RFC 5802 §5), so no password ever reaches the server.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
from collections.abc import Callable
from dataclasses import dataclass

from hato.model.auth import SCRAM_ITERATIONS, ScramCredentials

MECHANISMS = ("PLAIN", "LOGIN", "SCRAM-SHA-256")


@dataclass(frozen=True, slots=True)
class Challenge:
    """Send a 334 continuation with these bytes (base64-encoded by the core)."""

    data: bytes


@dataclass(frozen=True, slots=True)
class VerifyPassword:
    """PLAIN/LOGIN: the session must check this password (then answer 235 or 535)."""

    username: str
    password: str
    authzid: str


@dataclass(frozen=True, slots=True)
class NeedCredentials:
    """SCRAM: call `mechanism.credentials(...)` with the stored credentials of `username`
    (or None for an unknown user, which then fails the same way as a wrong password).
    `authzid` is the identity asked for in the gs2-header ("" if none): the session must
    fail the exchange unless the login may act as it (RFC 5802 §5.1)."""

    username: str
    authzid: str = ""


@dataclass(frozen=True, slots=True)
class Authenticated:
    username: str


@dataclass(frozen=True, slots=True)
class Failed:
    """Authentication failed; `reason` is for the log only, never for the peer."""

    reason: str


Step = Challenge | VerifyPassword | NeedCredentials | Authenticated | Failed


def _text(data: bytes) -> str | None:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return None


class PlainMechanism:
    """RFC 4616: message = [authzid] UTF8NUL authcid UTF8NUL passwd."""

    def start(self, initial: bytes | None) -> Step:
        # RFC 4954 §4: with no initial response the server sends an empty challenge.
        return Challenge(b"") if initial is None else self.respond(initial)

    def respond(self, data: bytes) -> Step:
        parts = data.split(b"\0")
        if len(parts) != 3:
            return Failed("plain: malformed message")
        authzid, authcid, password = (_text(p) for p in parts)
        if authzid is None or authcid is None or password is None or not authcid:
            return Failed("plain: malformed message")
        return VerifyPassword(authcid, password, authzid)


class LoginMechanism:
    """The de-facto LOGIN mechanism (draft-murchison-sasl-login): "Username:", "Password:"."""

    def __init__(self) -> None:
        self.username: str | None = None

    def start(self, initial: bytes | None) -> Step:
        if initial is None or initial == b"":
            return Challenge(b"Username:")
        return self.respond(initial)

    def respond(self, data: bytes) -> Step:
        text = _text(data)
        if text is None:
            return Failed("login: not UTF-8")
        if self.username is None:
            if not text:
                return Failed("login: empty username")
            self.username = text
            return Challenge(b"Password:")
        return VerifyPassword(self.username, text, "")


def _saslname(value: str) -> str | None:
    # RFC 5802 §5.1: "=2C" is ",", "=3D" is "="; any other "=" is an error.
    out, i = [], 0
    while i < len(value):
        if value[i] == "=":
            code = value[i : i + 3]
            if code == "=2C":
                out.append(",")
            elif code == "=3D":
                out.append("=")
            else:
                return None
            i += 3
        else:
            out.append(value[i])
            i += 1
    return "".join(out)


class ScramSha256Mechanism:
    """RFC 5802 §5 with SHA-256 (RFC 7677); no channel binding (-PLUS is not offered)."""

    def __init__(self, nonce: Callable[[], str]) -> None:
        self._nonce = nonce
        self._stage = "first"
        self._gs2 = ""
        self._client_first_bare = ""
        self._server_first = ""
        self._full_nonce = ""
        self._username = ""
        self._creds: ScramCredentials | None = None
        self._server_signature = b""

    def start(self, initial: bytes | None) -> Step:
        return Challenge(b"") if initial is None else self.respond(initial)

    def respond(self, data: bytes) -> Step:
        text = _text(data)
        if text is None:
            return Failed("scram: not UTF-8")
        if self._stage == "first":
            return self._client_first(text)
        if self._stage == "final":
            return self._client_final(text)
        if self._stage == "done":
            # RFC 4954 §4: the client answers our server-final challenge with an empty line.
            return Authenticated(self._username) if text == "" else Failed("scram: extra data")
        return Failed("scram: unexpected message")

    def _client_first(self, text: str) -> Step:
        # gs2-header = gs2-cbind-flag "," [ authzid ] ","
        parts = text.split(",", 2)
        if len(parts) != 3 or parts[0] not in ("n", "y"):
            # "p=..." asks for channel binding, which we do not offer (RFC 5802 §6).
            return Failed("scram: channel binding not supported or malformed gs2 header")
        if parts[1] and not parts[1].startswith("a="):
            return Failed("scram: malformed authzid")
        # RFC 5802 §5.1: a=saslname, the identity to act as (escaped like n=).
        authzid = _saslname(parts[1][2:]) if parts[1] else ""
        if authzid is None or (parts[1] and not authzid):
            return Failed("scram: malformed authzid")
        self._gs2 = f"{parts[0]},{parts[1]},"
        bare = parts[2]
        attrs = bare.split(",")
        if len(attrs) < 2 or not attrs[0].startswith("n=") or not attrs[1].startswith("r="):
            return Failed("scram: malformed client-first-message")
        if attrs[0].startswith("m="):
            return Failed("scram: mandatory extension not supported")
        username = _saslname(attrs[0][2:])
        client_nonce = attrs[1][2:]
        if not username or not client_nonce or "," in client_nonce:
            return Failed("scram: malformed username or nonce")
        self._client_first_bare = bare
        self._username = username
        self._full_nonce = client_nonce + self._nonce()
        self._stage = "credentials"
        return NeedCredentials(username, authzid)

    def credentials(
        self,
        creds: ScramCredentials | None,
        fallback_salt: bytes,
        fallback_iterations: int = SCRAM_ITERATIONS,
    ) -> Step:
        """Continue after NeedCredentials. For an unknown user pass None: we answer with the
        fallback salt and count, which the caller keeps the same for the same name (a real
        account's never change either), so the exchange does not reveal whether it exists."""
        if self._stage != "credentials":
            return Failed("scram: credentials out of sequence")
        self._creds = creds
        salt = creds.salt if creds else fallback_salt
        iterations = creds.iterations if creds else fallback_iterations
        self._server_first = (
            f"r={self._full_nonce},s={base64.b64encode(salt).decode()},i={iterations}"
        )
        self._stage = "final"
        return Challenge(self._server_first.encode())

    def _client_final(self, text: str) -> Step:
        attrs = text.split(",")
        if len(attrs) < 3 or not attrs[-1].startswith("p="):
            return Failed("scram: malformed client-final-message")
        if attrs[0] != "c=" + base64.b64encode(self._gs2.encode()).decode():
            return Failed("scram: channel binding data mismatch")
        if attrs[1] != "r=" + self._full_nonce:
            return Failed("scram: nonce mismatch")
        try:
            proof = base64.b64decode(attrs[-1][2:], validate=True)
        except binascii.Error:
            return Failed("scram: bad proof encoding")
        without_proof = text[: text.rindex(",p=")]
        auth_message = f"{self._client_first_bare},{self._server_first},{without_proof}".encode()
        creds = self._creds
        if creds is None or len(proof) != 32:
            self._stage = "failed"
            return Failed("scram: unknown user or bad proof")
        client_signature = hmac.digest(creds.stored_key, auth_message, "sha256")
        client_key = bytes(a ^ b for a, b in zip(proof, client_signature, strict=True))
        if not hmac.compare_digest(hashlib.sha256(client_key).digest(), creds.stored_key):
            self._stage = "failed"
            return Failed("scram: wrong password")
        self._server_signature = hmac.digest(creds.server_key, auth_message, "sha256")
        self._stage = "done"
        return Challenge(b"v=" + base64.b64encode(self._server_signature))


Mechanism = PlainMechanism | LoginMechanism | ScramSha256Mechanism


def new_mechanism(name: str, nonce: Callable[[], str]) -> Mechanism | None:
    """The mechanism for an AUTH command, or None when we do not offer it (504 5.5.4)."""
    match name.upper():
        case "PLAIN":
            return PlainMechanism()
        case "LOGIN":
            return LoginMechanism()
        case "SCRAM-SHA-256":
            return ScramSha256Mechanism(nonce)
    return None
