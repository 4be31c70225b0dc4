"""SPF (RFC 7208) beyond the standard suite: the identities (§2.3, §2.4), what a result
carries (mechanism, explanation, detail), limits, temperror paths, and the exp-only macros."""

from __future__ import annotations

import asyncio
import itertools

import pytest

from dnsserver import FakeResolver, FakeValue
from hato.authcheck.spf import SpfResult, SpfResultCode, check_helo, check_host, check_mail_from
from hato.model.dns import DnsStatus, MxRecord, RdType

NOW = 1_700_000_000.0


def _resolver(table: dict[tuple[str, RdType], FakeValue]) -> FakeResolver:
    return FakeResolver(table)


def _mail_from(
    ip: str, sender: str, resolver: FakeResolver, helo: str = "mta.client.example"
) -> SpfResult:
    return asyncio.run(
        check_mail_from(ip, sender, helo=helo, resolver=resolver, receiver="mx.hato.test", now=NOW)
    )


def test_pass_names_the_matching_mechanism() -> None:
    resolver = _resolver({("example.com", RdType.TXT): ["v=spf1 ip4:192.0.2.0/24 -all"]})
    result = _mail_from("192.0.2.77", "alice@example.com", resolver)
    assert result == SpfResult(SpfResultCode.PASS, "example.com", "ip4:192.0.2.0/24")


def test_fail_carries_the_expanded_explanation_with_exp_only_macros() -> None:
    resolver = _resolver(
        {
            ("example.com", RdType.TXT): ["v=spf1 -all exp=why.example.com"],
            ("why.example.com", RdType.TXT): ["%{c} not allowed for %{s} (asked %{r} at %{t})"],
        }
    )
    result = _mail_from("2001:db8::1", "alice@example.com", resolver)
    assert result.result is SpfResultCode.FAIL
    assert result.mechanism == "-all"
    assert result.explanation == (
        "2001:db8::1 not allowed for alice@example.com (asked mx.hato.test at 1700000000)"
    )


def test_null_sender_checks_postmaster_at_the_helo_domain() -> None:
    # RFC 7208 §2.4: MAIL FROM:<> means postmaster@<helo>; %{l} shows it.
    resolver = _resolver(
        {
            ("mta.client.example", RdType.TXT): ["v=spf1 exists:%{l}.%{d} -all"],
            ("postmaster.mta.client.example", RdType.A): ["127.0.0.2"],
        }
    )
    result = _mail_from("198.51.100.9", "", resolver)
    assert (result.result, result.domain) == (SpfResultCode.PASS, "mta.client.example")
    assert ("postmaster.mta.client.example", RdType.A) in resolver.asked


def test_helo_identity() -> None:
    resolver = _resolver(
        {
            ("mta.client.example", RdType.TXT): ["v=spf1 a -all"],
            ("mta.client.example", RdType.A): ["198.51.100.9"],
        }
    )
    good = asyncio.run(check_helo("198.51.100.9", "mta.client.example", resolver=resolver, now=NOW))
    bad = asyncio.run(check_helo("198.51.100.10", "mta.client.example", resolver=resolver, now=NOW))
    assert (good.result, bad.result) == (SpfResultCode.PASS, SpfResultCode.FAIL)


def test_no_record_and_single_label_domain_are_none() -> None:
    resolver = _resolver({("example.com", RdType.TXT): ["google-site-verification=xyz"]})
    assert _mail_from("192.0.2.1", "a@example.com", resolver).result is SpfResultCode.NONE
    assert _mail_from("192.0.2.1", "a@localhost", resolver).result is SpfResultCode.NONE


def test_two_spf_records_are_a_permerror() -> None:
    resolver = _resolver({("example.com", RdType.TXT): ["v=spf1 +all", "v=spf1 -all"]})
    result = _mail_from("192.0.2.1", "a@example.com", resolver)
    assert result.result is SpfResultCode.PERMERROR
    assert "2 SPF records" in result.detail


def test_dns_failure_is_temperror_at_top_and_inside_include() -> None:
    resolver = _resolver(
        {
            ("example.com", RdType.TXT): ["v=spf1 include:_spf.provider.example -all"],
            ("example.org", RdType.TXT): ["v=spf1 -all"],
        }
    )
    resolver.tempfail.add("provider.example")
    resolver.tempfail.add("example.net")
    assert _mail_from("192.0.2.1", "a@example.com", resolver).result is SpfResultCode.TEMPERROR
    assert _mail_from("192.0.2.1", "a@example.net", resolver).result is SpfResultCode.TEMPERROR
    assert _mail_from("192.0.2.1", "a@example.org", resolver).result is SpfResultCode.FAIL


def test_case_insensitive_version_and_mechanisms() -> None:
    resolver = _resolver({("example.com", RdType.TXT): ["V=SpF1 IP4:192.0.2.1 -ALL"]})
    assert _mail_from("192.0.2.1", "a@EXAMPLE.com", resolver).result is SpfResultCode.PASS


def test_ipv4_mapped_client_is_checked_as_ipv4() -> None:
    resolver = _resolver({("example.com", RdType.TXT): ["v=spf1 ip4:192.0.2.1 -all"]})
    assert _mail_from("::ffff:192.0.2.1", "a@example.com", resolver).result is SpfResultCode.PASS


