"""A fake Resolver for unit tests: answers from a dict, no sockets (mox's mock that can fail).

    resolver = FakeResolver({("1.2.0.192.pbl.example", RdType.A): ["127.0.0.10"]})
    resolver.tempfail.add("dnsbl.example")   # every name under it answers TEMPFAIL

Values: a list of addresses/strings/records (OK), or a DnsStatus (NXDOMAIN, NODATA, TEMPFAIL).
A name not in the table is NXDOMAIN. `asked` logs every query.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from hato.model.dns import (
    AddressRecord,
    DnsAnswer,
    DnsStatus,
    HostRecord,
    RdType,
    Record,
    TxtRecord,
    normalize_name,
)

FakeValue = Sequence[str | Record] | DnsStatus


def _record(rdtype: RdType, value: str | Record) -> Record:
    if not isinstance(value, str):
        return value
    if rdtype in (RdType.A, RdType.AAAA):
        return AddressRecord(value)
    if rdtype is RdType.TXT:
        return TxtRecord((value.encode(),))
    if rdtype in (RdType.PTR, RdType.CNAME):
        return HostRecord(value)
    raise ValueError(f"FakeResolver: give {rdtype} records as values, not strings")


class FakeResolver:
    def __init__(
        self, table: Mapping[tuple[str, RdType], FakeValue] | None = None, ttl: int = 300
    ) -> None:
        self.table = {(normalize_name(n), t): v for (n, t), v in (table or {}).items()}
        self.ttl = ttl
        self.tempfail: set[str] = set()  # zones: the name and every name below it fail
        self.authenticated = False
        self.asked: list[tuple[str, RdType]] = []

    async def query(self, name: str, rdtype: RdType) -> DnsAnswer:
        key = normalize_name(name)
        self.asked.append((key, rdtype))
        if any(key == zone or key.endswith("." + zone) for zone in self.tempfail):
            return DnsAnswer(key, rdtype, DnsStatus.TEMPFAIL, detail="fake SERVFAIL")
        value = self.table.get((key, rdtype))
        if value is None:
            exists = any(n == key for n, _ in self.table)
            status = DnsStatus.NODATA if exists else DnsStatus.NXDOMAIN
            return DnsAnswer(key, rdtype, status, ttl=self.ttl, canonical_name=key)
        if isinstance(value, DnsStatus):
            return DnsAnswer(key, rdtype, value, ttl=self.ttl, canonical_name=key)
        records = tuple(_record(rdtype, v) for v in value)
        return DnsAnswer(key, rdtype, DnsStatus.OK, records, self.ttl, self.authenticated, key)
