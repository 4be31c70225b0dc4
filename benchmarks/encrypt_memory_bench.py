"""Memory and latency of big mail to users with keys (issue 12, item 3).

For each scenario a fresh Hato (one process) receives keyed mail on its mx port: one message of
1, 10 or 50 MB, then 5 messages of 50 MB at once, each to an S/MIME user (RSA-2048) and an
OpenPGP user (Curve25519), so every message is encrypted twice; and, for comparison, one
message of 10 MB to a user without a key. Senders are separate processes (Python's smtplib),
so that their CPU does not disturb the measurement here. Meanwhile this process keeps one
other session busy with NOOP round trips and records their latency: what a small session
would see, split at the moment the last octet of DATA was sent (before it the server was
receiving, after it encrypting and committing). A small keyed message goes first: imports and
caches warm up once per process, not per message. Reported per scenario: Hato's peak RSS
(VmHWM of the fresh process), its RSS when idle before, the peak RSS of its child processes
(the encryption helper, crypto/helper.py), the NOOP latencies, and the wall time until every
sender had its 250. Prints a Markdown table. Not a test.

    .venv/bin/python benchmarks/encrypt_memory_bench.py
    .venv/bin/python benchmarks/encrypt_memory_bench.py --sizes 1 10 --parallel 5 --parallel-size 10

Target (issue 12): peak RSS under 200 MB in every scenario, no NOOP waiting over 100 ms.
"""

from __future__ import annotations

import argparse
import datetime as dt
import platform
import smtplib
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "integration"))

import pysequoia
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID
from peers.hato import HatoServer, hato_binary
from peers.server import DomainSetup, MailSetup

DOMAIN = "bench.test"
RECIPIENTS = (f"carol@{DOMAIN}", f"bob@{DOMAIN}")
LINE = b"A line of a big message, as long as a line of base64 in an attachment: 0123456789\r\n"
# Sends the message (CRLF, no line starting with a dot) and prints when its last octet was
# written, before the 250: what follows is encryption and the queue commit.
SENDER = """
import smtplib, sys, time
host, port, path = sys.argv[1], int(sys.argv[2]), sys.argv[3]
data = open(path, "rb").read()
with smtplib.SMTP(host, port, timeout=600) as smtp:
    smtp.ehlo()
    smtp.mail("alice@example.net")
    for rcpt in sys.argv[4:]:
        assert smtp.rcpt(rcpt)[0] == 250
    assert smtp.docmd("DATA")[0] == 354
    smtp.send(data + b".\\r\\n")
    print(time.time(), flush=True)
    reply = smtp.getreply()
    assert reply[0] == 250, reply
"""


@dataclass(frozen=True, slots=True)
class Result:
    scenario: str
    idle_kib: int
    peak_kib: int
    child_kib: int  # the largest peak RSS of Hato's child processes (the encryption helper)
    noop_max: float  # while the message(s) came in
    noop_after: float  # after the last octet of DATA, until the last 250 (encryption, commit)
    noop_p50: float
    noop_p99: float
    noops: int
    seconds: float


def smime_cert(address: str) -> bytes:
    key = rsa.generate_private_key(65537, 2048)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "Carol")])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(days=1))
        .not_valid_after(now + dt.timedelta(days=30))
        .add_extension(x509.SubjectAlternativeName([x509.RFC822Name(address)]), False)
        .sign(key, hashes.SHA256())
    )
    return cert.public_bytes(serialization.Encoding.PEM)


def openpgp_cert(address: str) -> bytes:
    tsk = pysequoia.Tsk.generate(f"Bob <{address}>", cipher_suite=pysequoia.CipherSuite.Cv25519)
    return bytes(tsk.extract_certificate())


def import_key(server: HatoServer, address: str, key: bytes) -> None:
    path = server.work / f"{address}.key"
    path.write_bytes(key)
    subprocess.run(
        [hato_binary(), "key", "import", address, str(path), "--config", str(server.config)],
        check=True,
        capture_output=True,
        cwd=server.work,
        timeout=60,
    )