def test_mx_with_cidr_and_softfail() -> None:
    resolver = _resolver(
        {
            ("example.com", RdType.TXT): ["v=spf1 mx/24 ~all"],
            ("example.com", RdType.MX): [MxRecord(10, "mx.example.com")],
            ("mx.example.com", RdType.A): ["192.0.2.10"],
        }
    )
    assert _mail_from("192.0.2.200", "a@example.com", resolver).result is SpfResultCode.PASS
    soft = _mail_from("192.0.3.1", "a@example.com", resolver)
    assert (soft.result, soft.mechanism) == (SpfResultCode.SOFTFAIL, "~all")


def test_ptr_needs_a_validated_name() -> None:
    resolver = _resolver(
        {
            ("example.com", RdType.TXT): ["v=spf1 ptr -all"],
            ("1.2.0.192.in-addr.arpa", RdType.PTR): ["mail.example.com"],
            ("mail.example.com", RdType.A): ["192.0.2.1"],
            ("2.2.0.192.in-addr.arpa", RdType.PTR): ["liar.example.com"],
            ("liar.example.com", RdType.A): ["203.0.113.5"],
        }
    )
    assert _mail_from("192.0.2.1", "a@example.com", resolver).result is SpfResultCode.PASS
    assert _mail_from("192.0.2.2", "a@example.com", resolver).result is SpfResultCode.FAIL


def _chain(length: int) -> dict[tuple[str, RdType], FakeValue]:
    """example.com includes i1, i1 includes i2, ...: `length` DNS-querying terms."""
    table: dict[tuple[str, RdType], FakeValue] = {}
    names = ["example.com"] + [f"i{n}.example.com" for n in range(1, length + 1)]
    for name, following in itertools.pairwise(names):
        table[(name, RdType.TXT)] = [f"v=spf1 include:{following} -all"]
    table[(names[-1], RdType.TXT)] = ["v=spf1 ip4:192.0.2.1 -all"]
    return table


@pytest.mark.parametrize(("length", "expected"), [(10, "pass"), (11, "permerror")])
def test_ten_dns_terms_at_most(length: int, expected: str) -> None:
    # RFC 7208 §4.6.4: the 11th DNS-querying term is a permerror.
    result = _mail_from("192.0.2.1", "a@example.com", _resolver(_chain(length)))
    assert result.result is SpfResultCode(expected)


def test_third_void_lookup_is_a_permerror() -> None:
    resolver = _resolver(
        {("example.com", RdType.TXT): ["v=spf1 a:n1.example.com a:n2.example.com a:n3.example.com"]}
    )
    result = _mail_from("192.0.2.1", "a@example.com", resolver)
    assert (result.result, result.detail) == (SpfResultCode.PERMERROR, "more than 2 void lookups")


def test_a_transformer_of_thousands_of_digits_keeps_every_part() -> None:
    # RFC 7208 §7.3: keep the rightmost N parts; a stranger's N of 4,400 digits was a ValueError
    # of int() that ended the session 421 internal error. More parts than a name has: all.
    digits, zeros = "9" * 4400, "0" * 4400
    resolver = _resolver({
        ("example.com", RdType.TXT): [f"v=spf1 exists:%{{d{digits}}}.x.example -all"],
        ("example.com.x.example", RdType.A): ["192.0.2.9"],
        ("zero.example", RdType.TXT): [f"v=spf1 exists:%{{d{zeros}}}.x.example -all"],
    })  # fmt: skip
    result = _mail_from("192.0.2.1", "a@example.com", resolver)
    assert result.result is SpfResultCode.PASS
    zero = _mail_from("192.0.2.1", "a@zero.example", resolver)
    assert (zero.result, zero.detail[:16]) == (SpfResultCode.PERMERROR, "zero transformer")


def test_syntax_error_anywhere_is_a_permerror_even_after_a_match() -> None:
    # RFC 7208 §4.6: the whole record is parsed before evaluation.
    resolver = _resolver({("example.com", RdType.TXT): ["v=spf1 +all ip4:300.1.1.1"]})
    assert _mail_from("192.0.2.1", "a@example.com", resolver).result is SpfResultCode.PERMERROR


def test_exp_of_an_include_is_not_used_but_that_of_a_redirect_is() -> None:
    # RFC 7208 §6.2: an include's exp= is never used; a redirect target's exp= replaces ours.
    resolver = _resolver(
        {
            ("example.com", RdType.TXT): ["v=spf1 redirect=_spf.example.com exp=e1.example.com"],
            ("_spf.example.com", RdType.TXT): ["v=spf1 -all exp=e2.example.com"],
            ("e1.example.com", RdType.TXT): ["ours"],
            ("e2.example.com", RdType.TXT): ["theirs"],
            ("example.org", RdType.TXT): ["v=spf1 -include:inc.example.org -all"],
            ("inc.example.org", RdType.TXT): ["v=spf1 +all exp=e2.example.com"],
        }
    )
    assert _mail_from("192.0.2.1", "a@example.com", resolver).explanation == "theirs"
    included = _mail_from("192.0.2.1", "a@example.org", resolver)
    assert (included.result, included.mechanism, included.explanation) == (
        SpfResultCode.FAIL,
        "-include:inc.example.org",
        "",
    )


def test_nodata_txt_is_none_and_counts_nothing() -> None:
    resolver = _resolver({("example.com", RdType.TXT): DnsStatus.NODATA})
    assert _mail_from("192.0.2.1", "a@example.com", resolver).result is SpfResultCode.NONE


def test_bad_client_address_is_a_caller_error() -> None:
    with pytest.raises(ValueError):
        asyncio.run(
            check_host(
                "not-an-ip",
                "example.com",
                "a@example.com",
                helo="h",
                resolver=_resolver({}),
                now=NOW,
            )
        )
