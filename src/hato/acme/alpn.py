"""TLS-ALPN-01 (RFC 8737): the ACME server opens TLS to port 443 of the name offering only the
ALPN protocol "acme-tls/1", and expects a self-signed certificate for the name that carries
the SHA-256 of the key authorization in a critical acmeIdentifier extension (§3).

certbot's `acme` library no longer ships this challenge, so its two message types are
registered here (the JSON of a challenge is decoded by `typ` through that registry); the JWS
and the key authorization stay the library's. The answers are served by a small TLS listener
of its own (`tls_address`): an SNI callback picks the challenge certificate for the name, the
handshake is the whole exchange, and the connection is closed.
"""

from __future__ import annotations

import asyncio
import datetime
import hashlib
import ssl
import tempfile
from pathlib import Path
from typing import Any

from acme import challenges
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID, ObjectIdentifier

ALPN = "acme-tls/1"  # RFC 8737 §6.2
ID_PE_ACME_IDENTIFIER = ObjectIdentifier("1.3.6.1.5.5.7.1.31")  # RFC 8737 §6.1


@challenges.ChallengeResponse.register
class TLSALPN01Response(challenges.KeyAuthorizationChallengeResponse):
    """RFC 8737 §3: the response is an empty object, like http-01's (RFC 8555 §7.5.1)."""

    typ = "tls-alpn-01"


@challenges.Challenge.register
class TLSALPN01(challenges.KeyAuthorizationChallenge):
    response_cls = TLSALPN01Response
    typ = "tls-alpn-01"

    def validation(self, account_key: Any, **unused_kwargs: Any) -> str:
        return self.key_authorization(account_key)


def challenge_context(name: str, key_authorization: str) -> ssl.SSLContext:
    """A context presenting the RFC 8737 §3 certificate for `name`."""
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    digest = hashlib.sha256(key_authorization.encode("ascii")).digest()
    # RFC 8737 §3: extnValue is the DER of an OCTET STRING holding the 32-octet digest.
    extension = x509.UnrecognizedExtension(ID_PE_ACME_IDENTIFIER, b"\x04\x20" + digest)
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=7))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(name)]), critical=False)
        .add_extension(extension, critical=True)
        .sign(key, hashes.SHA256())
    )
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2  # RFC 8737 §4
    context.set_alpn_protocols([ALPN])
    with tempfile.TemporaryDirectory() as scratch:  # ssl loads certificates from files only
        pem = Path(scratch) / "challenge.pem"
        pem.write_bytes(
            cert.public_bytes(serialization.Encoding.PEM)
            + key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        )
        context.load_cert_chain(str(pem))
    return context


class AlpnAnswers:
    """The challenge contexts by name, and the listener that presents them."""

    challenge = TLSALPN01

    def __init__(self) -> None:
        self._contexts: dict[str, ssl.SSLContext] = {}
        self.front = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.front.minimum_version = ssl.TLSVersion.TLSv1_2
        self.front.set_alpn_protocols([ALPN])
        self.front.sni_callback = self._pick

    def put(self, name: str, _token: str, key_authorization: str) -> None:
        self._contexts[name.lower()] = challenge_context(name, key_authorization)

    def remove(self, name: str, _token: str) -> None:
        self._contexts.pop(name.lower(), None)

    def _pick(
        self, conn: ssl.SSLObject | ssl.SSLSocket, name: str | None, _ctx: ssl.SSLContext
    ) -> int | None:
        # RFC 8737 §3: the server sends SNI with the name; without one there is nothing to say.
        found = self._contexts.get((name or "").lower())
        if found is None:
            return ssl.ALERT_DESCRIPTION_UNRECOGNIZED_NAME
        conn.context = found
        return None

    async def serve(self, host: str, port: int) -> asyncio.AbstractServer:
        async def close(_reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            writer.close()  # the handshake was the answer (RFC 8737 §3)

        return await asyncio.start_server(
            close, host, port, ssl=self.front, ssl_handshake_timeout=10, reuse_address=True
        )
