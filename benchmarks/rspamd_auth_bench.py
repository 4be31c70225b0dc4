"""rspamd's own CPU per scan with and without Hato's SPF/DKIM/DMARC/ARC results
(`[rspamd] trust_our_checks`, hato.intake.spamauth): a private rspamd with its checks on (the
tests' configuration plus spf, dkim, dmarc and arc as packaged, also for loopback clients:
`peers.rspamd.CheckingRspamd`) asking a test DNS server, and a 10 KB message DKIM-signed
(RSA-2048) by its sender's domain, whose SPF and DMARC (p=reject) records pass, as a legitimate
sender's mail. `--messages` messages are scanned as rspamd checks them itself, then others as
Hato asks with its results in a `Settings` header, alternating for `--rounds`; for each,
rspamd's CPU per scan (its main process and workers, /proc) and the verdict's score. One scan
at a time through Hato's own client (`RspamdClient`). Not a test.

    .venv/bin/python benchmarks/rspamd_auth_bench.py --messages 500 --rounds 3

Each message comes from a sender domain rspamd has not seen (its SPF record, DMARC record
and DKIM key are not cached), as on an MX; `--one-sender` scans mail of one domain (cached
after the first, rspamd's cheapest case).
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
from dataclasses import dataclass, replace
from pathlib import Path

import dkim  # type: ignore[import-untyped]
from cryptography.hazmat.primitives.asymmetric import rsa

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "integration"))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from peers.rspamd import CheckingRspamd
from rspamd_vs_postfix import rspamd_cpu

from dnsserver import DnsTestServer, ZoneValue, txt_strings
from hato.authcheck import DkimAlgorithm, SigningKey
from hato.authcheck.results import MethodResult, build_header
from hato.filters import Envelope, RspamdClient, chunks_of
from hato.intake.spamauth import rspamd_settings

KEY = SigningKey(DkimAlgorithm.RSA_SHA256, rsa.generate_private_key(65537, 2048))
PEM = KEY.private_pem()
HEAD = (
    "From: Joe <joe@{d}>\r\nTo: Sue <sue@example.net>\r\nSubject: benchmark\r\n"
    "Date: Fri, 11 Jul 2003 21:00:37 -0700\r\nMessage-ID: <bench-{n}@{d}>\r\n"
    "MIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\n"
)
BODY = (b"The quick brown fox jumps over the lazy dog, again and again.  \r\n" * 160)[:10_240]


def zone(domains: list[str]) -> dict[str, dict[str, list[ZoneValue]]]:
    """Each sender domain: SPF allowing the client, DMARC p=reject, the DKIM key."""
    out: dict[str, dict[str, list[ZoneValue]]] = {}
    for domain in domains:
        out[domain] = {"TXT": ["v=spf1 ip4:127.0.0.1 -all"]}
        out[f"_dmarc.{domain}"] = {"TXT": ["v=DMARC1; p=reject"]}
        out[f"sel._domainkey.{domain}"] = {"TXT": [txt_strings(KEY.dns_txt())]}
    return out


def ours(domain: str) -> bytes:
    """What Hato's inbound checks write for it (inbound.py), on top of what rspamd is shown."""
    return build_header(
        "mx.example.net",
        [
            MethodResult("spf", "pass", properties=(("smtp.mailfrom", f"joe@{domain}"),)),
            MethodResult("dkim", "pass", properties=(("header.d", domain), ("header.s", "sel"))),
            MethodResult(
                "dmarc", "pass", properties=(("header.from", domain), ("policy.dmarc", "reject"))
            ),
            MethodResult("arc", "none"),
        ],
    )


@dataclass(frozen=True, slots=True)
class Scan:
    """One message as Hato shows it to rspamd: with and without our results."""

    message: bytes
    plain: Envelope
    trusting: Envelope


def prepared(domain: str, number: int) -> Scan:
    """A message from joe@`domain`, DKIM-signed by `domain` (dkimpy, as a sending MTA signs)."""
    message = (HEAD.format(d=domain, n=number)).encode() + b"\r\n" + BODY
    signature = dkim.sign(
        message,
        b"sel",
        domain.encode(),
        PEM,
        canonicalize=(b"relaxed", b"relaxed"),
        include_headers=[b"from", b"to", b"subject", b"date", b"message-id"],
    )
    added = ours(domain)
    plain = Envelope(f"<joe@{domain}>", ("<sue@example.net>",), "127.0.0.1", "mx.example.net")
    return Scan(
        added + bytes(signature) + message, plain, replace(plain, settings=rspamd_settings(added))
    )


async def scans(client: RspamdClient, batch: list[Scan], trusting: bool) -> float:
    """The last scan's score."""
    score = 0.0
    for scan in batch:
        envelope = scan.trusting if trusting else scan.plain
        size = len(scan.message)
        score = (await client.check(envelope, size, chunks_of(scan.message))).score
    return score


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=500, help="scans per side and round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument(
        "--one-sender", action="store_true", help="every message from one domain (cached)"
    )
    args = parser.parse_args()
    # Each side and round gets its own senders (none seen before: no cached SPF record,
    # DMARC record or DKIM key), unless --one-sender.
    count = 2 * args.rounds + 1
    batches = [
        [
            prepared("example.com" if args.one_sender else f"s{b}-{n}.example.com", n)
            for n in range(args.messages)
        ]
        for b in range(count)
    ]
    domains = sorted({s.plain.mail_from.strip("<>").split("@")[1] for b in batches for s in b})
    cpu: dict[str, list[float]] = {"rspamd checks": [], "Hato's results": []}
    scores: dict[str, float] = {}
    with (
        tempfile.TemporaryDirectory(prefix="hato-rspamd-auth-") as work,
        DnsTestServer(zone(domains)) as dns,
    ):
        rspamd = CheckingRspamd(Path(work), dns.nameserver)
        rspamd.start()
        try:
            client = RspamdClient(rspamd.url, timeout=30)
            asyncio.run(scans(client, batches[0][:20], False))  # warm up
            asyncio.run(scans(client, batches[0][20:40], True))
            for r in range(args.rounds):
                for side, trusting in (("rspamd checks", False), ("Hato's results", True)):
                    batch = batches[1 + 2 * r + trusting]
                    before = rspamd_cpu(rspamd)  # type: ignore[arg-type]
                    scores[side] = asyncio.run(scans(client, batch, trusting))
                    used = rspamd_cpu(rspamd) - before  # type: ignore[arg-type]
                    cpu[side].append(used * 1000 / args.messages)
        finally:
            rspamd.stop()
    senders = "one sender domain" if args.one_sender else "a new sender domain per message"
    print(f"{args.messages} scans per side and round, {senders}")
    for side, values in cpu.items():
        each = ", ".join(f"{v:.2f}" for v in values)
        print(
            f"{side:15} rspamd CPU ms/scan: median {statistics.median(values):.2f} ({each}); "
            f"score {scores[side]:.2f}"
        )


if __name__ == "__main__":
    main()
