"""The loop's CPU per message of Hato's side of the rspamd check, without rspamd's own.

A stand-in for rspamd's normal worker (a child process on a unix socket, `--serve`) reads each
request and answers at once with the reply rspamd 3.4 gives the benchmark's message (the
tests' configuration: nine symbols, the milter block asking to add four fields and remove
five), then closes, as rspamd does. The measured process runs what the server runs for a
message still in memory: `spam_check` (the request, its reply, the verdict, the `rspamd` log
line through the server's log set-up) and `rewritten` (rspamd's header removals), one message
at a time on uvloop. Prints the event loop thread's CPU (`thread_time`) per message, best of
five runs; the stand-in's CPU is not counted. So two versions of Hato can be compared without
rspamd's 3 ms a scan and the machine's load swamping the difference: run it alternately
against each version (PYTHONPATH=OTHER/src). `--session`: a whole message instead, in a
session of its own as smtp-source sends it (session_message_bench.py's `--short`: connect,
EHLO, the transaction, the direct delivery into a Maildir, QUIT), with `[rspamd]` asking the
stand-in, and the same without `[rspamd]`; `--profile` adds cProfile's call count per message
and its top functions (the loop thread), a count the machine's load does not move. Not a test:

    .venv/bin/python benchmarks/rspamd_step_bench.py [--messages 2000] [--session [--profile]]
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import json
import logging
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

MESSAGE = (
    b"From: <bench@client.test>\r\nTo: <s20@bench.test>\r\nDate: Mon, 7 Dec 2026 18:00:00 +0000"
    b"\r\nMessage-Id: <x@y>\r\n\r\n" + b"La de da de da 1.\r\n" * 540
)  # smtp-source's 10 KB message, as rspamd_vs_postfix.py sends it
PREFIX = b"Received: from localhost ([127.0.0.1]) by hato.test with ESMTP id q1; 7 Dec 2026\r\n"
SYMBOLS = {
    "FROM_NO_DN": 0.0, "TO_MATCH_ENVRCPT_ALL": 0.0, "RCVD_COUNT_ZERO": 0.0,
    "FROM_EQ_ENVFROM": 0.0, "TO_DN_NONE": 0.0, "MID_RHS_NOT_FQDN": 0.5, "RCPT_COUNT_ONE": 0.0,
    "MIME_TRACE": 0.0, "MIME_GOOD": -0.1,
}  # fmt: skip
RESULT = "default: False [0.40 / 15.00];\r\n\t" + ";\r\n\t".join(
    f"{name}({score:.2f})[]" for name, score in SYMBOLS.items()
)
REMOVED = ("X-Spamd-Result", "X-Rspamd-Action", "X-Rspamd-Server", "X-Spam", "X-Rspamd-Queue-Id")
REPLY = {
    "is_skipped": False,
    "score": 0.4,
    "required_score": 15.0,
    "action": "no action",
    "symbols": {
        name: {"name": name, "score": score, "metric_score": score, "description": "x" * 40}
        for name, score in SYMBOLS.items()
    },
    "messages": {},
    "message-id": "x@y",
    "time_real": 0.003,
    "milter": {
        "remove_headers": {name: 0 for name in REMOVED},
        "add_headers": {
            "X-Rspamd-Queue-Id": {"value": "q1", "order": -1},
            "X-Rspamd-Server": {"value": "bench", "order": -1},
            "X-Spamd-Result": {"value": RESULT, "order": -1},
            "X-Rspamd-Action": {"value": "no action", "order": -1},
        },
    },
}


async def serve(path: str) -> None:
    """The stand-in: each request read whole, answered with REPLY, the connection closed."""
    body = json.dumps(REPLY).encode()
    reply = b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: %d\r\n\r\n%s" % (
        len(body),
        body,
    )

    async def one(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        length = int(head.lower().split(b"content-length: ")[1].split(b"\r\n")[0])
        await reader.readexactly(length)
        writer.write(reply)
        await writer.drain()
        writer.close()

    server = await asyncio.start_unix_server(one, path, backlog=128)
    await server.serve_forever()


async def measure(path: str, messages: int, tmp: str) -> float:
    """Loop-thread CPU seconds per message of spam_check and rewritten."""
    from hato.filters import Envelope, RspamdClient
    from hato.intake.spamcheck import SpamFilter, rewritten, spam_check
    from hato.model import Role
    from hato.queue.body import BodyWriter

    spam = SpamFilter(RspamdClient(f"unix:{path}", timeout=10))
    envelope = Envelope("<bench@client.test>", ("<s20@bench.test>",), "127.0.0.1", "client")

    async def one() -> None:
        body = BodyWriter("q1", os.path.join(tmp, "q1"))
        body.write(MESSAGE)  # under the flush threshold: in memory, as 10 KB mail stays
        verdict = await spam_check(spam, Role.MX, envelope, PREFIX, body)
        assert verdict.refusal is None and verdict.edits_header
        same = await rewritten(body, verdict, lambda: BodyWriter("q2", os.path.join(tmp, "q2")))
        assert same is body  # nothing rspamd removes is there

    for _ in range(100):  # warm up
        await one()
    best = float("inf")
    for _ in range(5):
        start = time.thread_time()
        for _ in range(messages):
            await one()
        best = min(best, (time.thread_time() - start) / messages)
    return best


@functools.cache
def _plain_config() -> str:
    """session_message_bench.py's configuration as it came (before `sessions` adds to it)."""
    import session_message_bench as bench

    return bench.CONFIG


