"""rspamd's own CPU per scan with and without Hato's SPF/DKIM/DMARC/ARC results
(`[rspamd] trust_our_checks`, hato.intake.spamauth): a private rspamd with its checks on (the
tests' configuration plus spf, dkim, dmarc and arc as packaged, also for loopback clients:
`peers.rspamd.CheckingRspamd`) asking a test DNS server, and a 10 KB message DKIM-signed
(RSA-2048) by a domain whose SPF and DMARC (p=reject) records pass, as a legitimate sender's
mail. The same message is scanned `--messages` times as rspamd checks it itself, then as Hato
asks with its results in a `Settings` header, alternating for `--rounds`; for each, rspamd's
CPU per scan (its main process and workers, /proc) and the verdict's score. One scan at a
time through Hato's own client (`RspamdClient`). Not a test.

    .venv/bin/python benchmarks/rspamd_auth_bench.py --messages 500 --rounds 3

rspamd caches the SPF record and the DKIM key (one sender here), so the "checks itself" side
is its cheapest case; many senders cost it more.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
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
ZONE: dict[str, dict[str, list[ZoneValue]]] = {
    "example.com": {"TXT": ["v=spf1 ip4:127.0.0.1 -all"]},
    "_dmarc.example.com": {"TXT": ["v=DMARC1; p=reject"]},
    "sel._domainkey.example.com": {"TXT": [txt_strings(KEY.dns_txt())]},
}
HEAD = (
    b"From: Joe <joe@example.com>\r\nTo: Sue <sue@example.net>\r\nSubject: benchmark\r\n"
    b"Date: Fri, 11 Jul 2003 21:00:37 -0700\r\nMessage-ID: <bench@example.com>\r\n"
    b"MIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\n"
)
BODY = (b"The quick brown fox jumps over the lazy dog, again and again.  \r\n" * 160)[:10_240]
# What Hato's inbound checks write for it (inbound.py), on top of what it shows rspamd.
OURS = build_header(
    "mx.example.net",
    [
        MethodResult("spf", "pass", properties=(("smtp.mailfrom", "joe@example.com"),)),
        MethodResult("dkim", "pass", properties=(("header.d", "example.com"), ("header.s", "sel"))),
        MethodResult(
            "dmarc", "pass", properties=(("header.from", "example.com"), ("policy.dmarc", "reject"))
        ),
        MethodResult("arc", "none"),
    ],
)


def signed(message: bytes) -> bytes:
    """`message` with a DKIM signature of example.com (dkimpy, as a sending MTA signs)."""
    signature = dkim.sign(
        message,
        b"sel",
        b"example.com",
        KEY.private_pem(),
        canonicalize=(b"relaxed", b"relaxed"),
        include_headers=[b"from", b"to", b"subject", b"date", b"message-id"],
    )
    return bytes(signature) + message


async def scans(client: RspamdClient, envelope: Envelope, message: bytes, count: int) -> float:
    """The last scan's score."""
    score = 0.0
    for _ in range(count):
        score = (await client.check(envelope, len(message), chunks_of(message))).score
    return score


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=500)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    message = OURS + signed(HEAD + b"\r\n" + BODY)
    plain = Envelope("<joe@example.com>", ("<sue@example.net>",), "127.0.0.1", "mx.example.com")
    trusting = Envelope(
        plain.mail_from,
        plain.recipients,
        plain.client_ip,
        plain.helo,
        settings=rspamd_settings(OURS),
    )
    cpu: dict[str, list[float]] = {"rspamd checks": [], "Hato's results": []}
    scores: dict[str, float] = {}
    with (
        tempfile.TemporaryDirectory(prefix="hato-rspamd-auth-") as work,
        DnsTestServer(ZONE) as dns,
    ):
        rspamd = CheckingRspamd(Path(work), dns.nameserver)
        rspamd.start()
        try:
            client = RspamdClient(rspamd.url, timeout=30)
            for envelope in (plain, trusting):  # warm up: keys, records, caches
                asyncio.run(scans(client, envelope, message, 20))
            for _ in range(args.rounds):
                for name, envelope in (("rspamd checks", plain), ("Hato's results", trusting)):
                    before = rspamd_cpu(rspamd)  # type: ignore[arg-type]
                    scores[name] = asyncio.run(scans(client, envelope, message, args.messages))
                    used = rspamd_cpu(rspamd) - before  # type: ignore[arg-type]
                    cpu[name].append(used * 1000 / args.messages)
        finally:
            rspamd.stop()
    for name, values in cpu.items():
        each = ", ".join(f"{v:.2f}" for v in values)
        print(
            f"{name:15} rspamd CPU ms/scan: median {statistics.median(values):.2f} ({each}); "
            f"score {scores[name]:.2f}"
        )


if __name__ == "__main__":
    main()
