"""The Web Key Directory hash and URLs (draft-koch-openpgp-webkey-service-18 §3.1).

Pure functions, no I/O; `wkd.py` serves and exports the keys.

Must not import anything of hato but model.
"""

from __future__ import annotations

import hashlib
import urllib.parse

from hato.model import Address

# draft-koch-openpgp-webkey-service §3.1: z-base-32 (RFC 6189 §5.1.6) alphabet.
_ZBASE32 = "ybndrfg8ejkmcpqxot1uwisza345h769"


def zbase32(data: bytes) -> str:
    """z-base-32 of `data`, 5 bits per character, most significant first, no padding."""
    number = int.from_bytes(data, "big")
    bits = len(data) * 8
    chars = (bits + 4) // 5
    number <<= chars * 5 - bits  # pad the last group with zero bits on the right
    return "".join(_ZBASE32[(number >> (5 * (chars - 1 - i))) & 31] for i in range(chars))


def wkd_hash(local: str) -> str:
    """The 32-character hash of a local part: SHA-1 of its lower-cased (ASCII only) UTF-8 form.

    draft-koch-openpgp-webkey-service §3.1: only upper-case ASCII letters are mapped to lower
    case; the SHA-1 digest (160 bits) is z-base-32 encoded.
    """
    lowered = "".join(ch.lower() if "A" <= ch <= "Z" else ch for ch in local)
    return zbase32(hashlib.sha1(lowered.encode("utf-8")).digest())


def _query(local: str) -> str:
    # §3.1: the l parameter carries the local part as given, percent-escaped.
    return urllib.parse.urlencode({"l": local}, quote_via=urllib.parse.quote)


def advanced_url(address: Address) -> str:
    """The advanced-method URL: the openpgpkey subdomain serves every domain's keys."""
    domain = address.domain_ascii.lower()
    hashed = wkd_hash(address.local)
    return f"https://openpgpkey.{domain}/.well-known/openpgpkey/{domain}/hu/{hashed}?" + _query(
        address.local
    )


def direct_url(address: Address) -> str:
    """The direct-method URL, on the domain itself."""
    domain = address.domain_ascii.lower()
    return f"https://{domain}/.well-known/openpgpkey/hu/{wkd_hash(address.local)}?" + _query(
        address.local
    )
