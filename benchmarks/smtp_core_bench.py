"""Micro benchmark of the sans-IO SMTP server core: 2,000 pipelined 10 KB messages.

Feeds the whole conversation in 64 KiB reads (as a socket would), answers every decision
at once, and prints microseconds per message. `--per-read`: smtp-source's shape instead, one
command a read and the body in 4 KiB reads, each read answered before the next (CPU time per
transaction, best of 7); `--connection`: a connection's own commands (greeting, EHLO, QUIT).
Not a test: run it by hand, `.venv/bin/python benchmarks/smtp_core_bench.py [--per-read]
[--connection]`.
"""

from __future__ import annotations

import sys
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


SETTINGS = ServerSettings(hostname="mx.example.org", offer_starttls=True)


def answered(conn: ServerConnection, data: bytes, text: str | None = None) -> bytes:
    """Feed one read, accept every decision (with `text`), return the replies."""
    conn.receive_data(data)
    while True:
        event = conn.next_event()
        if event is PAUSED:
            conn.accept(text)
        elif event is NEED_DATA or isinstance(event, CloseConnection):
            return conn.data_to_send()


def per_read(count: int) -> float:
    """CPU µs per transaction, one command a read (no pipelining) and a 10 KiB body."""
    body = message_body() + b".\r\n"
    reads = [b"MAIL FROM:<sender@example.com>\r\n", b"RCPT TO:<rcpt@example.org>\r\n"]
    reads += [b"DATA\r\n"] + [body[i : i + 4096] for i in range(0, len(body), 4096)]
    conn = ServerConnection(SETTINGS)
    conn.greet()
    answered(conn, b"EHLO client.example.com\r\n")
    start = time.process_time()
    for _ in range(count):
        for data in reads[:-1]:
            answered(conn, data)
        answered(conn, reads[-1], "Ok: queued as 4XyzAbc12DeF")
    return (time.process_time() - start) * 1e6 / count


def connection(count: int) -> float:
    """CPU µs per connection: the core's greeting, EHLO and QUIT."""
    start = time.process_time()
    for _ in range(count):
        conn = ServerConnection(SETTINGS)
        conn.greet()
        conn.data_to_send()
        answered(conn, b"EHLO client.example.com\r\n")
        answered(conn, b"QUIT\r\n")
    return (time.process_time() - start) * 1e6 / count


def main() -> None:
    for flag, bench, what in (
        ("--per-read", per_read, "transaction"),
        ("--connection", connection, "connection"),
    ):
        if flag in sys.argv:
            bench(200)  # warm up
            print(f"{min(bench(2000) for _ in range(7)):.1f} µs CPU per {what} (best of 7)")
            return
    data = conversation()
    best = min(run(data)[0] for _ in range(5))
    _, messages, octets = run(data)
    assert messages == MESSAGES, messages
    print(f"{MESSAGES} messages of {octets // MESSAGES} octets, {len(data)} octets in all")
    print(f"best of 5: {best * 1e6 / MESSAGES:.1f} µs per message")


if __name__ == "__main__":
    main()
