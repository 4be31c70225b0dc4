"""DKIM against others: the RFC 6376 / RFC 8463 example messages (dkimpy's test data), mail
signed by dkimpy and by OpenDKIM verified by us, and our signatures verified by dkimpy and by
OpenDKIM's `opendkim-testmsg`.

OpenDKIM verifies through live DNS only, so that test runs it in a private network and mount
namespace (`unshare`, root) where /etc/resolv.conf points at a dnslib server on 127.0.0.1:53
that serves our key. It needs Debian's opendkim-tools (installed by .ci/run): in CI a missing
tool fails the test; elsewhere it is skipped with the reason.
"""

from __future__ import annotations

import asyncio
import base64
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import dkim  # type: ignore[import-untyped]
import pytest
from cryptography.hazmat.primitives.asymmetric import ed25519

from dnsserver import FakeResolver, FakeValue
from hato.authcheck.dkim import (
    DkimAlgorithm,
    DkimSigner,
    DkimStatus,
    generate_key,
    load_signing_key,
    verify_dkim,
)
from hato.model.dns import RdType, TxtRecord
from kit.clock import FakeClock

DATA = Path("/work/shared/vectors/dkim")
if not DATA.exists():
    DATA = Path(__file__).resolve().parents[3] / "shared" / "vectors" / "dkim"

NOW = 1_700_000_000.0
HEADERS = (
    b"From: Joe SixPack <joe@football.example.com>\r\n"
    b"To: Suzie Q <suzie@shopping.example.net>\r\n"
    b"Subject: Is dinner ready?\r\n"
    b"Date: Fri, 11 Jul 2003 21:00:37 -0700 (PDT)\r\n"
    b"Message-ID: <20030712040037.46341.5F8J@football.example.com>\r\n"
    b"\r\n"
)
BODY = b"Hi.\r\n\r\nWe lost the game.  Are you hungry yet?\r\n\r\nJoe.\r\n"


def _crlf(data: bytes) -> bytes:
    return data.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")


def _resolver(records: dict[str, str]) -> FakeResolver:
    table: dict[tuple[str, RdType], FakeValue] = {
        (name, RdType.TXT): [TxtRecord((value.encode(),))] for name, value in records.items()
    }
    return FakeResolver(table)


def _rfc8463_keys() -> dict[str, str]:
    # RFC 8463 Appendix A.2: brisbane (Ed25519, from the A.1 private key) and test (RSA).
    seed = base64.b64decode((DATA / "rfc8032_7_1.key").read_bytes())
    public = ed25519.Ed25519PrivateKey.from_private_bytes(seed).public_key().public_bytes_raw()
    return {
        "brisbane._domainkey.football.example.com": "v=DKIM1; k=ed25519; p="
        + base64.b64encode(public).decode(),
        "test._domainkey.football.example.com": (DATA / "test.txt").read_text().strip(),
    }


def test_rfc6376_and_rfc8463_examples_pass() -> None:
    message = _crlf((DATA / "rfc6376.signed.msg").read_bytes())
    results = asyncio.run(verify_dkim(message, _resolver(_rfc8463_keys())))
    assert [(r.status, r.selector, r.algorithm) for r in results] == [
        (DkimStatus.PASS, "brisbane", "ed25519-sha256"),
        (DkimStatus.PASS, "test", "rsa-sha256"),
    ]


@pytest.mark.parametrize(
    ("old", "new", "reason"),
    [
        (b"We lost the game.", b"We won the game.", "body hash did not verify"),
        (b"Subject: Is dinner ready?", b"Subject: Is lunch ready?", "signature did not verify"),
        (b"Date: Fri, 11 Jul 2003", b"Date: Sat, 12 Jul 2003", "signature did not verify"),
    ],
)
def test_rfc_example_tampering_fails(old: bytes, new: bytes, reason: str) -> None:
    message = _crlf((DATA / "rfc6376.signed.msg").read_bytes()).replace(old, new)
    results = asyncio.run(verify_dkim(message, _resolver(_rfc8463_keys())))
    assert [(r.status, r.reason) for r in results] == [(DkimStatus.FAIL, reason)] * 2


def test_exim_ed25519_message_passes() -> None:
    # dkimpy's copy of an Exim-signed Ed25519 message (relaxed/relaxed, folded b= and d=).
    message = _crlf((DATA / "ed25519test2.msg").read_bytes())
    resolver = _resolver({"sed._domainkey.test.ex": (DATA / "eximtest.dns").read_text().strip()})
    (result,) = asyncio.run(verify_dkim(message, resolver))
    assert (result.status, result.domain) == (DkimStatus.PASS, "test.ex")


@pytest.mark.parametrize(
    ("key_file", "algorithm"),
    [("test.private", b"rsa-sha256"), ("ed25519test.key", b"ed25519-sha256")],
)
def test_dkimpy_signed_mail_passes_with_us(key_file: str, algorithm: bytes) -> None:
    message = _crlf((DATA / "test.message").read_bytes())
    signature = dkim.sign(
        message,
        b"test",
        b"example.com",
        (DATA / key_file).read_bytes(),
        signature_algorithm=algorithm,
        canonicalize=(b"relaxed", b"simple"),
    )
    record = (DATA / ("test.txt" if algorithm == b"rsa-sha256" else "ed25519test.dns")).read_text()
    resolver = _resolver({"test._domainkey.example.com": record.strip()})
    (result,) = asyncio.run(verify_dkim(signature + message, resolver))
    assert result.status is DkimStatus.PASS, result.reason
    tampered = signature + message.replace(b"This is a test", b"This is a fake")
    (result,) = asyncio.run(verify_dkim(tampered, resolver))
    assert result.status is DkimStatus.FAIL


