"""The ARC test suite (ValiMail arc_test_suite, draft that became RFC 8617), run as data.

Validation: every scenario's messages go through `verify_arc` with a fake resolver built from
the scenario's `txt-records`; the result must be the expected `cv`.
Signing: every scenario's message is sealed by `ArcSealer` at the scenario's `t`, with its
`sig-headers`, `srv-id`, key, domain and selector; the suite's expected ARC-Seal,
ARC-Message-Signature and ARC-Authentication-Results must come out tag for tag, b= included
(RSA PKCS#1 v1.5 is deterministic). The chain status we seal with is the `arc=` result of the
srv-id's Authentication-Results, as the suite's README says implementations may use.
"""

from __future__ import annotations

import asyncio
import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from dnsserver import FakeResolver, FakeValue
from hato.authcheck.arc import ArcSealer, ArcStatus, our_results, verify_arc
from hato.authcheck.dkim import load_signing_key
from hato.model.dns import RdType, TxtRecord
from kit.clock import FakeClock

SUITE = Path("/work/shared/vectors/arc")
if not SUITE.exists():
    SUITE = Path(__file__).resolve().parents[3] / "shared" / "vectors" / "arc"


def _scenarios(name: str) -> list[dict[str, Any]]:
    with (SUITE / name).open(encoding="utf-8") as handle:
        return [doc for doc in yaml.safe_load_all(handle) if doc]


def _cases(name: str) -> list[Any]:
    return [
        pytest.param(scenario, test, id=f"{scenario['description']}/{tid}")
        for scenario in _scenarios(name)
        for tid, test in scenario["tests"].items()
    ]


def _resolver(txt_records: dict[str, str]) -> FakeResolver:
    table: dict[tuple[str, RdType], FakeValue] = {}
    for name, value in txt_records.items():
        # The YAML folds long records; a TXT record's text has no line ends.
        text = "".join(value.splitlines())
        table[(name, RdType.TXT)] = [TxtRecord((text.encode("latin-1"),))]
    return FakeResolver(table)


def _crlf(message: str) -> bytes:
    return message.replace("\r\n", "\n").replace("\n", "\r\n").encode("utf-8")


VALIDATION = _cases("arc-draft-validation-tests.yml")
SIGNING = _cases("arc-draft-sign-tests.yml")


def test_suite_size() -> None:
    # 171 validation and 17 signing cases: all are run, none skipped.
    assert (len(VALIDATION), len(SIGNING)) == (171, 17)


@pytest.mark.parametrize(("scenario", "test"), VALIDATION)
def test_validation(scenario: dict[str, Any], test: dict[str, Any]) -> None:
    resolver = _resolver(scenario["txt-records"])
    result = asyncio.run(verify_arc(_crlf(test["message"]), resolver))
    # The draft suite expects no verdict ("") for a chain carrying a seal with cv=fail;
    # RFC 8617 §5.2 step 2 (and step 3's structure check) makes that chain "fail".
    expected = test["cv"].lower() or ArcStatus.FAIL.value
    assert result.status.value == expected, result.reason


def _tag_dict(value: str) -> dict[str, str]:
    tags = {}
    for part in value.split(";"):
        if "=" in part:
            key, _, val = part.partition("=")
            tags[key.strip()] = re.sub(r"\s+", "", val)
    return tags


def _field_value(block: bytes, name: bytes) -> str:
    pattern = re.compile(rb"^" + name + rb":(.*?)\r\n(?![ \t])", re.S | re.M | re.I)
    match = pattern.search(block)
    assert match is not None, name
    return match.group(1).decode()


def _chain_from_results(message: bytes, srv_id: str) -> ArcStatus:
    verdicts = [e.split("=", 1)[1].split()[0] for e in our_results(message, srv_id)]
    arcs = [
        v
        for v, e in zip(verdicts, our_results(message, srv_id), strict=True)
        if e.startswith("arc=")
    ]
    return ArcStatus(arcs[0].lower()) if arcs else ArcStatus.NONE


@pytest.mark.parametrize(("scenario", "test"), SIGNING)
def test_signing(scenario: dict[str, Any], test: dict[str, Any]) -> None:
    message = _crlf(test["message"])
    header_block, _, body = message.partition(b"\r\n\r\n")
    header_block += b"\r\n"
    key = load_signing_key(scenario["privatekey"].encode())
    sealer = ArcSealer(
        scenario["domain"],
        scenario["sel"],
        key,
        test["srv-id"],
        FakeClock(float(test["t"]), 0.0),
        headers=test["sig-headers"].split(":"),
    )
    chain = _chain_from_results(header_block, test["srv-id"])
    sealed = sealer.seal(header_block, [body], chain)
    if not test["AS"]:
        assert sealed is None
        return
    assert sealed is not None
    assert _tag_dict(_field_value(sealed, b"ARC-Seal")) == _tag_dict(test["AS"])
    assert _tag_dict(_field_value(sealed, b"ARC-Message-Signature")) == _tag_dict(test["AMS"])
    aar = " ".join(_field_value(sealed, b"ARC-Authentication-Results").split())
    assert aar == " ".join(test["AAR"].split())
    # And the chain we extended validates, with our seal on top.
    resolver = _resolver(scenario["txt-records"])
    result = asyncio.run(verify_arc(sealed + message, resolver))
    expected = ArcStatus.FAIL if chain is ArcStatus.FAIL else ArcStatus.PASS
    assert result.status is expected, result.reason
