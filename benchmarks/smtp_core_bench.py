"""Micro benchmark of the sans-IO SMTP server core: 2,000 pipelined 10 KB messages.

Feeds the whole conversation in 64 KiB reads (as a socket would), answers every decision
at once, and prints microseconds per message. Not a test: run it by hand,
`.venv/bin/python benchmarks/smtp_core_bench.py`.
"""

from __future__ import annotations

import time

from hato.smtp import (
    NEED_DATA,
    PAUSED,
    BodyChunk,
    CloseConnection,
    MessageEnd,
    ServerConnection,
    ServerSettings,
)

MESSAGES = 2000
READ_SIZE = 64 * 1024


def message_body() -> bytes:
    headers = b"From: a@example.com\r\nTo: b@example.org\r\nSubject: bench\r\n\r\n"
    line = b"The quick brown fox jumps over the lazy dog, again and again and again.\r\n"
    body = headers + line * ((10 * 1024 - len(headers)) // len(line))
    return body + b".a stuffed line\r\n"


def conversation() -> bytes:
    body = message_body()
    one = (
        b"MAIL FROM:<sender@example.com> SIZE=10240\r\n"
        b"RCPT TO:<rcpt@example.org>\r\n"
        b"DATA\r\n" + body + b".\r\n"
    )
    return b"EHLO client.example.com\r\n" + one * MESSAGES + b"QUIT\r\n"


def run(data: bytes) -> tuple[float, int, int]:
    conn = ServerConnection(ServerSettings(hostname="mx.example.org"))
    conn.greet()
    messages = body_octets = 0
    start = time.perf_counter()
    for offset in range(0, len(data), READ_SIZE):
        conn.receive_data(data[offset : offset + READ_SIZE])
        while True:
            event = conn.next_event()
            if event is NEED_DATA:
                break
            if event is PAUSED:
                conn.accept()
            elif isinstance(event, BodyChunk):
                body_octets += len(event.data)
            elif isinstance(event, MessageEnd):
                messages += 1
            elif isinstance(event, CloseConnection):
                break
        conn.data_to_send()
    return time.perf_counter() - start, messages, body_octets


def main() -> None:
    data = conversation()
    best = min(run(data)[0] for _ in range(5))
    _, messages, octets = run(data)
    assert messages == MESSAGES, messages
    print(f"{MESSAGES} messages of {octets // MESSAGES} octets, {len(data)} octets in all")
    print(f"best of 5: {best * 1e6 / MESSAGES:.1f} µs per message")


if __name__ == "__main__":
    main()
