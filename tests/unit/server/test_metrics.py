"""Prometheus metrics: what an admin's Prometheus scrapes from /metrics after real traffic."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Callable
from dataclasses import dataclass

import pytest
from aiohttp import ClientSession
from peers.net import free_port
from prometheus_client.parser import text_string_to_metric_families

from hato.model import (
    PermFailed,
    Reply,
    Role,
    TempFailed,
)
from hato.model.queuestore import QueueError, QueueStats
from hato.server.metrics import (
    Metrics,
    MetricsBindError,
    bind_metrics,
    refresh_queue,
    serve_metrics,
)

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]
DEFER = TempFailed(Reply(451, "4.3.0", "try later"))
BOUNCE = PermFailed(Reply(550, "5.1.1", "no such user"))


@dataclass(frozen=True, slots=True)
class Where:
    host: str
    port: int


def samples(text: str) -> Samples:
    """Every sample of a scrape, parsed by prometheus_client's own parser."""
    out: Samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out[sample.name, frozenset(sample.labels.items())] = sample.value
    return out


def value(scraped: Samples, name: str, **labels: str) -> float:
    return scraped[name, frozenset(labels.items())]


async def scrape(port: int, path: str = "/metrics") -> tuple[int, str, str]:
    async with (
        ClientSession() as http,
        http.get(f"http://127.0.0.1:{port}{path}") as response,
    ):
        return response.status, response.headers.get("Content-Type", ""), await response.text()


def test_traffic_is_scraped_over_http_in_the_prometheus_text_format() -> None:
    metrics = Metrics()
    mx, submission = metrics.role(Role.MX), metrics.role(Role.SUBMISSION)
    for _ in range(3):
        mx.connection()
    submission.connection()
    mx.message(250)
    mx.message(250)
    mx.message(451)
    mx.message(550)
    mx.message(554)
    submission.tls_handshake("TLSv1.3")
    mx.tls_handshake("TLSv1.2")
    mx.tls_handshake("TLSv1.2")
    submission.auth_failed("PLAIN")
    submission.auth_failed("scram-sha-256")
    open_mx = [2]
    metrics.open_sessions(Role.MX, lambda: open_mx[0])

    async def main() -> tuple[tuple[int, str, str], tuple[int, str, str], tuple[int, str, str]]:
        server = await bind_metrics(Where("127.0.0.1", 0), metrics)
        try:
            first = await scrape(server.port)
            open_mx[0] = 5
            second = await scrape(server.port)
            missing = await scrape(server.port, "/other")
        finally:
            await server.aclose()
        return first, second, missing

    (status, content_type, text), second, missing = asyncio.run(main())
    assert status == 200
    assert content_type.startswith("text/plain; version=")
    got = samples(text)
    assert value(got, "hato_connections_total", role="mx") == 3
    assert value(got, "hato_connections_total", role="submission") == 1
    assert value(got, "hato_connections_total", role="submissions") == 0
    assert value(got, "hato_messages_received_total", role="mx", result="accepted") == 2
    assert value(got, "hato_messages_received_total", role="mx", result="tempfail") == 1
    assert value(got, "hato_messages_received_total", role="mx", result="refused") == 2
    assert value(got, "hato_tls_handshakes_total", role="submission", version="TLSv1.3") == 1
    assert value(got, "hato_tls_handshakes_total", role="mx", version="TLSv1.2") == 2
    assert value(got, "hato_auth_failures_total", mechanism="PLAIN") == 1
    assert value(got, "hato_auth_failures_total", mechanism="SCRAM-SHA-256") == 1
    assert value(got, "hato_auth_failures_total", mechanism="LOGIN") == 0
    assert value(got, "hato_sessions_open", role="mx") == 2
    assert value(samples(second[2]), "hato_sessions_open", role="mx") == 5
    assert missing[0] == 404


def test_unforeseen_label_values_are_counted_too() -> None:
    metrics = Metrics()
    mx = metrics.role(Role.MX)
    mx.tls_handshake("TLSv1.4")
    mx.tls_handshake("TLSv1.4")
    mx.tls_handshake(None)
    metrics.role(Role.SUBMISSIONS).auth_failed("CRAM-MD5")
    metrics.role(Role.SUBMISSIONS).auth_failed(None)
    got = samples(metrics.exposition().decode())
    assert value(got, "hato_tls_handshakes_total", role="mx", version="TLSv1.4") == 2
    assert value(got, "hato_tls_handshakes_total", role="mx", version="unknown") == 1
    assert value(got, "hato_auth_failures_total", mechanism="CRAM-MD5") == 1
    assert value(got, "hato_auth_failures_total", mechanism="UNKNOWN") == 1