def message_file(directory: Path, megabytes: int) -> Path:
    path = directory / f"message-{megabytes}.eml"
    if not path.exists():
        header = (
            f"From: <alice@example.net>\r\nTo: <{RECIPIENTS[0]}>\r\nSubject: {megabytes} MB\r\n"
            "Message-ID: <bench@example.net>\r\n\r\n"
        ).encode()
        path.write_bytes(header + LINE * (megabytes * 1024 * 1024 // len(LINE)))
    return path


def run(work: Path, name: str, megabytes: int, count: int, keyed: bool = True) -> Result:
    setup = MailSetup(
        domains=(DomainSetup(DOMAIN, users=("carol", "bob", "dave")),),
        max_message_size=(megabytes + 5) * 1024 * 1024,
        max_junk_commands=10_000_000,  # the NOOP probe below is a junk command each
    )
    server = HatoServer(work / name.replace(" ", "-") / "data", setup)
    server.start()
    try:
        import_key(server, RECIPIENTS[0], smime_cert(RECIPIENTS[0]))
        import_key(server, RECIPIENTS[1], openpgp_cert(RECIPIENTS[1]))
        path = message_file(work, megabytes)
        # One small keyed message first: what runs once per process (imports, key caches) is
        # not what a big message costs.
        with smtplib.SMTP(server.host, server.port, timeout=60) as smtp:
            smtp.sendmail("alice@example.net", list(RECIPIENTS), b"Subject: warm-up\r\n\r\nhi\r\n")
        idle = server.peak_rss_kib() or 0
        rcpts = list(RECIPIENTS) if keyed else [f"dave@{DOMAIN}"]
        probes: list[tuple[float, float]] = []  # (when sent, latency)
        with smtplib.SMTP(server.host, server.port, timeout=600) as other:
            other.ehlo("prober.test")
            began = time.monotonic()
            senders = [
                subprocess.Popen(
                    [
                        sys.executable,
                        "-c",
                        SENDER,
                        server.host,
                        str(server.port),
                        str(path),
                        *rcpts,
                    ],
                    stdout=subprocess.PIPE,
                )
                for _ in range(count)
            ]
            while any(s.poll() is None for s in senders):
                start = time.time()
                other.noop()
                probes.append((start, time.time() - start))
                time.sleep(0.005)
            seconds = time.monotonic() - began
        failed = [s.returncode for s in senders if s.returncode]
        if failed:
            raise SystemExit(f"{name}: a sender failed ({failed})")
        sent = max(float(s.stdout.read()) for s in senders if s.stdout)
        peak = server.peak_rss_kib() or 0
        child = max((_peak_kib(pid) for pid in _children(server)), default=0)
    finally:
        server.stop()
    ordered = sorted(latency for _, latency in probes)
    p50 = ordered[len(ordered) // 2]
    p99 = ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]
    receiving = [latency for start, latency in probes if start < sent] or [0.0]
    after = [latency for start, latency in probes if start >= sent] or [0.0]
    return Result(
        name, idle, peak, child, max(receiving), max(after), p50, p99, len(probes), seconds
    )


def _children(server: HatoServer) -> list[int]:
    if server.proc is None:
        return []
    pids = []
    for task in Path(f"/proc/{server.proc.pid}/task").iterdir():
        pids += [int(p) for p in (task / "children").read_text().split()]
    return pids


def _peak_kib(pid: int) -> int:
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return 0
    found = [line.split()[1] for line in status.splitlines() if line.startswith("VmHWM:")]
    return int(found[0]) if found else 0


def table(results: list[Result]) -> str:
    lines = [
        "| mail | Hato idle RSS | Hato peak RSS | helper peak RSS | NOOP max while receiving "
        "| NOOP max after DATA | NOOP p50 | NOOP p99 | NOOPs | until the last 250 |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in results:
        lines.append(
            f"| {r.scenario} | {r.idle_kib / 1024:.0f} MB | {r.peak_kib / 1024:.0f} MB "
            f"| {r.child_kib / 1024:.0f} MB "
            f"| {r.noop_max * 1000:.0f} ms | {r.noop_after * 1000:.0f} ms "
            f"| {r.noop_p50 * 1000:.1f} ms | {r.noop_p99 * 1000:.0f} ms | {r.noops} "
            f"| {r.seconds:.1f} s |"
        )
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="*", default=[1, 10, 50])
    parser.add_argument("--parallel", type=int, default=5)
    parser.add_argument("--parallel-size", type=int, default=50)
    parser.add_argument("--control", type=int, default=10, help="MB of an unkeyed message")
    args = parser.parse_args()
    results = []
    with tempfile.TemporaryDirectory(prefix="hato-encbench-") as tmp:
        work = Path(tmp)
        for size in args.sizes:
            results.append(run(work, f"1 x {size} MB, keyed", size, 1))
        if args.control:
            results.append(run(work, f"1 x {args.control} MB, no key", args.control, 1, False))
        if args.parallel:
            name = f"{args.parallel} x {args.parallel_size} MB at once, keyed"
            results.append(run(work, name, args.parallel_size, args.parallel))
    print(f"{platform.node()}: {platform.processor() or platform.machine()}, "
          f"Python {platform.python_version()}; each message to 2 keyed users "
          "(S/MIME RSA-2048, OpenPGP Curve25519)")  # fmt: skip
    print(table(results))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
