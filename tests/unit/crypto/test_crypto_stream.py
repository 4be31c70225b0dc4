"""Streaming encryption (issue 12, item 3): a message read from a sealed scratch file is
encrypted chunk by chunk, so memory does not grow with its size, and what the scratch file
holds on disk is ciphertext only; the results open with the real tools."""

from __future__ import annotations

import email
import email.policy
import os
import subprocess
import threading
import tracemalloc
from pathlib import Path

import pytest

from hato.crypto import parse_public_key
from hato.crypto import scratch as scratch_module
from hato.crypto.encrypt import encrypt_stream
from hato.crypto.scratch import SealedScratch
from hato.model import Address
from kit.cryptokeys import NOW, Gpg, Smime, need

CAROL = Address.parse("carol@example.org")
MARKER = b"Zq7xK3-stream"
LINE = b"a line of the body, " + MARKER + b", padded out to be long enough......\r\n"


def _scratch(tmp_path: Path, lines: int) -> SealedScratch:
    scratch = SealedScratch(str(tmp_path))
    scratch.write(b"From: Bob <bob@example.net>\r\nTo: carol@example.org\r\nSubject: big\r\n\r\n")
    for _ in range(lines // 1000):
        scratch.write(LINE * 1000)
    return scratch


def test_the_scratch_file_holds_ciphertext_and_reads_back(tmp_path: Path) -> None:
    scratch = _scratch(tmp_path, 20_000)
    assert os.listdir(tmp_path) == []  # no name: O_TMPFILE (or unlinked at once)
    whole = b"".join(scratch.chunks())
    assert whole.count(MARKER) == 20_000 and len(whole) == scratch.size
    assert b"".join(scratch.chunks()) == whole  # as often as asked
    assert scratch._file is not None
    on_disk = os.pread(scratch._file.fileno(), scratch.size + 1, 0)
    assert len(on_disk) == scratch.size and MARKER not in on_disk
    scratch.close()


def test_closing_a_scratch_file_with_data_does_not_wait_for_close_2(tmp_path: Path) -> None:
    # Issue 12 item 3: closing a 50 MB O_TMPFILE frees its blocks in close(2), 14-25 ms (more
    # while the journal is busy) that the event loop spent; it happens in a background thread.
    scratch = _scratch(tmp_path, 20_000)
    assert scratch._file is not None
    fd = scratch._file.fileno()
    gate = threading.Event()
    held = scratch_module._CLOSER.submit(gate.wait)  # the background thread is busy
    try:
        scratch.close()
        os.fstat(fd)  # still open: close() did not do the close(2) itself
    finally:
        gate.set()
    held.result()
    scratch_module.closes_done().result()
    with pytest.raises(OSError):
        os.fstat(fd)  # closed by the background thread


def test_a_scratch_file_without_data_is_closed_at_once(tmp_path: Path) -> None:
    scratch = SealedScratch(str(tmp_path))
    scratch.write(b"Subject: small\r\n\r\nhi\r\n")
    assert scratch._file is not None
    fd = scratch._file.fileno()
    scratch.close()
    with pytest.raises(OSError):
        os.fstat(fd)


def _inner(outer: bytes) -> bytes:
    return outer.split(b"\r\n\r\n", 1)[1]


def test_a_big_message_is_encrypted_in_bounded_memory_and_openssl_reads_it(
    tmp_path: Path, smime_rsa: Smime
) -> None:
    openssl = need("openssl")
    scratch = _scratch(tmp_path, 100_000)  # 7 MB
    key = parse_public_key(smime_rsa.cert_pem, CAROL, NOW)
    out = (tmp_path / "out.eml").open("wb")
    tracemalloc.start()

    def write(data: bytes) -> None:
        out.write(data)

    assert encrypt_stream(scratch.chunks, key, write, now=NOW)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    out.close()
    assert peak < 2 * 1024 * 1024, peak  # about 0.85 MB, for 1.4 MB and for 28 MB alike
    (tmp_path / "key.pem").write_bytes(smime_rsa.key_pem)
    (tmp_path / "cert.pem").write_bytes(smime_rsa.cert_pem)
    result = subprocess.run(
        [openssl, "cms", "-decrypt", "-inkey", "key.pem", "-recip", "cert.pem", "-in", "out.eml"],
        cwd=tmp_path,
        capture_output=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr[:500]
    assert _inner(result.stdout).count(MARKER) == 100_000


def test_a_big_message_to_an_openpgp_key_opens_with_gpg(
    tmp_path: Path, gpg: Gpg, smime_rsa: Smime
) -> None:
    for uid in ("rsa@example.org", "ecc@example.org"):
        scratch = _scratch(tmp_path, 30_000)
        key = parse_public_key(gpg.export(uid), Address.parse(uid), NOW)
        out: list[bytes] = []
        assert encrypt_stream(scratch.chunks, key, out.append, now=NOW)
        parsed = email.message_from_bytes(b"".join(out), policy=email.policy.default)
        armored = list(parsed.iter_parts())[1].get_content()
        armored = armored if isinstance(armored, bytes) else armored.encode()
        assert _inner(gpg.run("--decrypt", input=armored)).count(MARKER) == 30_000
