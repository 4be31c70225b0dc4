"""The encryption helper process (crypto/helper.py): what it stores is what `protect_stream`
stores in the caller's thread, and when it fails nothing is left behind."""

from __future__ import annotations

import datetime as dt
import errno
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import ClassVar

import pytest

from hato.crypto import (
    FailurePolicy,
    KeyFailure,
    KeyKind,
    PublicKey,
    parse_public_key,
    protect_stream,
)
from hato.crypto.helper import EncryptHelper, HelperFailed, KeySnapshot, protect_far
from hato.crypto.scratch import SealedScratch
from hato.model import Address
from hato.queue import BodyWriter
from kit.cryptokeys import NOW, Gpg, Smime, need

CAROL = Address.parse("carol@example.org")  # S/MIME
ECC = Address.parse("ecc@example.org")  # OpenPGP (Curve25519)
EXP = Address.parse("exp@example.org")  # OpenPGP, expired; policy PLAINTEXT
DAVE = Address.parse("dave@example.org")  # no key
MARKER = b"Zq7xK3-helper"
LINE = b"a line of the body, " + MARKER + b", padded out to be long enough......\r\n"
LINES = 8_000  # 0.5 MB: above intake/protect.py's FAR_FROM


class Keys:
    def __init__(self, keys: dict[Address, PublicKey]) -> None:
        self.keys = keys

    def get(self, address: Address) -> PublicKey | None:
        return self.keys.get(address)

    def policy(self, address: Address) -> FailurePolicy:
        return FailurePolicy.PLAINTEXT if address == EXP else FailurePolicy.DEFER


