"""TLS policy decisions: table levels, MTA-STS, DANE precedence, REQUIRETLS."""

from hato.delivery.dane import DaneLookup, DaneState
from hato.delivery.mtasts import StsMode, StsPolicy
from hato.delivery.tlspolicy import HopTls, PolicyInputs, PolicyRefusal, TlsLevel, decide
from hato.model.dns import TlsaRecord

ENFORCE = StsPolicy(StsMode.ENFORCE, ("mx.example.com",), 86400)
TESTING = StsPolicy(StsMode.TESTING, ("mx.example.com",), 86400)
ACTIVE = DaneLookup(DaneState.ACTIVE, (TlsaRecord(3, 1, 1, b"\x00" * 32),))
UNUSABLE = DaneLookup(DaneState.UNUSABLE, (TlsaRecord(2, 1, 1, b"\x00" * 32),))
NONE = DaneLookup(DaneState.NONE)
TEMPFAIL = DaneLookup(DaneState.TEMPFAIL)


def _level(result: HopTls | PolicyRefusal) -> TlsLevel:
    assert isinstance(result, HopTls), result
    return result.level


def _refused(result: HopTls | PolicyRefusal) -> str:
    assert isinstance(result, PolicyRefusal), result
    assert result.reply.code == 451 and result.reply.enhanced == "4.7.5"
    return result.reply.text


def test_default_is_opportunistic() -> None:
    assert _level(decide(PolicyInputs("example.com"), "mx.example.com", None, False)) is (
        TlsLevel.MAY
    )


def test_table_levels_are_used() -> None:
    for level in (TlsLevel.NONE, TlsLevel.MAY, TlsLevel.ENCRYPT, TlsLevel.VERIFY):
        assert _level(decide(PolicyInputs("example.com", level), "mx", NONE, False)) is level


def test_mta_sts_enforce_requires_match_and_verification() -> None:
    inputs = PolicyInputs("example.com", sts=ENFORCE)
    assert _level(decide(inputs, "mx.example.com", None, False)) is TlsLevel.VERIFY
    text = _refused(decide(inputs, "evil.example.org", None, False))
    assert text == (
        "TLS required by MTA-STS policy of example.com: evil.example.org does not match its mx"
    )


def test_mta_sts_testing_only_logs() -> None:
    inputs = PolicyInputs("example.com", sts=TESTING)
    assert _level(decide(inputs, "evil.example.org", None, False)) is TlsLevel.MAY


def test_dane_wins_over_mta_sts_and_cannot_fall_back() -> None:
    inputs = PolicyInputs("example.com", sts=ENFORCE)
    hop = decide(inputs, "other.example.com", ACTIVE, False)
    assert _level(hop) is TlsLevel.DANE
    assert isinstance(hop, HopTls) and hop.dane is ACTIVE and hop.verified
    assert _level(decide(PolicyInputs("x.test"), "mx", UNUSABLE, False)) is TlsLevel.ENCRYPT
    assert "TLSA lookup for mx failed" in _refused(
        decide(PolicyInputs("x.test"), "mx", TEMPFAIL, False)
    )


def test_configured_dane_without_records_refuses() -> None:
    inputs = PolicyInputs("example.com", TlsLevel.DANE)
    assert "no DNSSEC-validated TLSA records for mx" in _refused(decide(inputs, "mx", NONE, True))
    assert _level(decide(inputs, "mx", ACTIVE, True)) is TlsLevel.DANE


def test_configured_none_turns_tls_off_even_with_mta_sts() -> None:
    inputs = PolicyInputs("example.com", TlsLevel.NONE, sts=ENFORCE)
    assert _level(decide(inputs, "anything", ACTIVE, False)) is TlsLevel.NONE


def test_requiretls_needs_a_trusted_route_and_verified_tls() -> None:
    plain = PolicyInputs("example.com", requiretls=True)
    refused = decide(plain, "mx.example.com", None, route_trusted=False)
    # RFC 8689 §4.2.1 step 2: permanent for this host (RFC 5248: 5.7.30).
    assert isinstance(refused, PolicyRefusal) and refused.reply.enhanced == "5.7.30"
    assert (
        refused.reply.code == 550 and "neither DNSSEC-validated nor MTA-STS" in refused.reply.text
    )
    assert _level(decide(plain, "mx.example.com", None, route_trusted=True)) is TlsLevel.VERIFY
    sts = PolicyInputs("example.com", sts=ENFORCE, requiretls=True)
    assert _level(decide(sts, "mx.example.com", None, route_trusted=False)) is TlsLevel.VERIFY
    assert _level(decide(plain, "mx", ACTIVE, route_trusted=False)) is TlsLevel.DANE
    off = PolicyInputs("example.com", TlsLevel.NONE, requiretls=True)
    assert _level(decide(off, "mx", None, route_trusted=True)) is TlsLevel.VERIFY


def test_tls_required_no_ignores_dane_and_mta_sts() -> None:
    # RFC 8689 §4.2.2: the recipient's policies are ignored; STARTTLS is still tried.
    sts = PolicyInputs("example.com", sts=ENFORCE, tls_optional=True)
    assert _level(decide(sts, "evil.example.org", None, False)) is TlsLevel.MAY
    assert _level(decide(sts, "mx", ACTIVE, False)) is TlsLevel.MAY
    assert _level(decide(sts, "mx", TEMPFAIL, False)) is TlsLevel.MAY
    table = PolicyInputs("example.com", TlsLevel.ENCRYPT, tls_optional=True)
    assert _level(decide(table, "mx", ACTIVE, False)) is TlsLevel.ENCRYPT  # the admin's own
    dane = PolicyInputs("example.com", TlsLevel.DANE, tls_optional=True)
    assert _level(decide(dane, "mx", NONE, False)) is TlsLevel.MAY
    # REQUIRETLS wins over the header (RFC 8689 §4.1).
    both = PolicyInputs("example.com", sts=ENFORCE, requiretls=True, tls_optional=True)
    assert isinstance(decide(both, "evil.example.org", None, False), PolicyRefusal)
