"""CPU cost of DKIM signing (ours, on cryptography) and verifying (dkimpy, keys pre-fetched)
for a 10 KB message. Target: under 1 ms of CPU each. Run: .venv/bin/python benchmarks/dkim_bench.py
"""

from __future__ import annotations

import asyncio
import time

from hato.authcheck.dkim import (
    DkimAlgorithm,
    DkimSigner,
    generate_key,
    load_signing_key,
    verify_dkim,
)
from hato.model.dns import DnsAnswer, DnsStatus, RdType, TxtRecord

HEADERS = (
    b"From: Joe <joe@example.com>\r\nTo: Sue <sue@example.net>\r\nSubject: benchmark\r\n"
    b"Date: Fri, 11 Jul 2003 21:00:37 -0700\r\nMessage-ID: <bench@example.com>\r\n"
    b"MIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n"
)
BODY = (b"The quick brown fox jumps over the lazy dog, again and again.  \r\n" * 160)[:10_240]
ROUNDS = 300


class Clock:
    def now(self) -> float:
        return time.time()

    def monotonic(self) -> float:
        return time.monotonic()


class OneKey:
    def __init__(self, record: str) -> None:
        self.answer = DnsAnswer(
            "bench._domainkey.example.com",
            RdType.TXT,
            DnsStatus.OK,
            (TxtRecord((record.encode(),)),),
        )

    async def query(self, name: str, rdtype: RdType) -> DnsAnswer:
        return self.answer


def _cpu_ms(run: object, rounds: int = ROUNDS) -> float:
    assert callable(run)
    run()  # warm up
    start = time.process_time()
    for _ in range(rounds):
        run()
    return (time.process_time() - start) / rounds * 1000


def bench(algorithm: DkimAlgorithm) -> tuple[float, float]:
    pem, record = generate_key(algorithm)
    signer = DkimSigner("example.com", "bench", load_signing_key(pem), Clock())
    chunks = [BODY[i : i + 4096] for i in range(0, len(BODY), 4096)]
    message = signer.sign(HEADERS, chunks) + HEADERS + BODY
    resolver = OneKey(record)
    loop = asyncio.new_event_loop()
    try:
        sign_ms = _cpu_ms(lambda: signer.sign(HEADERS, chunks))
        verify_ms = _cpu_ms(lambda: loop.run_until_complete(verify_dkim(message, resolver)))
    finally:
        loop.close()
    return sign_ms, verify_ms


def main() -> None:
    for algorithm in DkimAlgorithm:
        sign_ms, verify_ms = bench(algorithm)
        print(
            f"{algorithm.value:15} 10 KB  sign {sign_ms:.3f} ms CPU   verify {verify_ms:.3f} ms CPU"
        )


if __name__ == "__main__":
    main()
