"""Issue 15: with `[server] workers = 2`, /metrics and `hato status` count the mail of both
workers (they counted the first worker's alone: the one that answers them), and what a worker
that died had counted stays in the totals."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import smtplib
import time
import urllib.request
from pathlib import Path

from peers import maildir
from peers.hato import HatoServer
from peers.server import DomainSetup, MailSetup
from prometheus_client.parser import text_string_to_metric_families
from test_workers import _children


class MeasuredWorkers(HatoServer):
    def __init__(self, data_dir: Path, setup: MailSetup) -> None:
        super().__init__(data_dir, setup)
        self.metrics_port = self.own_port("metrics_port")

    def _config_text(self) -> str:
        text = super()._config_text().replace("[server]\n", "[server]\nworkers = 2\n", 1)
        return text + f'\n[metrics]\naddress = "{self.host}:{self.metrics_port}"\n'

    def scrape(self) -> str:
        url = f"http://{self.host}:{self.metrics_port}/metrics"
        with urllib.request.urlopen(url, timeout=10) as response:
            text: str = response.read().decode()
        return text


def _send(server: HatoServer, marker: str) -> None:
    with smtplib.SMTP(server.host, server.port, timeout=30) as smtp:
        body = f"{maildir.MARKER_HEADER.decode()}: {marker}\r\n\r\nhi\r\n".encode()
        smtp.sendmail("a@example.net", ["u@example.org"], body)


def _value(text: str, name: str, **labels: str) -> float:
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and sample.labels == labels:
                return sample.value
    return 0.0


def _received(text: str) -> float:
    return _value(text, "hato_messages_received_total", role="mx", result="accepted")


def test_metrics_and_status_count_the_mail_of_every_worker(tmp_path: Path) -> None:
    setup = MailSetup(domains=(DomainSetup("example.org", accept_any=True),))
    server = MeasuredWorkers(tmp_path / "data", setup)
    server.start()
    assert server.proc is not None
    first, second = _children(server.proc.pid)
    try:
        # Which worker accepts is the kernel's choice; a stopped worker accepts nothing, so
        # stopping one at a time decides it (both take from the same listening socket).
        os.kill(first, signal.SIGSTOP)
        for n in range(3):
            _send(server, f"second-{n}")
        os.kill(first, signal.SIGCONT)
        os.kill(second, signal.SIGSTOP)
        for n in range(2):
            _send(server, f"first-{n}")
        os.kill(second, signal.SIGCONT)
        deadline = time.monotonic() + 30  # the other worker publishes every 2 s
        while True:
            text = server.scrape()
            accepted = _received(text)
            local = _value(text, "hato_deliveries_total", result="delivered", transport="local")
            if (accepted, local) == (5, 5):
                break
            assert time.monotonic() < deadline, text
            time.sleep(0.2)
        # Both workers took mail (the session id names the worker: `mzq3kd.1.1f`).
        workers = {"0", "1"}
        while not workers <= set(
            re.findall(r"event=connect session=\w+\.(\d)\.", server.log_text())
        ):
            assert time.monotonic() < deadline, server.log_text()[-2000:]  # logged in batches
            time.sleep(0.2)
        status = server.hato("status").stdout
        assert "last hour:  5 delivered, 0 deferred, 0 failed" in status, status
        # A worker that dies: its replacement counts from zero, the totals keep what it did.
        os.kill(second, signal.SIGKILL)
        while len(set(_children(server.proc.pid)) - {first, second}) < 1:
            assert time.monotonic() < deadline + 30, "the dead worker was not replaced"
            time.sleep(0.2)
        os.kill(first, signal.SIGSTOP)
        _send(server, "after")  # to the replacement, which has published (0, then 1)
        os.kill(first, signal.SIGCONT)
        while _received(text := server.scrape()) != 6:
            assert time.monotonic() < deadline + 30, text
            time.sleep(0.2)
    finally:
        for worker in (first, second):
            with contextlib.suppress(ProcessLookupError):
                os.kill(worker, signal.SIGCONT)
        server.stop()