async def sessions(path: str | None, messages: int, profile: bool) -> str:
    """Loop-thread CPU per message of whole short sessions (session_message_bench.py), with
    `[rspamd]` asking the stand-in at `path` (None: without rspamd); with `profile`, cProfile's
    calls per message and top functions."""
    import session_message_bench as bench

    bench.SHORT = True
    plain = _plain_config()
    bench.CONFIG = plain + (f'\n[rspamd]\nurl = "unix:{path}"\n' if path is not None else "")
    with tempfile.TemporaryDirectory(prefix="hato-rspamd-session-") as data:
        ctx, rooms = await bench.context(Path(data))
        await bench.messages(ctx, 50)  # warm up
        await asyncio.sleep(2.1)  # the database stamps settle (as session_message_bench)
        if profile:
            import cProfile
            import io
            import pstats

            with cProfile.Profile(time.thread_time) as prof:
                await bench.messages(ctx, messages)
            out = io.StringIO()
            stats = pstats.Stats(prof, stream=out)
            stats.sort_stats("tottime").print_stats(30)
            calls = getattr(stats, "total_calls", 0)
            return f"{calls / messages:.0f} calls per message\n{out.getvalue()}"
        runs = [(await bench.messages(ctx, messages))[0] for _ in range(5)]
        if hasattr(rooms.maildir, "close"):
            rooms.maildir.close()
    return f"{min(runs) * 1e6 / messages:.0f} us of loop-thread CPU per message (best of 5)"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=2000)
    parser.add_argument("--serve", help=argparse.SUPPRESS)
    parser.add_argument("--session", action="store_true", help="whole short sessions")
    parser.add_argument("--profile", action="store_true", help="with --session: cProfile")
    args = parser.parse_args()
    import uvloop

    if args.serve:
        uvloop.run(serve(args.serve))
        return
    from hato.boot.logsetup import configure_logging

    configure_logging("text", "info", open(os.devnull, "w"))  # noqa: SIM115
    logging.getLogger("asyncio").setLevel(logging.ERROR)
    with tempfile.TemporaryDirectory(prefix="hato-rspamd-step-") as tmp:
        path = str(Path(tmp) / "normal.sock")
        stand_in = subprocess.Popen([sys.executable, __file__, "--serve", path])
        try:
            deadline = time.monotonic() + 30
            while not os.path.exists(path) and time.monotonic() < deadline:
                time.sleep(0.05)
            if args.session:
                for label, url in (("with [rspamd]", path), ("without", None)):
                    print(f"{label}: " + uvloop.run(sessions(url, args.messages, args.profile)))
                return
            per = uvloop.run(measure(path, args.messages, tmp))
        finally:
            stand_in.terminate()
            stand_in.wait()
    print(f"{per * 1e6:.0f} us of loop-thread CPU per message (best of 5 x {args.messages})")


if __name__ == "__main__":
    main()
