"""TLS server contexts: certificate files (certbot's layout works as is), a self-signed
certificate for the embedded default, and reloading when the files change.

RFC 8314 §4 and RFC 8996: TLS 1.2 is the minimum (TLS 1.0/1.1 are deprecated).
"""

from __future__ import annotations

import contextlib
import datetime
import ipaddress
import os
import ssl
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID


class TLSConfigError(Exception):
    """The certificate or key cannot be used; the message names the file and the fix."""


def server_context(cert: Path, key: Path) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    # RFC 8996 / RFC 8314 §4.1: no TLS 1.0 or 1.1.
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.options |= ssl.OP_NO_COMPRESSION | ssl.OP_CIPHER_SERVER_PREFERENCE
    context.options |= ssl.OP_NO_RENEGOTIATION
    try:
        context.load_cert_chain(str(cert), str(key))
    except FileNotFoundError as exc:
        raise TLSConfigError(f"tls: file {exc.filename} does not exist") from exc
    except PermissionError as exc:
        # ssl's PermissionError names no file (issue 13: "cannot read None").
        unreadable = exc.filename or next(
            (p for p in (key, cert) if not os.access(p, os.R_OK)), f"{cert} or {key}"
        )
        raise TLSConfigError(
            f"tls: cannot read {unreadable}: permission denied (hato runs as uid {os.geteuid()}); "
            "start hato as root with [server] user (it reads the files before dropping root), "
            "or give this user read access (chgrp + chmod g+r, or a certbot deploy hook)"
        ) from exc
    except ssl.SSLError as exc:
        # OpenSSL gives no reason for a file that holds no PEM block at all ("PEM lib").
        why = exc.reason or "no PEM certificate or key in them"
        raise TLSConfigError(
            f"tls: cert {cert} and key {key} do not load ({why}); "
            "give a PEM certificate chain and its matching private key"
        ) from exc
    return context


def self_signed_files(directory: Path) -> tuple[Path, Path]:
    """The self-signed certificate's and key's paths in `directory`."""
    return directory / "selfsigned-cert.pem", directory / "selfsigned-key.pem"


def ensure_self_signed(directory: Path, hostname: str) -> tuple[Path, Path]:
    """Create (once) a self-signed certificate for `hostname` in `directory`."""
    cert_path, key_path = self_signed_files(directory)
    if cert_path.exists() and key_path.exists():
        return cert_path, key_path
    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hostname)])
    now = datetime.datetime.now(datetime.UTC)
    alt_names: list[x509.GeneralName] = [x509.DNSName(hostname)]
    for literal in ("127.0.0.1", "::1"):
        alt_names.append(x509.IPAddress(ipaddress.ip_address(literal)))
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=825))
        .add_extension(x509.SubjectAlternativeName(alt_names), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    secret = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    _write_new(key_path, secret)
    _write_new(cert_path, cert.public_bytes(serialization.Encoding.PEM))
    return cert_path, key_path


def _write_new(path: Path, data: bytes) -> None:
    """`path` made anew (0600) and renamed into place: a link found at the temporary name or
    at `path` is replaced, never written through (the directory is the server user's)."""
    tmp = path.with_suffix(".tmp")
    with contextlib.suppress(FileNotFoundError):
        tmp.unlink()
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(data)
    os.replace(tmp, path)


@dataclass(slots=True)
class ReloadingContext:
    """Holds the current context; `refresh()` reloads it when the files changed.

    Sessions take `current` when a handshake starts, so a reload never drops a connection:
    existing sessions keep the context they began with.
    """

    cert: Path
    key: Path
    current: ssl.SSLContext
    stamp: tuple[float, float]

    @classmethod
    def load(cls, cert: Path, key: Path) -> ReloadingContext:
        return cls(cert, key, server_context(cert, key), _stamp(cert, key))

    def refresh(self, force: bool = False) -> bool:
        """Reload if the files changed (or `force`); keep the old context on a bad file."""
        try:
            stamp = _stamp(self.cert, self.key)
        except OSError:
            return False
        if not force and stamp == self.stamp:
            return False
        self.current = server_context(self.cert, self.key)
        self.stamp = stamp
        return True

    def front(self) -> ssl.SSLContext:
        """A context for servers that take one context for good (aiohttp's site): each
        handshake switches to `current`, so a reload reaches them too."""
        front = server_context(self.cert, self.key)

        def switch(
            conn: ssl.SSLObject | ssl.SSLSocket, _name: str | None, _ctx: ssl.SSLContext
        ) -> None:
            # Called at every ClientHello, with or without SNI (RFC 6066 §3).
            conn.context = self.current

        front.sni_callback = switch
        return front

    def not_after(self) -> datetime.datetime:
        cert = x509.load_pem_x509_certificate(self.cert.read_bytes())
        return cert.not_valid_after_utc


def _stamp(cert: Path, key: Path) -> tuple[float, float]:
    return (cert.stat().st_mtime, key.stat().st_mtime)
