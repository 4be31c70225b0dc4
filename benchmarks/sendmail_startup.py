"""hato-sendmail start-up and one whole submission, against Postfix's sendmail (hyperfine-like).

    .venv/bin/python benchmarks/sendmail_startup.py [--runs 30]

Each command runs `--runs` times after 3 warm-ups; wall time per run (mean ± stddev, min).
Hato's side talks to a real control socket served by this process (a real queue store in a
temporary directory); Postfix's side is /usr/sbin/sendmail -bp (its mailq: start-up plus a
look at its queue), when Postfix is installed. A benchmark, never a timed test.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from pathlib import Path

from hato.model import ReversePath, SystemClock
from hato.queue import BodyWriter, Queue
from hato.server.control import ControlServer, serve
from hato.server.localsubmit import LocalBody

SENDMAIL = str(Path(sys.executable).with_name("hato-sendmail"))
MESSAGE = b"Subject: benchmark\n\n" + b"line of a cron report\n" * 50


class NoRunner:
    def wake(self) -> None:
        pass


class CountingSubmit:
    """Queues nothing: measures the client and the socket round trip, not the fsync."""

    def __init__(self) -> None:
        self.count = 0

    def new_body(self, recipients: Sequence[str] = ()) -> LocalBody:
        return LocalBody(BodyWriter("BENCH", os.devnull))

    async def __call__(
        self,
        mail_from: ReversePath,
        recipients: list[str],
        message: bytes | LocalBody,
        *,
        uid: int | None,
    ) -> str:
        self.count += 1
        return f"BENCH{self.count}"


def control_server(data: Path) -> tuple[threading.Thread, asyncio.AbstractEventLoop]:
    loop = asyncio.new_event_loop()
    ready = threading.Event()

    async def main() -> None:
        clock = SystemClock()
        queue = await Queue.open(data / "queue", clock=clock, node_id="bench")
        server = ControlServer(
            queue=queue,
            runner=NoRunner(),
            submit=CountingSubmit(),
            clock=clock,
            hostname="bench.example",
            domain="example.org",
        )
        try:
            await serve(data / "control.sock", server, ready=ready.set)
        finally:
            await queue.close()

    thread = threading.Thread(target=loop.run_until_complete, args=(main(),), daemon=True)
    thread.start()
    ready.wait(10)
    return thread, loop


def measure(name: str, argv: list[str], stdin: bytes, env: dict[str, str], runs: int) -> None:
    times = []
    for i in range(runs + 3):
        start = time.perf_counter()
        done = subprocess.run(argv, input=stdin, capture_output=True, env=env, check=False)
        elapsed = time.perf_counter() - start
        if i >= 3:
            times.append(elapsed * 1000)
    mean, dev = statistics.mean(times), statistics.pstdev(times)
    print(
        f"{name:<44} {mean:7.1f} ms ± {dev:5.1f}  (min {min(times):6.1f} ms, "
        f"exit {done.returncode}, {runs} runs)"
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=30)
    runs = parser.parse_args().runs
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp)
        control_server(data)
        env = {**os.environ, "HATO_CONTROL_SOCKET": str(data / "control.sock")}
        down = {**os.environ, "HATO_CONTROL_SOCKET": str(data / "absent.sock")}
        measure(
            "python -c pass (interpreter floor)", [sys.executable, "-c", "pass"], b"", env, runs
        )
        measure("python -S -c pass", [sys.executable, "-S", "-c", "pass"], b"", env, runs)
        measure(
            "hato-sendmail root (server down: EX_TEMPFAIL)", [SENDMAIL, "root"], MESSAGE, down, runs
        )
        measure("hato-sendmail -i root (submitted)", [SENDMAIL, "-i", "root"], MESSAGE, env, runs)
        measure("hato-sendmail -bp (queue over the socket)", [SENDMAIL, "-bp"], b"", env, runs)
        postfix = shutil.which("sendmail", path="/usr/sbin:/usr/bin")
        if postfix and Path("/usr/sbin/postconf").exists():
            measure("postfix sendmail -bp", [postfix, "-bp"], b"", dict(os.environ), runs)
        else:
            print("postfix sendmail: not installed (apt-get install postfix)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
