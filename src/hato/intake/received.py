"""The Received: trace header we prepend (RFC 5321 §4.4, RFC 3848 / RFC 6531 "with" keywords)."""

from __future__ import annotations

import email.utils
import functools
from dataclasses import dataclass

from hato.model import Address, AddressError, domain_a_label, normalize_domain
from hato.model.frozen import quick_init


@quick_init
@dataclass(frozen=True, slots=True)
class TraceInfo:
    helo: str
    client_ip: str
    hostname: str
    esmtp: bool
    tls: bool
    authenticated: bool
    smtputf8: bool
    tls_detail: str = ""  # e.g. "version=TLSv1.3 cipher=TLS_AES_256_GCM_SHA384"


def with_keyword(info: TraceInfo) -> str:
    """RFC 3848 §2: SMTP / ESMTP / ESMTPA / ESMTPS / ESMTPSA; RFC 6531 §4.3 adds UTF8 forms."""
    if not info.esmtp:
        return "SMTP"
    word = "ESMTP" + ("S" if info.tls else "") + ("A" if info.authenticated else "")
    return ("UTF8" + word[1:]) if info.smtputf8 else word


def _clean(text: str) -> str:
    # The HELO name comes from the peer: keep it to printable characters without parentheses
    # so it cannot break out of the comment or forge header lines (RFC 5322 §3.2.2 ccontent).
    return "".join(ch for ch in text if ch.isprintable() and ch not in "()\\")[:255]


def _helo_text(info: TraceInfo) -> str:
    return _helo_field(info.helo, info.smtputf8)


# A long session repeats one HELO name in every message's Received line: its check is kept.
@functools.lru_cache(maxsize=1024)
def _helo_field(helo: str, smtputf8: bool) -> str:
    """The HELO name as the header may carry it. Without SMTPUTF8 the message is ASCII only
    (RFC 5322 §2.2; RFC 6532 §3 allows UTF-8 only for SMTPUTF8 mail, RFC 6531 §3.7.3), so a
    U-label name is written in its A-label form (RFC 5890 §2.3.2.1); anything else that is
    not ASCII (the core refuses such names; this is the last line) is dropped."""
    name = _clean(helo)
    if smtputf8 or name.isascii():
        return name
    try:
        return domain_a_label(normalize_domain(name))
    except AddressError:
        return "".join(ch for ch in name if ch.isascii())


# formatdate's text for the last whole second asked (one Received line per message: the same
# second again and again on a busy server; email.utils takes ~10 us to make it).
_last_date: tuple[int, str] = (-1, "")


def rfc5322_date(when: float) -> str:
    """`email.utils.formatdate(when)` (UTC, RFC 5322 §3.3) with the zone "+0000", remembered
    for its second."""
    global _last_date
    second = int(when)
    if when < 0 or when - second >= 0.999999:
        # The microsecond rounding of formatdate may carry into the next second: ask it.
        return _utc_zone(email.utils.formatdate(when, localtime=False))
    cached_second, text = _last_date
    if cached_second != second:
        text = _utc_zone(email.utils.formatdate(second, localtime=False))
        _last_date = (second, text)
    return text


def _utc_zone(text: str) -> str:
    # RFC 5322 §3.3: "+0000" SHOULD be used for Universal Time; "-0000" (formatdate's) says
    # the local zone is unknown, and we write UTC on purpose.
    return text.removesuffix("-0000") + "+0000" if text.endswith("-0000") else text


def received_header(
    info: TraceInfo, queue_id: str, recipients: list[Address], when: float
) -> bytes:
    """RFC 5321 §4.4 Time-stamp-line. "for" names the recipient only when there is one,
    so a message to many does not disclose the others (RFC 5321 §7.2)."""
    ip = info.client_ip
    literal = f"IPv6:{ip}" if ":" in ip else ip
    lines = [f"Received: from {_helo_text(info) or 'unknown'} ([{literal}])"]
    by = f"\tby {info.hostname} (Hato) with {with_keyword(info)}"
    if info.tls and info.tls_detail:
        lines.append(f"\t({info.tls_detail})")
    lines.append(f"{by} id {queue_id}")
    stamp = rfc5322_date(when)
    if len(recipients) == 1:
        lines.append(f"\tfor <{recipients[0]}>; {stamp}")
    else:
        lines[-1] += ";"
        lines.append(f"\t{stamp}")
    return ("\r\n".join(lines) + "\r\n").encode("utf-8")
