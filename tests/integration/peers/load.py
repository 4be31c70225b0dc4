"""Mail under load for the stop and crash tests: concurrent smtplib clients, each message with
a unique marker, recording which were attempted and which got 250 to DATA, so that
`maildir.assert_each_once` can say after a restart that nothing answered 250 was lost and
nothing was delivered twice."""

from __future__ import annotations

import smtplib
import threading
import time
import uuid
from collections.abc import Callable


class Load:
    """`clients` threads sending `message(marker)` from `sender` to `rcpt`, each at most
    `per_client` messages (None: until halted), reconnecting after any error."""

    def __init__(
        self,
        host: str,
        port: int,
        sender: str,
        rcpt: str,
        message: Callable[[str], bytes],
        per_client: int | None = None,
    ) -> None:
        self.host, self.port = host, port
        self.sender, self.rcpt, self.message = sender, rcpt, message
        self.per_client = per_client
        self.attempted: set[str] = set()
        self.accepted: set[str] = set()
        self.lock = threading.Lock()
        self.stop = threading.Event()
        self.threads: list[threading.Thread] = []

    def start(self, clients: int) -> None:
        self.threads = [
            threading.Thread(target=self._client, args=(n,), daemon=True) for n in range(clients)
        ]
        for thread in self.threads:
            thread.start()

    def wait_accepted(self, count: int, timeout: float = 60) -> bool:
        """Whether `count` messages got their 250 within `timeout` seconds."""
        deadline = time.monotonic() + timeout
        while len(self.accepted) < count and time.monotonic() < deadline:
            time.sleep(0.01)
        return len(self.accepted) >= count

    def halt(self) -> tuple[set[str], set[str]]:
        """Stop the clients: the markers (accepted, attempted)."""
        self.stop.set()
        for thread in self.threads:
            thread.join(timeout=20)
        with self.lock:
            return set(self.accepted), set(self.attempted)

    def _client(self, number: int) -> None:
        sent = 0

        def more() -> bool:
            return not self.stop.is_set() and (self.per_client is None or sent < self.per_client)

        while more():
            try:
                with smtplib.SMTP(self.host, self.port, timeout=10) as smtp:
                    while more():
                        marker = f"{number}-{uuid.uuid4().hex}"
                        sent += 1
                        with self.lock:
                            self.attempted.add(marker)
                        # sendmail returns only after the final 250 to DATA.
                        smtp.sendmail(self.sender, [self.rcpt], self.message(marker))
                        with self.lock:
                            self.accepted.add(marker)
            except (OSError, smtplib.SMTPException):
                time.sleep(0.05)