def test_rspamd_verdicts_check_time_and_failures_are_counted() -> None:
    metrics = Metrics()
    metrics.rspamd_verdict("no action", 0.02)
    metrics.rspamd_verdict("reject", 0.3)
    metrics.rspamd_unavailable("tempfail")
    got = samples(metrics.exposition().decode())
    assert value(got, "hato_rspamd_verdicts_total", action="no action") == 1
    assert value(got, "hato_rspamd_verdicts_total", action="reject") == 1
    assert value(got, "hato_rspamd_verdicts_total", action="greylist") == 0
    assert value(got, "hato_rspamd_check_seconds_count") == 2
    assert value(got, "hato_rspamd_check_seconds_bucket", le="0.025") == 1
    assert value(got, "hato_rspamd_unavailable_total", policy="tempfail") == 1
    assert value(got, "hato_rspamd_unavailable_total", policy="accept") == 0


def test_each_metrics_object_has_its_own_registry() -> None:
    one, two = Metrics(), Metrics()
    one.role(Role.MX).connection()
    assert value(samples(one.exposition().decode()), "hato_connections_total", role="mx") == 1
    assert value(samples(two.exposition().decode()), "hato_connections_total", role="mx") == 0


def stats(**kwargs: int | float | None) -> QueueStats:
    fields: dict[str, int | float | None] = {
        "messages": 0,
        "queued": 0,
        "deferred": 0,
        "held": 0,
        "busy": 0,
        "oldest": None,
        "bytes": 0,
    }
    fields.update(kwargs)
    return QueueStats(**fields)  # type: ignore[arg-type]


def test_queue_gauges_follow_the_periodic_refresh_and_survive_a_failed_reading() -> None:
    metrics = Metrics()
    readings: list[Callable[[], QueueStats]] = [
        lambda: stats(messages=3, queued=5, deferred=2, held=1, oldest=900.0, bytes=4096),
        lambda: (_ for _ in ()).throw(QueueError(None, "queue store: database is locked")),
        lambda: stats(),
    ]
    seen: list[Samples] = []
    done = asyncio.Event()

    async def read() -> QueueStats:
        seen.append(samples(metrics.exposition().decode()))
        if len(seen) > len(readings):
            done.set()
            await asyncio.Event().wait()
        return readings[len(seen) - 1]()

    async def main() -> None:
        task = asyncio.create_task(refresh_queue(metrics, read, lambda: 1000.0, interval=0.001))
        await asyncio.wait_for(done.wait(), 5)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(main())
    after_first, after_failure, after_empty = seen[1], seen[2], seen[3]
    assert value(after_first, "hato_queue_messages") == 3
    assert value(after_first, "hato_queue_bytes") == 4096
    assert value(after_first, "hato_queue_recipients", state="waiting") == 3
    assert value(after_first, "hato_queue_recipients", state="deferred") == 2
    assert value(after_first, "hato_queue_recipients", state="held") == 1
    assert value(after_first, "hato_queue_oldest_age_seconds") == 100.0
    # The failed reading keeps the last figures and is counted.
    assert value(after_failure, "hato_queue_messages") == 3
    assert value(after_failure, "hato_queue_refresh_failures_total") == 1
    assert value(after_empty, "hato_queue_messages") == 0
    assert value(after_empty, "hato_queue_oldest_age_seconds") == 0


def test_a_port_in_use_is_a_clear_error() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(MetricsBindError) as error:
            asyncio.run(serve_metrics(Where("127.0.0.1", port), Metrics()))
    message = str(error.value)
    assert f"metrics.address 127.0.0.1:{port}: cannot listen" in message
    assert "pick a free port or remove [metrics]" in message


def test_serve_metrics_answers_until_cancelled_then_frees_the_port() -> None:
    port = free_port()
    metrics = Metrics()
    metrics.role(Role.SUBMISSIONS).connection()

    async def main() -> str:
        task = asyncio.create_task(serve_metrics(Where("127.0.0.1", port), metrics))
        for _ in range(200):
            try:
                _, _, text = await scrape(port)
                break
            except OSError:
                await asyncio.sleep(0.01)
        else:
            raise AssertionError("the metrics endpoint never answered")
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        with pytest.raises(OSError):
            await scrape(port)
        return text

    text = asyncio.run(main())
    assert value(samples(text), "hato_connections_total", role="submissions") == 1
