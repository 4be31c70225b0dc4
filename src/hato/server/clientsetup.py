"""What receivers and mail clients fetch from the web endpoint: the MTA-STS policy file
(RFC 8461 §3.2) and the automatic client configuration (Thunderbird's autoconfig
``config-v1.1.xml``, Microsoft's Autodiscover POX), as pure functions of the published values.

Theory of operation. The composition root turns the configuration into one `Publication` per
local domain; `hato dns` prints the same values' DNS side (the ``_mta-sts`` TXT record whose id
is `policy_id`, the RFC 6186 SRV records), so the id changes exactly when the served policy text
does. `server/web.py` answers HTTP requests with these texts, chosen by the Host header.

May import model only.
"""

from __future__ import annotations

import enum
import hashlib
from collections.abc import Mapping
from dataclasses import dataclass
from xml.sax.saxutils import escape


class SubmissionSecurity(enum.Enum):
    """How a submission port starts TLS."""

    IMPLICIT = "implicit"  # RFC 8314 §3.3: TLS from the first byte (port 465)
    STARTTLS = "starttls"  # RFC 6409 + RFC 3207 (port 587)


@dataclass(frozen=True, slots=True)
class SubmissionPort:
    port: int
    security: SubmissionSecurity


@dataclass(frozen=True, slots=True)
class Publication:
    """What one local domain publishes for senders (MTA-STS) and for its users' clients."""

    domain: str  # lower-case A-labels
    hostname: str  # our MX and submission host
    sts_mode: str  # RFC 8461 §5: "enforce", "testing" or "none"
    sts_max_age: int  # seconds, RFC 8461 §3.2: at most 31557600
    submission: tuple[SubmissionPort, ...]  # implicit TLS first (RFC 8314 §3.3 prefers it)
    imap_port: int | None  # IMAP over implicit TLS (RFC 8314 §3.3) on `hostname`, or none


class Published:
    """The publications of the configuration in force, by domain; a reload swaps `current`
    (a changed [[domain]] mta_sts_mode is served at once, as `hato dns` prints its id)."""

    def __init__(self, current: Mapping[str, Publication] | None = None) -> None:
        self.current: Mapping[str, Publication] = current or {}


def sts_policy(pub: Publication) -> str:
    """RFC 8461 §3.2: the policy file, ``key: value`` lines; version first; one mx line per
    MX host (ours is the only one); max_age in seconds."""
    return (
        f"version: STSv1\r\nmode: {pub.sts_mode}\r\nmx: {pub.hostname}\r\n"
        f"max_age: {pub.sts_max_age}\r\n"
    )


def policy_id(pub: Publication) -> str:
    """RFC 8461 §3.1: ``id = 1*32(ALPHA / DIGIT)``, which senders compare to decide whether to
    fetch the policy again: a hash of the policy text changes exactly when the text does."""
    return hashlib.sha256(sts_policy(pub).encode()).hexdigest()[:32]


def sts_record(pub: Publication) -> str:
    """RFC 8461 §3.1: the TXT record at ``_mta-sts.DOMAIN``."""
    return f"v=STSv1; id={policy_id(pub)}"


_THUNDERBIRD_SOCKET = {SubmissionSecurity.IMPLICIT: "SSL", SubmissionSecurity.STARTTLS: "STARTTLS"}


def autoconfig_xml(pub: Publication) -> str:
    """Thunderbird's clientConfig 1.1 (https://wiki.mozilla.org/Thunderbird:Autoconfiguration:
    ConfigFileFormat): our IMAP server if any, and every submission port. The user name is the
    whole address, as SMTP AUTH here takes it; the password goes inside TLS only."""
    host = escape(pub.hostname)
    domain = escape(pub.domain)
    lines = [
        '<?xml version="1.0" encoding="UTF-8"?>',
        '<clientConfig version="1.1">',
        f'  <emailProvider id="{domain}">',
        f"    <domain>{domain}</domain>",
        f"    <displayName>{domain}</displayName>",
        f"    <displayShortName>{domain}</displayShortName>",
    ]
    if pub.imap_port is not None:
        lines += _server("incomingServer", "imap", host, pub.imap_port, "SSL")
    for sub in pub.submission:
        socket_type = _THUNDERBIRD_SOCKET[sub.security]
        lines += _server("outgoingServer", "smtp", host, sub.port, socket_type)
    lines += ["  </emailProvider>", "</clientConfig>", ""]
    return "\n".join(lines)


def _server(element: str, kind: str, host: str, port: int, socket_type: str) -> list[str]:
    return [
        f'    <{element} type="{kind}">',
        f"      <hostname>{host}</hostname>",
        f"      <port>{port}</port>",
        f"      <socketType>{socket_type}</socketType>",
        "      <username>%EMAILADDRESS%</username>",
        "      <authentication>password-cleartext</authentication>",
        f"    </{element}>",
    ]


_AUTODISCOVER = "http://schemas.microsoft.com/exchange/autodiscover/responseschema/2006"
_OUTLOOK = "http://schemas.microsoft.com/exchange/autodiscover/outlook/responseschema/2006a"
_ENCRYPTION = {SubmissionSecurity.IMPLICIT: "SSL", SubmissionSecurity.STARTTLS: "TLS"}


def autodiscover_xml(pub: Publication, address: str) -> str:
    """Microsoft's Autodiscover POX answer ([MS-OXDSCLI] §2.2.4): one Protocol element per
    service, the login name being the whole address."""
    host = escape(pub.hostname)
    login = escape(address)
    protocols: list[str] = []
    if pub.imap_port is not None:
        protocols += _protocol("IMAP", host, pub.imap_port, login, "SSL")
    for sub in pub.submission:
        protocols += _protocol("SMTP", host, sub.port, login, _ENCRYPTION[sub.security])
    return "\n".join(
        [
            '<?xml version="1.0" encoding="utf-8"?>',
            f'<Autodiscover xmlns="{_AUTODISCOVER}">',
            f'  <Response xmlns="{_OUTLOOK}">',
            "    <Account>",
            "      <AccountType>email</AccountType>",
            "      <Action>settings</Action>",
            *protocols,
            "    </Account>",
            "  </Response>",
            "</Autodiscover>",
            "",
        ]
    )


def _protocol(kind: str, host: str, port: int, login: str, encryption: str) -> list[str]:
    return [
        "      <Protocol>",
        f"        <Type>{kind}</Type>",
        f"        <Server>{host}</Server>",
        f"        <Port>{port}</Port>",
        f"        <LoginName>{login}</LoginName>",
        "        <DomainRequired>off</DomainRequired>",
        "        <SPA>off</SPA>",
        f"        <Encryption>{encryption}</Encryption>",
        "        <AuthRequired>on</AuthRequired>",
        "      </Protocol>",
    ]
