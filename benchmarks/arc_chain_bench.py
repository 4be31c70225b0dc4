"""CPU cost of validating a received ARC chain (RFC 8617 §5.2) with the keys pre-fetched:
chains of 1, 3 and 50 valid sets, with and without 800 other header fields (what a stranger
may send within every limit). Target: near 20 ms of CPU for the 50-set chain.
Run: flock /tmp/bench.lock .venv/bin/python benchmarks/arc_chain_bench.py [ROUNDS]
"""

from __future__ import annotations

import asyncio
import statistics
import sys
import time
from collections.abc import Callable

from hato.authcheck.arc import ArcSealer, ArcStatus, verify_arc
from hato.authcheck.dkim import DkimAlgorithm, generate_key, load_signing_key
from hato.authcheck.offload import inline
from hato.model.dns import DnsAnswer, DnsStatus, RdType, TxtRecord

HEADERS = (
    b"From: Joe <joe@example.com>\r\nTo: Sue <sue@example.net>\r\nSubject: benchmark\r\n"
    b"Date: Fri, 11 Jul 2003 21:00:37 -0700\r\nMessage-ID: <bench@example.com>\r\n"
    b"MIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\n"
)
BODY = (b"The quick brown fox jumps over the lazy dog, again and again.\r\n" * 160)[:10_240]
CASES = ((1, 0), (3, 0), (50, 0), (50, 800))


class FixedClock:
    def now(self) -> float:
        return 1_700_000_000.0

    def monotonic(self) -> float:
        return 0.0


class AnyKey:
    """Every key name answers the one key record (the chain's hops share a key)."""

    def __init__(self, record: str) -> None:
        self.record = record

    async def query(self, name: str, rdtype: RdType) -> DnsAnswer:
        return DnsAnswer(name, rdtype, DnsStatus.OK, (TxtRecord((self.record.encode(),)),))


def chain(sets: int, fillers: int, pem: bytes) -> bytes:
    """A message that passed `sets` hops, each adding a valid ARC Set."""
    key = load_signing_key(pem)
    filler = b"".join(b"X-Filler-%d: some value of a field\r\n" % n for n in range(fillers))
    head = HEADERS + filler + b"\r\n"
    for instance in range(1, sets + 1):
        sealer = ArcSealer(
            "arc.example", f"s{instance}", key, f"hop{instance}.arc.example", FixedClock()
        )
        status = ArcStatus.NONE if instance == 1 else ArcStatus.PASS
        added = sealer.seal(head, [BODY], status, results=["spf=pass smtp.mailfrom=example.com"])
        assert added is not None
        head = added + head
    return head + BODY


def cpu_ms(run: Callable[[], object], rounds: int) -> float:
    run()  # warm up (key cache, imports)
    start = time.process_time()
    for _ in range(rounds):
        run()
    return (time.process_time() - start) / rounds * 1000


def main() -> None:
    rounds = int(sys.argv[1]) if len(sys.argv) > 1 else 20
    pem, record = generate_key(DkimAlgorithm.RSA_SHA256)
    resolver = AnyKey(record)
    loop = asyncio.new_event_loop()
    try:
        for sets, fillers in CASES:
            message = chain(sets, fillers, pem)
            result = loop.run_until_complete(verify_arc(message, resolver, offload=inline))
            assert result.status is ArcStatus.PASS, result.reason

            def run(message: bytes = message) -> object:
                return loop.run_until_complete(verify_arc(message, resolver, offload=inline))

            # Several short rounds, the median: the machine is shared.
            figures = [cpu_ms(run, max(1, rounds // sets)) for _ in range(5)]
            print(
                f"{sets:2} sets + {fillers:3} fields ({len(message) // 1024:3} KiB)"
                f"  verify {statistics.median(figures):8.3f} ms CPU (median of 5)"
            )
    finally:
        loop.close()


if __name__ == "__main__":
    main()
