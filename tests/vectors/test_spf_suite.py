"""The RFC 7208 SPF test suite (openspf, as shipped with pyspf 2.0.14), run as data.

Each YAML document is a scenario: `zonedata` (the DNS it needs) and `tests` (helo, host,
mailfrom, expected result or list of acceptable results, and for some the explanation).
The fake resolver reproduces the suite's conventions (those of pyspf's test driver):
- "SPF" records also serve as TXT records, unless the name has its own TXT entries
  (RFC 7208 dropped the SPF RR type; "TXT: NONE" means the name has no TXT records);
- "TIMEOUT" makes every query at that name a TEMPFAIL, except for types whose records are
  listed before it;
- a name in the zone answers NODATA for types it lacks, a name not in it NXDOMAIN;
- CNAMEs are followed (the Resolver seam follows them).
An expected explanation of "DEFAULT" means no exp= text (our `explanation` is "").
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from hato.authcheck.spf import SpfResultCode, check_mail_from
from hato.model.dns import (
    AddressRecord,
    DnsAnswer,
    DnsStatus,
    HostRecord,
    MxRecord,
    RdType,
    Record,
    TxtRecord,
    normalize_name,
)

SUITE = Path("/work/shared/vectors/spf/rfc7208-tests.yml")
if not SUITE.exists():
    SUITE = Path(__file__).resolve().parents[3] / "shared" / "vectors" / "spf" / SUITE.name

_TIMEOUT = "TIMEOUT"


def _txt(value: Any) -> TxtRecord:
    strings = [value] if isinstance(value, str) else list(value)
    # The YAML writes raw octets as "\xNN" escapes, which PyYAML reads as code points < 256.
    return TxtRecord(tuple(s.encode("latin-1") for s in strings))


def _entries(rrs: list[Any]) -> list[tuple[str, Record | None]]:
    """A name's zone entries, in order, in the suite driver's convention (see docstring)."""
    entries: list[tuple[str, Record | None]] = []
    generated: list[tuple[str, Record | None]] = []
    has_txt = False
    for rr in rrs:
        if rr == _TIMEOUT:
            entries.append((_TIMEOUT, None))
            continue
        ((rtype, value),) = rr.items()
        if rtype == "TXT":
            has_txt = True
        if value == "NONE":
            continue
        match rtype:
            case "SPF":
                generated.append(("TXT", _txt(value)))
            case "TXT":
                entries.append(("TXT", _txt(value)))
            case "A" | "AAAA":
                entries.append((rtype, AddressRecord(str(value))))
            case "MX":
                entries.append(("MX", MxRecord(int(value[0]), normalize_name(value[1]))))
            case "PTR" | "CNAME":
                entries.append((rtype, HostRecord(normalize_name(value))))
            case _:
                raise ValueError(f"zone record type {rtype} not understood")
    return entries if has_txt else entries + generated


class SuiteResolver:
    def __init__(self, zonedata: dict[str, list[Any]]) -> None:
        self.zone = {normalize_name(name): _entries(rrs) for name, rrs in zonedata.items()}

    async def query(self, name: str, rdtype: RdType) -> DnsAnswer:
        key = normalize_name(name)
        for _hop in range(8):
            entries = self.zone.get(key)
            if entries is None:
                return DnsAnswer(key, rdtype, DnsStatus.NXDOMAIN)
            records: list[Record] = []
            for rtype, record in entries:
                if rtype == _TIMEOUT and not records:
                    return DnsAnswer(key, rdtype, DnsStatus.TEMPFAIL, detail="zone TIMEOUT")
                if rtype == rdtype.value and record is not None:
                    records.append(record)
            cnames = [r for t, r in entries if t == "CNAME" and isinstance(r, HostRecord)]
            if records or not cnames or rdtype is RdType.CNAME:
                status = DnsStatus.OK if records else DnsStatus.NODATA
                return DnsAnswer(key, rdtype, status, tuple(records))
            key = cnames[0].host
        return DnsAnswer(key, rdtype, DnsStatus.TEMPFAIL, detail="CNAME chain too long")


@dataclass(frozen=True, slots=True)
class Case:
    scenario: str
    name: str
    test: dict[str, Any]
    zonedata: dict[str, list[Any]]


def _cases() -> list[Case]:
    with SUITE.open(encoding="utf-8") as stream:
        documents = list(yaml.safe_load_all(stream))
    return [
        Case(doc["description"], name, test, doc.get("zonedata") or {})
        for doc in documents
        for name, test in doc["tests"].items()
    ]


CASES = _cases()


def test_the_suite_is_all_there() -> None:
    # 16 scenarios; a failure to read part of the file must not pass quietly.
    assert len({case.scenario for case in CASES}) == 16
    assert len(CASES) == 203


@pytest.mark.parametrize("case", CASES, ids=[f"{c.scenario}:{c.name}" for c in CASES])
def test_rfc7208_case(case: Case) -> None:
    test = case.test
    result = asyncio.run(
        check_mail_from(
            str(test["host"]),
            str(test["mailfrom"]),
            helo=str(test["helo"]),
            resolver=SuiteResolver(case.zonedata),
            receiver="receiver.example.net",
            now=1_700_000_000,
        )
    )
    expected = test["result"] if isinstance(test["result"], list) else [test["result"]]
    assert result.result in {SpfResultCode(e) for e in expected}, result
    if "explanation" in test and result.result is SpfResultCode.FAIL:
        wanted = "" if test["explanation"] == "DEFAULT" else test["explanation"]
        assert result.explanation == wanted, result
