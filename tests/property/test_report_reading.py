"""Hypothesis: whatever arrives as a "report" (`hato report` reads what anyone can mail the
postmaster), reading it gives reports or named errors, never an exception of ours: random
octets, a real report cut or with octets flipped, the same inside gzip, zip and a message."""

from __future__ import annotations

import gzip
import io
import zipfile
from collections.abc import Callable

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hato.reports import DkimAuth, DmarcEvent, PolicyPublished
from hato.reports.aggregate import Submitter, aggregate_xml
from hato.reports.message import compress, dmarc_message
from hato.reports.reading import read_reports

BOUNDED = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
US = Submitter("R", "r@r.test", "r.test")
EVENT = DmarcEvent(0.0, "192.0.2.1", "a.test", "a.test", "a.test", "pass",
                   (DkimAuth("a.test", "s", "pass"),), True, True, "none", "",
                   PolicyPublished("a.test", "none", "none", 100, "r", "r"))  # fmt: skip
XML = aggregate_xml(US, "a.test", [EVENT], begin=0, end=1, report_id="x")
JSON = b'{"organization-name": "o", "policies": [{"policy": {}, "summary": {}}]}'


def _zip(content: bytes) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("r.xml", content)
    return buffer.getvalue()


def _message(report: bytes) -> bytes:
    return dmarc_message(US, "d@a.test", "a.test", "x", compress(report), begin=0, end=1, now=0.0)


WRAPS: dict[str, Callable[[bytes], bytes]] = {
    "plain": lambda b: b,
    "gzip": lambda b: gzip.compress(b),
    "zip": _zip,
    "message": _message,
}


def _mutate(data: bytes, cut: int, flips: list[tuple[int, int]]) -> bytes:
    out = bytearray(data[: max(1, cut % (len(data) + 1))])
    for where, value in flips:
        if out:
            out[where % len(out)] = value
    return bytes(out)


@BOUNDED
@given(st.binary(max_size=2000))
def test_random_octets_are_read_or_named(data: bytes) -> None:
    found = read_reports(data, "fuzz")
    assert found.dmarc or found.tls or found.errors or not data.strip()


@BOUNDED
@given(
    st.sampled_from([XML, JSON]),
    st.sampled_from(sorted(WRAPS)),
    st.integers(min_value=0, max_value=10_000),
    st.lists(st.tuples(st.integers(0, 10_000), st.integers(0, 255)), max_size=8),
    st.booleans(),
)
def test_damaged_reports_are_read_or_named(
    report: bytes, wrap: str, cut: int, flips: list[tuple[int, int]], outside: bool
) -> None:
    inner = report if outside else _mutate(report, cut, flips)
    data = WRAPS[wrap](inner)
    if outside:
        data = _mutate(data, cut, flips)
    read_reports(data, "fuzz")  # must not raise
