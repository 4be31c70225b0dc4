"""DANE for SMTP (RFC 7672): TLSA lookup for an MX host and matching the peer's certificate.

Theory of operation: `lookup_tlsa` asks for ``_PORT._tcp.HOST`` TLSA records through the
validating resolver the admin configured, and believes only an answer with the AD bit (RFC 7672
§2.2: records that are not DNSSEC-validated are ignored). The result is a `DaneLookup`:
- `usable` records present -> the TLS connection is mandatory and the peer's leaf certificate
  must match one of them (`DaneLookup.verifier`, handed to the SMTP driver as `verify_peer`);
- TLSA records present but none usable -> TLS is still mandatory, without authentication
  (RFC 7672 §2.2: "unusable" TLSA records do not allow a fall back to plaintext);
- an authenticated denial (NXDOMAIN/NODATA) or an insecure answer -> no DANE for this host;
- TEMPFAIL on the TLSA query -> the host cannot be used now (RFC 7672 §2.2.1: a lookup failure
  of a secure zone must not downgrade to plaintext).

Usage 3 (DANE-EE) is implemented with selectors 0/1 and matching types 0/1/2 (RFC 6698 §2.1).
Usage 2 (DANE-TA) needs the peer's chain, which the driver does not hand over: such records are
counted as unusable and logged. Usages 0 and 1 (PKIX-TA/PKIX-EE) are unusable for SMTP (RFC
7672 §3.1.3).

Must not import anything of hato but model (and cryptography).
"""

from __future__ import annotations

import enum
import hashlib
import hmac
import logging
from collections.abc import Callable
from dataclasses import dataclass

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from hato.model import logfmt
from hato.model.dns import DnsStatus, RdType, Resolver, TlsaRecord

log = logging.getLogger("hato.delivery.dane")

# RFC 6698 §7.2-§7.4 / RFC 7218 acronyms
DANE_TA = 2
DANE_EE = 3
SELECTOR_CERT = 0
SELECTOR_SPKI = 1
MATCH_FULL = 0
MATCH_SHA256 = 1
MATCH_SHA512 = 2


class DaneState(enum.Enum):
    NONE = "none"  # no (secure) TLSA records: DANE does not apply
    ACTIVE = "active"  # usable records: TLS required, certificate must match
    UNUSABLE = "unusable"  # records present, none usable: TLS required, not authenticated
    TEMPFAIL = "tempfail"  # could not find out: do not use this host now


@dataclass(frozen=True, slots=True)
class DaneLookup:
    state: DaneState
    records: tuple[TlsaRecord, ...] = ()
    detail: str = ""

    @property
    def requires_tls(self) -> bool:
        return self.state in (DaneState.ACTIVE, DaneState.UNUSABLE)

    def verifier(self) -> Callable[[bytes], bool] | None:
        """The driver's `verify_peer` for an ACTIVE lookup: True when the leaf certificate
        (DER) matches one usable record."""
        if self.state is not DaneState.ACTIVE:
            return None
        records = self.records
        return lambda der: any(tlsa_matches(r, der) for r in records)


def tlsa_name(host: str, port: int) -> str:
    """RFC 7672 §2.2.3 / RFC 6698 §3: ``_25._tcp.mx.example.com``."""
    return f"_{port}._tcp.{host.rstrip('.')}"


def is_usable(record: TlsaRecord) -> bool:
    """RFC 7672 §3.1: usage 3 with a known selector and matching type. (Usage 2 is left out,
    see the module docstring; usages 0/1 are not for SMTP, RFC 7672 §3.1.3.)"""
    return (
        record.usage == DANE_EE
        and record.selector in (SELECTOR_CERT, SELECTOR_SPKI)
        and record.mtype in (MATCH_FULL, MATCH_SHA256, MATCH_SHA512)
    )


def tlsa_data(cert_der: bytes, selector: int, mtype: int) -> bytes:
    """The certificate association data of RFC 6698 §2.1.2-§2.1.3 for a DER certificate."""
    if selector == SELECTOR_CERT:
        selected = cert_der
    elif selector == SELECTOR_SPKI:
        cert = x509.load_der_x509_certificate(cert_der)
        selected = cert.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    else:
        raise ValueError(f"unknown TLSA selector {selector}")
    if mtype == MATCH_FULL:
        return selected
    if mtype == MATCH_SHA256:
        return hashlib.sha256(selected).digest()
    if mtype == MATCH_SHA512:
        return hashlib.sha512(selected).digest()
    raise ValueError(f"unknown TLSA matching type {mtype}")


def tlsa_matches(record: TlsaRecord, cert_der: bytes) -> bool:
    """RFC 7672 §3.1.1: a DANE-EE record matches the leaf certificate; names and expiry are
    not checked (the key binding is the authentication)."""
    if not is_usable(record):
        return False
    try:
        data = tlsa_data(cert_der, record.selector, record.mtype)
    except ValueError:  # a certificate we cannot parse matches nothing
        return False
    return hmac.compare_digest(data, record.data)


async def lookup_tlsa(resolver: Resolver, host: str, port: int) -> DaneLookup:
    """TLSA records for `host`:`port` from the validating `resolver`."""
    name = tlsa_name(host, port)
    answer = await resolver.query(name, RdType.TLSA)
    if answer.status is DnsStatus.TEMPFAIL:
        # RFC 7672 §2.2: a failed lookup must not be mistaken for "no records".
        return DaneLookup(DaneState.TEMPFAIL, detail=f"TLSA {name}: {answer.detail}")
    if not answer.ok or not answer.authenticated:
        # RFC 7672 §2.2: only DNSSEC-validated TLSA records are used.
        return DaneLookup(DaneState.NONE)
    records = answer.tlsa()
    usable = tuple(r for r in records if is_usable(r))
    if not usable:
        if any(r.usage == DANE_TA for r in records):
            log.warning(logfmt("dane-usage-unsupported", host=host, usage=DANE_TA))
        return DaneLookup(DaneState.UNUSABLE, records, f"TLSA {name}: no usable record")
    return DaneLookup(DaneState.ACTIVE, usable)