class Bodies:
    """Queue bodies in a directory, as Queue.new_body makes them."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.made = 0

    def __call__(self) -> BodyWriter:
        self.made += 1
        return BodyWriter(f"q{self.made}", str(self.directory / f"q{self.made}"))


@pytest.fixture
def helper() -> Iterator[EncryptHelper]:
    running = EncryptHelper()
    yield running
    running.close()


@pytest.fixture
def keys(gpg: Gpg, smime_rsa: Smime) -> Keys:
    found = {CAROL: parse_public_key(smime_rsa.cert_pem, CAROL, NOW)}
    found[ECC] = parse_public_key(gpg.export(str(ECC)), ECC, NOW)
    # Made on 2020-01-01 for a year (conftest.py): imported while it was valid.
    found[EXP] = parse_public_key(gpg.export(str(EXP)), EXP, dt.datetime(2020, 6, 1, tzinfo=dt.UTC))
    return Keys(found)


def _scratch(tmp_path: Path) -> SealedScratch:
    scratch = SealedScratch(str(tmp_path))
    scratch.write(b"From: Bob <bob@example.net>\r\nTo: carol@example.org\r\nSubject: big\r\n\r\n")
    for _ in range(LINES // 1000):
        scratch.write(LINE * 1000)
    return scratch


def _stored(body: BodyWriter) -> bytes:
    body.seal()
    data = Path(body.path).read_bytes()
    assert len(data) == body.size
    return data


def _opened(data: bytes, tmp_path: Path, gpg: Gpg, smime: Smime) -> bytes:
    """The plaintext inside an encrypted copy, by GnuPG or OpenSSL as a user would open it."""
    if b"application/pkcs7-mime" in data:
        (tmp_path / "key.pem").write_bytes(smime.key_pem)
        (tmp_path / "in.eml").write_bytes(data)
        result = subprocess.run(
            [need("openssl"), "cms", "-decrypt", "-inkey", "key.pem", "-in", "in.eml"],
            cwd=tmp_path,
            capture_output=True,
            timeout=60,
            check=True,
        )
        return result.stdout
    armored = data[data.index(b"-----BEGIN PGP MESSAGE-----") :]
    return gpg.run("--decrypt", input=armored)


def test_the_helper_stores_what_the_thread_stores(
    tmp_path: Path, helper: EncryptHelper, keys: Keys, gpg: Gpg, smime_rsa: Smime
) -> None:
    recipients = [DAVE, CAROL, ECC, EXP]
    (tmp_path / "near").mkdir()
    (tmp_path / "far").mkdir()
    scratch = _scratch(tmp_path)
    near = protect_stream(scratch.chunks, recipients, keys, NOW, Bodies(tmp_path / "near"))
    far = protect_far(helper, scratch, recipients, keys, NOW, Bodies(tmp_path / "far"))
    scratch.close()
    assert helper.pid is not None  # it was the helper's work
    assert [(c.recipients, c.encrypted) for c in far.copies] == [
        (c.recipients, c.encrypted) for c in near.copies
    ]
    assert [c.recipients for c in far.copies] == [(DAVE,), (CAROL,), (ECC,), (EXP,)]
    assert far.deferred == near.deferred == ()
    assert [f.recipient for f in far.in_clear] == [f.recipient for f in near.in_clear] == [EXP]
    for mine, theirs in zip(far.copies, near.copies, strict=True):
        data, expected = _stored(mine.body), _stored(theirs.body)
        if not mine.encrypted:  # the plaintext copy and the warning-headed one: the same
            assert data == expected and data.count(MARKER) == LINES
            continue
        assert MARKER not in data
        opened = _opened(data, tmp_path, gpg, smime_rsa)
        assert opened == _opened(expected, tmp_path, gpg, smime_rsa)
        assert opened.count(MARKER) == LINES
    assert sorted(os.listdir(tmp_path / "far")) == ["q1", "q2", "q3", "q4"]


def test_lines_put_in_front_are_read_first_by_the_helper_and_the_thread(
    tmp_path: Path, helper: EncryptHelper, keys: Keys, gpg: Gpg, smime_rsa: Smime
) -> None:
    """The fields the checks and filters added after the message came (SealedScratch.prepend,
    intake/message.py) are in every copy, inside the encrypted part of a keyed one."""
    added = b"X-Filter-Report: " + MARKER + b" seen\r\n"
    scratch = _scratch(tmp_path)
    scratch.prepend(added)
    assert b"".join(scratch.chunks()).startswith(added + b"From: Bob")
    (tmp_path / "far").mkdir()
    far = protect_far(helper, scratch, [DAVE, ECC], keys, NOW, Bodies(tmp_path / "far"))
    scratch.close()
    assert helper.pid is not None
    plain, keyed = (_stored(c.body) for c in far.copies)
    assert plain.startswith(added) and plain.count(MARKER) == LINES + 1
    assert MARKER not in keyed
    assert added in _opened(keyed, tmp_path, gpg, smime_rsa)


def test_a_body_not_needed_is_discarded(tmp_path: Path, helper: EncryptHelper, keys: Keys) -> None:
    # EXP's policy is PLAINTEXT, so a body for the warning-headed copy is made in advance;
    # with only CAROL's copy stored, it goes.
    scratch = _scratch(tmp_path)
    bodies = Bodies(tmp_path)
    only = Keys({CAROL: keys.keys[CAROL], EXP: keys.keys[CAROL]})  # EXP's key works here
    done = protect_far(helper, scratch, [CAROL, EXP], only, NOW, bodies)
    scratch.close()
    assert [c.recipients for c in done.copies] == [(CAROL,), (EXP,)]
    assert bodies.made == 3 and sorted(os.listdir(tmp_path)) == ["q1", "q2"]


def test_a_key_that_failed_is_reported_by_the_helper_as_in_the_thread(
    tmp_path: Path, helper: EncryptHelper, keys: Keys
) -> None:
    scratch = _scratch(tmp_path)
    done = protect_far(helper, scratch, [ECC], Keys({ECC: keys.keys[EXP]}), NOW, Bodies(tmp_path))
    scratch.close()
    # The expired key of a DEFER user: nothing stored, the transaction is deferred.
    assert done.copies == () and os.listdir(tmp_path) == []
    assert [(f.recipient, f.policy) for f in done.deferred] == [(ECC, FailurePolicy.DEFER)]
    assert all(isinstance(f, KeyFailure) for f in done.deferred)


# Reads a job, writes a little into its first body and dies without an answer: a helper
# killed mid-message. It does so only when the file `marker` does not exist yet (it makes
# it), else it is the real helper: the next job finds a working helper again.
DYING = """
import os, socket, sys
marker, fd = sys.argv[1], sys.argv[2]
if os.path.exists(marker):
    from hato.crypto.helper import main
    sys.exit(main(["-c", fd]))
