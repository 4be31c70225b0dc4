"""The Sender Rewriting Scheme (SRS), in libsrs2's format (as postsrsd and Exim write it).

Why: an alias of ours that forwards a message to another server would otherwise send it with
the original envelope sender, whose SPF does not list us (RFC 7208 §2.4: SPF checks the MAIL
FROM against the client's address), and the next hop's bounces would return to a sender we
never checked. So a forwarded copy goes out from an address of the forwarding alias's domain
that encodes the original sender, signed, and only that server's bounces can come back:

    SRS0=HHHH=TT=orig.domain=local@alias.domain        (we forward mail from local@orig.domain)
    SRS1=HHHH=first.domain==HHHH=TT=orig.domain=local@alias.domain
                                                        (we forward mail another forwarder
                                                         already rewrote as SRS0@first.domain)

TT is the day of the rewrite (two base32 characters, days mod 1024); HHHH the first four
characters of the base64 HMAC-SHA1, under our key, of the lower-cased fields (SRS0: TT, domain,
local; SRS1: first domain and the SRS0 rest), compared without regard to case since some MTAs
change the case of local parts. `reverse` turns an SRS0 address of ours back into the original
sender when its hash is right and it is at most `max_age` days old (a bounce comes within days),
and an SRS1 address into the SRS0 address of the first forwarder; anything else is None (the
caller answers 550 5.1.1).

The key is a random secret in the data directory (`srs.key`, mode 0600), made on first use; an
admin may put postsrsd's secret there to keep its addresses valid.

Must not import anything of hato but model. Time comes in as a parameter.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import hmac
import os
import secrets
from dataclasses import dataclass
from pathlib import Path

from hato.model import Address, AddressError

SRS_KEY = "srs.key"
MAX_AGE_DAYS = 21  # libsrs2's default
_SEPARATORS = "=-+"  # libsrs2 accepts these after the SRS0/SRS1 tag
_BASE32 = "ABCDEFGHIJKLMNOPQRSTUVWXYZ234567"
_DAY = 86_400
_SLOTS = 1024  # two base32 characters
_HASH_LENGTH = 4


@dataclass(frozen=True, slots=True)
class Srs:
    """Rewrites and reverses with one key (see the module docstring)."""

    key: bytes
    max_age: int = MAX_AGE_DAYS

    def forward(self, sender: Address, alias_domain: str, now: float) -> Address | None:
        """The envelope sender for `sender`'s mail forwarded by an alias of `alias_domain`;
        None when it cannot be written (RFC 5321 §4.5.3.1.1: a local part of at most 64
        octets, which a long original with the SRS fields can exceed)."""
        local, domain = sender.local, sender.domain
        tag = local[:4].upper()
        if tag == "SRS1" and local[4:5] in _SEPARATORS:
            # Already twice forwarded: keep the first forwarder, sign it again as ours.
            _, first, rest = _split(local[5:], 2)
            if first and rest:
                return self._srs1(first, rest, alias_domain)
        if tag == "SRS0" and local[4:5] in _SEPARATORS:
            return self._srs1(domain, local[4:], alias_domain)
        stamp = _stamp(now)
        digest = self._hash(stamp, domain, local)
        return _address(f"SRS0={digest}={stamp}={domain}={local}", alias_domain)

    def reverse(self, address: Address, now: float) -> Address | None:
        """Where a bounce to our SRS `address` goes, or None when it is not a valid one."""
        local = address.local
        tag, sep = local[:4].upper(), local[4:5]
        if sep not in _SEPARATORS or not sep:
            return None
        if tag == "SRS1":
            digest, first, rest = _split(local[5:], 2)
            if not (first and rest) or not self._valid(digest, first, rest):
                return None
            return _address(f"SRS0{rest}", first)
        if tag != "SRS0":
            return None
        digest, stamp, rest = _split(local[5:], 2)
        domain, _, user = rest.partition("=")
        if not (domain and user) or not self._fresh(stamp, now):
            return None
        if not self._valid(digest, stamp, domain, user):
            return None
        return _address(user, domain)

    def _srs1(self, first: str, rest: str, alias_domain: str) -> Address | None:
        return _address(f"SRS1={self._hash(first, rest)}={first}={rest}", alias_domain)

    def _hash(self, *fields: str) -> str:
        data = "".join(fields).lower().encode("utf-8")
        digest = hmac.new(self.key, data, hashlib.sha1).digest()
        return base64.b64encode(digest).decode("ascii")[:_HASH_LENGTH]

    def _valid(self, digest: str, *fields: str) -> bool:
        if len(digest) < _HASH_LENGTH:
            return False
        expected = self._hash(*fields).lower().encode()
        return hmac.compare_digest(digest[:_HASH_LENGTH].lower().encode(), expected)

    def _fresh(self, stamp: str, now: float) -> bool:
        if len(stamp) != 2 or any(c not in _BASE32 for c in stamp.upper()):
            return False
        then = _BASE32.index(stamp[0].upper()) * 32 + _BASE32.index(stamp[1].upper())
        today = int(now // _DAY) % _SLOTS
        while today < then:
            today += _SLOTS
        return today - then <= self.max_age


def is_srs(address: Address) -> bool:
    """Whether the local part has the form of an SRS address."""
    return address.local[:4].upper() in ("SRS0", "SRS1") and address.local[4:5] in _SEPARATORS


def load_key(data_dir: Path) -> bytes:
    """The SRS key of this data directory, made (random, mode 0600) when there is none. Safe
    when several processes start at once: the key is written to a file of its own name first
    and linked into place whole, so no one reads a half-written key; the first link wins."""
    path = data_dir / SRS_KEY
    if not path.exists():
        tmp = data_dir / f".{SRS_KEY}.{os.getpid()}.{secrets.token_hex(4)}"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            with os.fdopen(fd, "w") as f:
                f.write(secrets.token_urlsafe(32) + "\n")
                f.flush()
                os.fsync(f.fileno())
            with contextlib.suppress(FileExistsError):
                os.link(tmp, path)
        finally:
            tmp.unlink()
    key = path.read_text(encoding="utf-8").strip()
    if not key:
        raise ValueError(f"{path} is empty: delete it to have a new key made")
    return key.encode("utf-8")


def _stamp(now: float) -> str:
    day = int(now // _DAY)
    return _BASE32[(day >> 5) & 31] + _BASE32[day & 31]


def _split(text: str, count: int) -> tuple[str, str, str]:
    """The first `count` "="-separated fields and the rest (which may hold more "=")."""
    parts = text.split("=", count)
    parts += [""] * (count + 1 - len(parts))
    return parts[0], parts[1], parts[2]


def _address(local: str, domain: str) -> Address | None:
    try:
        return Address.parse(f"{local}@{domain}") if local and domain else None
    except AddressError:
        return None
