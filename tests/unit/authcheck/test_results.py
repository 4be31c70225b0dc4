"""Authentication-Results (RFC 8601): the header we write and the forged ones we drop."""

from __future__ import annotations

from hato.authcheck.dkim import DkimResult, DkimStatus
from hato.authcheck.results import (
    MethodResult,
    authserv_id_of,
    build_header,
    dkim_methods,
    find_forged,
    resinfo_entries,
    spf_method,
    without_fields,
)
from hato.authcheck.spf import SpfResult, SpfResultCode


def _unfold(header: bytes) -> str:
    return " ".join(header.decode().split())


def test_header_with_every_method() -> None:
    dkim = DkimResult(
        DkimStatus.PASS, "example.com", "s1", "", "rsa-sha256", "@example.com", "AbCd1234"
    )
    header = build_header(
        "mx.hato.example",
        [
            *dkim_methods([dkim]),
            spf_method(SpfResult(SpfResultCode.PASS, "example.com"), mailfrom="a@example.com"),
            MethodResult("dmarc", "pass", properties=(("header.from", "example.com"),)),
        ],
    )
    assert header.endswith(b"\r\n") and all(len(line) <= 78 for line in header.split(b"\r\n"))
    assert _unfold(header) == (
        "Authentication-Results: mx.hato.example; dkim=pass header.d=example.com "
        "header.i=@example.com header.s=s1 header.a=rsa-sha256 header.b=AbCd1234; "
        "spf=pass smtp.mailfrom=a@example.com; dmarc=pass header.from=example.com"
    )


def test_none_unsigned_reason_quoting_and_helo() -> None:
    assert build_header("mx", []) == b"Authentication-Results: mx;\r\n\tnone\r\n"
    assert _unfold(build_header("mx", dkim_methods([]))) == "Authentication-Results: mx; dkim=none"
    failed = DkimResult(DkimStatus.FAIL, "d.example", "s", 'body "hash" bad')
    assert 'reason="body \\"hash\\" bad"' in _unfold(build_header("mx", dkim_methods([failed])))
    helo = spf_method(SpfResult(SpfResultCode.NONE, "h.example"), mailfrom="", helo="h.example")
    assert helo.render() == "spf=none smtp.helo=h.example"
    assert MethodResult("x", "pass", comment="a (b)").render() == "x=pass (a \\(b\\))"


def test_forged_results_found_and_dropped() -> None:
    block = (
        b"Received: from a\r\n"
        b"Authentication-Results: MX.Hato.Example; dkim=pass\r\n"
        b"Authentication-Results: (comment) mx.hato.example 1;\r\n  spf=pass\r\n"
        b"Authentication-Results: other.example; spf=fail\r\n"
        b"ARC-Authentication-Results: i=1; mx.hato.example; spf=pass\r\n"
        b"Subject: x\r\n\r\n"
    )
    forged = find_forged(block, "mx.hato.example")
    assert len(forged) == 2
    assert without_fields(block, forged) == (
        b"Received: from a\r\n"
        b"Authentication-Results: other.example; spf=fail\r\n"
        b"ARC-Authentication-Results: i=1; mx.hato.example; spf=pass\r\n"
        b"Subject: x\r\n\r\n"
    )
    assert find_forged(block, "hato.example") == ()


def test_forged_results_with_another_spelling_of_our_id_are_found() -> None:
    # RFC 8601 §2.5: the authserv-id names a host; an absolute name (trailing dot), letter
    # case, the obsolete space before the colon (RFC 5322 §4.5) or full-width letters are
    # all the same claim.
    block = (
        b"Authentication-Results: mx.hato.example.; dmarc=pass\r\n"
        b"Authentication-Results : MX.HATO.EXAMPLE; dkim=pass\r\n"
        b'Authentication-Results: "mx.hato.example. "; spf=pass\r\n'
        + "Authentication-Results: ｍx.hato.example; arc=pass\r\n".encode()
        + b"Authentication-Results: mx.hato.example.other; spf=pass\r\n\r\n"
    )
    assert len(find_forged(block, "mx.hato.example")) == 4
    assert len(find_forged(block, "mx.hato.example.")) == 4


def test_authserv_id_and_entries() -> None:
    assert authserv_id_of(b' "Quoted.Example"; none') == "quoted.example"
    assert authserv_id_of(b" ") == ""
    value = b' mx; dkim=pass (a; b) header.d=x; spf=pass reason="c;d"\r\n'
    assert resinfo_entries(value) == (
        "mx",
        ["dkim=pass (a; b) header.d=x", 'spf=pass reason="c;d"'],
    )