open(marker, "w").close()
sock = socket.socket(fileno=int(fd))
_, fds, _, _ = socket.recv_fds(sock, 1, 256)
sock.recv(1 << 16)
os.write(fds[1], b"half a copy")
os._exit(1)
"""


def test_a_helper_dying_mid_message_leaves_nothing_and_the_next_job_works(
    tmp_path: Path, keys: Keys
) -> None:
    (tmp_path / "q").mkdir()
    marker = tmp_path / "died-once"
    dying = EncryptHelper((sys.executable, "-c", DYING, str(marker)))
    scratch = _scratch(tmp_path)
    try:
        with pytest.raises(HelperFailed):
            protect_far(dying, scratch, [DAVE, CAROL], keys, NOW, Bodies(tmp_path / "q"))
        assert marker.exists() and os.listdir(tmp_path / "q") == []  # every body gone
        # The scratch file is still the caller's: the message is not lost, and the next job
        # (a new helper) stores it.
        assert b"".join(scratch.chunks()).count(MARKER) == LINES
        done = protect_far(dying, scratch, [DAVE, CAROL], keys, NOW, Bodies(tmp_path / "q"))
    finally:
        scratch.close()
        dying.close()
    assert [c.recipients for c in done.copies] == [(DAVE,), (CAROL,)]
    assert _stored(done.copies[0].body).count(MARKER) == LINES


class ReadOnlyBody(BodyWriter):
    """A body whose file the helper cannot write (as a full disk would refuse it): it is
    given a read-only descriptor of the file."""

    opened: ClassVar[list[int]] = []

    def file_for_writer(self) -> int:
        super().file_for_writer()
        self.opened.append(os.open(self.path, os.O_RDONLY))
        return self.opened[-1]


def test_a_body_the_helper_cannot_write_is_an_os_error_and_nothing_stays(
    tmp_path: Path, helper: EncryptHelper, keys: Keys
) -> None:
    scratch = _scratch(tmp_path)
    try:
        with pytest.raises(OSError) as raised:
            body = ReadOnlyBody("q1", str(tmp_path / "q1"))
            protect_far(helper, scratch, [DAVE], keys, NOW, lambda: body)
    finally:
        scratch.close()
        for fd in ReadOnlyBody.opened:
            os.close(fd)
    assert raised.value.errno == errno.EBADF and raised.value.filename == "queue body"
    assert os.listdir(tmp_path) == []


def _key(address: Address) -> PublicKey:
    return PublicKey(KeyKind.OPENPGP, address, b"", "ab" * 20, None, "test")


def test_the_snapshot_answers_as_the_key_store() -> None:
    keys = Keys({CAROL: _key(CAROL), EXP: _key(EXP)})
    snapshot = KeySnapshot.of(keys, [CAROL, EXP, DAVE])
    assert snapshot.get(Address.parse("Carol@Example.ORG")) == keys.get(CAROL)  # canonical
    assert snapshot.get(DAVE) is None
    assert snapshot.policy(EXP) is FailurePolicy.PLAINTEXT
    assert snapshot.policy(CAROL) is FailurePolicy.DEFER


# Takes a job and never answers (a stuck helper).
STUCK = """
import socket, sys, threading
sock = socket.socket(fileno=int(sys.argv[1]))
socket.recv_fds(sock, 1, 256)
threading.Event().wait()
"""


def test_a_helper_that_never_answers_is_stopped_and_the_job_fails(
    tmp_path: Path, keys: Keys
) -> None:
    stuck = EncryptHelper((sys.executable, "-c", STUCK), timeout=0.5)
    scratch = _scratch(tmp_path)
    try:
        with pytest.raises(HelperFailed):
            protect_far(stuck, scratch, [DAVE, CAROL], keys, NOW, Bodies(tmp_path))
        assert stuck.pid is None  # stopped (killed and reaped)
    finally:
        scratch.close()
        stuck.close()
    assert os.listdir(tmp_path) == []
