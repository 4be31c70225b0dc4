"""intake/protect.py: a big keyed message is encrypted by the helper process, and when the
helper dies mid-message the client gets 451 and nothing stays in the queue."""

from __future__ import annotations

import asyncio
import logging
import os
import sys
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric import rsa

from hato.crypto import FailurePolicy, PublicKey, SealedScratch, parse_public_key
from hato.crypto.helper import EncryptHelper
from hato.intake import protect as protect_module
from hato.intake.protect import protect
from hato.model import Address, Reply
from hato.queue import Queue
from kit.clock import FakeClock
from kit.cryptokeys import NOW, make_cert

CAROL = Address.parse("carol@example.org")
DAVE = Address.parse("dave@example.org")
LINE = b"a line of a big message to a user with a key................................\r\n"

# Reads a job and dies without answering (killed mid-message).
DYING = """
import socket, sys, os
sock = socket.socket(fileno=int(sys.argv[1]))
socket.recv_fds(sock, 1, 256)
sock.recv(1 << 16)
os._exit(1)
"""


class Keys:
    def __init__(self, key: PublicKey) -> None:
        self.key = key

    def get(self, address: Address) -> PublicKey | None:
        return self.key if address == CAROL else None

    def policy(self, address: Address) -> FailurePolicy:
        return FailurePolicy.DEFER


def _big(directory: str) -> SealedScratch:
    scratch = SealedScratch(directory)
    scratch.write(b"From: <bob@example.net>\r\nSubject: big\r\n\r\n")
    scratch.write(LINE * 2_000)  # 160 KB
    return scratch


def test_a_helper_dying_mid_message_answers_451_and_stores_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    key = parse_public_key(make_cert(rsa.generate_private_key(65537, 2048)).cert_pem, CAROL, NOW)
    monkeypatch.setattr(protect_module, "FAR_FROM", 100_000)  # the message goes to the helper
    dying = EncryptHelper((sys.executable, "-c", DYING))
    working = EncryptHelper()

    async def scenario() -> tuple[object, object, list[str]]:
        queue = await Queue.open(
            tmp_path / "q",
            clock=FakeClock(1_800_000_000.0),
            node_id="n",
            free_space=lambda _: 1 << 40,
        )
        try:
            now = NOW  # the certificate's validity (kit.cryptokeys)
            monkeypatch.setattr(protect_module, "HELPER", dying)
            failed = await protect(
                Keys(key), _big(queue.messages_dir), [DAVE, CAROL], now, queue, "t"
            )
            left = os.listdir(queue.messages_dir)
            monkeypatch.setattr(protect_module, "HELPER", working)
            stored = await protect(
                Keys(key), _big(queue.messages_dir), [DAVE, CAROL], now, queue, "t"
            )
            assert working.pid is not None  # the second message was the helper's work
            for body, _ in stored if isinstance(stored, list) else []:
                body.discard()
            return failed, stored, left
        finally:
            await queue.close()

    with caplog.at_level(logging.ERROR, logger="hato.smtpd"):
        try:
            failed, stored, left = asyncio.run(scenario())
        finally:
            dying.close()
            working.close()
    # RFC 5321 §4.2.2: 451, the client sends again; no body of the message stays behind.
    assert failed == Reply(451, "4.3.0", "Local error in processing")
    assert left == []
    assert any("event=encrypt-helper-failed" in r.getMessage() for r in caplog.records)
    # The next message finds a working helper: the plaintext copy and Carol's.
    assert isinstance(stored, list) and [dests for _, dests in stored] == [(DAVE,), (CAROL,)]