@pytest.mark.parametrize("algorithm", list(DkimAlgorithm))
def test_our_signatures_pass_dkimpy(algorithm: DkimAlgorithm) -> None:
    pem, record = generate_key(algorithm)
    signer = DkimSigner("football.example.com", "hato", load_signing_key(pem), FakeClock(NOW, 0.0))
    signature = signer.sign(HEADERS, [BODY[:7], BODY[7:]])
    message = signature + HEADERS + BODY

    def dnsfunc(name: bytes, timeout: int = 5) -> bytes:
        assert name == b"hato._domainkey.football.example.com."
        return record.encode()

    assert dkim.verify(message, dnsfunc=dnsfunc) is True
    assert dkim.verify(message.replace(b"hungry", b"thirsty"), dnsfunc=dnsfunc) is False


def _opendkim_or_skip() -> None:
    if shutil.which("opendkim-testmsg") and shutil.which("unshare"):
        return
    if os.environ.get("CI"):
        pytest.fail("opendkim-tools is missing: .ci/run installs it")
    pytest.skip("opendkim-testmsg not installed (Debian opendkim-tools); CI installs it")


def test_opendkim_signed_mail_passes_with_us(tmp_path: Path) -> None:
    _opendkim_or_skip()
    key = tmp_path / "key.pem"
    key.write_bytes((DATA / "test.private").read_bytes())
    run = subprocess.run(
        ["opendkim-testmsg", "-C", "-d", "example.com", "-s", "test", "-k", str(key)],
        input=_crlf((DATA / "test.message").read_bytes()),
        capture_output=True,
        timeout=30,
        check=True,
    )
    signed = _crlf(run.stdout)
    assert signed.startswith(b"DKIM-Signature:")
    resolver = _resolver({"test._domainkey.example.com": (DATA / "test.txt").read_text().strip()})
    # opendkim-testmsg can only sign rsa-sha1, which RFC 8301 §3.1 forbids us to accept...
    (result,) = asyncio.run(verify_dkim(signed, resolver))
    assert (result.status, result.algorithm) == (DkimStatus.PERMERROR, "rsa-sha1")
    # ...so the signature and canonicalization are checked with that rule lifted.
    (result,) = asyncio.run(verify_dkim(signed, resolver, accept_rsa_sha1=True))
    assert (result.status, result.domain) == (DkimStatus.PASS, "example.com"), result.reason
    tampered = signed.replace(b"This is a test", b"This is a fake")
    (result,) = asyncio.run(verify_dkim(tampered, resolver, accept_rsa_sha1=True))
    assert result.status is DkimStatus.FAIL


# Runs inside the private namespaces: DNS on 127.0.0.1:53 with the key, then opendkim-testmsg.
_NAMESPACE_SCRIPT = textwrap.dedent(
    """
    import subprocess, sys
    from dnslib import RR, QTYPE, TXT
    from dnslib.server import BaseResolver, DNSServer
    name, record, message_path = sys.argv[1], sys.argv[2].encode(), sys.argv[3]
    class Keys(BaseResolver):
        def resolve(self, request, handler):
            reply = request.reply()
            if str(request.q.qname).rstrip(".").lower() == name and request.q.qtype == QTYPE.TXT:
                chunks = [record[i:i + 255] for i in range(0, len(record), 255)]
                reply.add_answer(RR(request.q.qname, QTYPE.TXT, rdata=TXT(chunks), ttl=60))
            return reply
    subprocess.run(["ip", "link", "set", "lo", "up"], check=True)
    server = DNSServer(Keys(), address="127.0.0.1", port=53)
    server.start_thread()
    with open(message_path, "rb") as message:
        run = subprocess.run(["opendkim-testmsg"], stdin=message, capture_output=True)
    sys.stdout.write(f"rc={run.returncode} out={run.stdout!r} err={run.stderr!r}")
    """
)


@pytest.mark.parametrize("algorithm", list(DkimAlgorithm))
def test_our_signatures_pass_opendkim(tmp_path: Path, algorithm: DkimAlgorithm) -> None:
    _opendkim_or_skip()
    if os.geteuid() != 0 or not shutil.which("ip"):
        pytest.skip("needs root and iproute2 for a private DNS namespace")
    pem, record = generate_key(algorithm)
    signer = DkimSigner("football.example.com", "hato", load_signing_key(pem), FakeClock(NOW, 0.0))
    message_file = tmp_path / "message.eml"
    message = signer.sign(HEADERS, [BODY]) + HEADERS + BODY
    resolv = tmp_path / "resolv.conf"
    resolv.write_text("nameserver 127.0.0.1\n")

    def check(data: bytes) -> str:
        message_file.write_bytes(data)
        script = (
            f"mount --bind {resolv} /etc/resolv.conf && exec {sys.executable} -c "
            f'"$0" hato._domainkey.football.example.com "$1" {message_file}'
        )
        run = subprocess.run(
            ["unshare", "--mount", "--net", "sh", "-c", script, _NAMESPACE_SCRIPT, record],
            capture_output=True,
            timeout=60,
            check=False,
        )
        # The last line is opendkim-testmsg's exit status and output (dnslib logs above it).
        return (run.stdout.decode() + run.stderr.decode()).strip().splitlines()[-1]

    assert check(message) == "rc=0 out=b'' err=b''"
    tampered = check(message.replace(b"hungry", b"thirsty"))
    assert not tampered.startswith("rc=0"), tampered
