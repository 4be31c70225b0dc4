"""What the server offers: the EHLO/LHLO reply parsed into `Capabilities` (RFC 5321 §4.1.1.1).

Must not import asyncio, socket, ssl, time or logging.
"""

from __future__ import annotations

from dataclasses import dataclass

from hato.model import Reply


@dataclass(frozen=True, slots=True)
class Capabilities:
    """The extensions a server advertised. `Capabilities()` is what a HELO-only peer offers."""

    esmtp: bool = False  # the server answered EHLO/LHLO (not only HELO)
    pipelining: bool = False  # RFC 2920
    size: int | None = None  # RFC 1870: None = SIZE not offered; 0 = no fixed maximum
    eight_bit_mime: bool = False  # RFC 6152
    smtputf8: bool = False  # RFC 6531
    chunking: bool = False  # RFC 3030
    binarymime: bool = False  # RFC 3030 §3
    starttls: bool = False  # RFC 3207
    auth: tuple[str, ...] = ()  # RFC 4954: mechanisms, upper-case
    dsn: bool = False  # RFC 3461
    enhanced_status_codes: bool = False  # RFC 2034
    requiretls: bool = False  # RFC 8689
    server_name: str = ""  # the first word of the reply's first line
    keywords: frozenset[str] = frozenset()  # every keyword, upper-case, also unknown ones


def parse_ehlo(reply: Reply) -> Capabilities:
    """Parse a positive EHLO/LHLO reply: "250-name greeting", then one keyword per line.

    RFC 5321 §4.1.1.1: ehlo-line = ehlo-keyword *( SP ehlo-param ); keywords are
    case-insensitive. Lines that are not a keyword are skipped (real servers send oddities).
    """
    lines = reply.text.split("\n")
    server_name = lines[0].split(" ", 1)[0] if lines and lines[0] else ""
    keywords: set[str] = set()
    values: dict[str, list[str]] = {}
    for line in lines[1:]:
        words = line.split()
        if not words:
            continue
        keyword = words[0].upper()
        # Some old servers wrote "AUTH=LOGIN PLAIN" (pre-RFC 4954 drafts); read it as AUTH.
        if keyword.startswith("AUTH="):
            words = ["AUTH", keyword[5:], *words[1:]]
            keyword = "AUTH"
        keywords.add(keyword)
        values.setdefault(keyword, []).extend(words[1:])
    return Capabilities(
        esmtp=True,
        pipelining="PIPELINING" in keywords,
        size=_size(keywords, values),
        eight_bit_mime="8BITMIME" in keywords,
        smtputf8="SMTPUTF8" in keywords,
        chunking="CHUNKING" in keywords,
        binarymime="BINARYMIME" in keywords,
        starttls="STARTTLS" in keywords,
        auth=tuple(dict.fromkeys(m.upper() for m in values.get("AUTH", []))),
        dsn="DSN" in keywords,
        enhanced_status_codes="ENHANCEDSTATUSCODES" in keywords,
        requiretls="REQUIRETLS" in keywords,
        server_name=server_name,
        keywords=frozenset(keywords),
    )


def _size(keywords: set[str], values: dict[str, list[str]]) -> int | None:
    if "SIZE" not in keywords:
        return None
    # RFC 1870 §4: "SIZE" [SP 1*20DIGIT]; absent or 0 means no fixed maximum announced.
    params = values.get("SIZE", [])
    if params and params[0].isdigit() and len(params[0]) <= 20:
        return int(params[0])
    return 0
