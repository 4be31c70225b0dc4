"""With `[server] workers`, /metrics and `hato status` add up every worker's figures
(server/workerfigures.py; issue 15: they were the first worker's alone)."""

from __future__ import annotations

from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from hato.model import Delivered, Role
from hato.server import workerfigures
from hato.server.deliverycount import OutcomeCounter
from hato.server.metrics import Metrics, Transport
from hato.server.workerfigures import WorkerFigures
from kit.clock import FakeClock


def scraped(metrics: Metrics) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(metrics.exposition().decode())
        for s in family.samples
    }


class Worker:
    def __init__(self, directory: Path, index: int, clock: FakeClock) -> None:
        self.metrics = Metrics()
        self.last_hour = OutcomeCounter(clock.monotonic)
        self.figures = WorkerFigures(directory, index, self.metrics, self.last_hour)

    def serve(self, connections: int, sessions: int = 0) -> None:
        for _ in range(connections):
            self.metrics.role(Role.MX).connection()
            self.metrics.role(Role.MX).message(250)
            self.metrics.delivery(Delivered(), Transport.LOCAL, 0.2)
            self.last_hour.add("delivered")
        self.metrics.open_sessions(Role.MX, lambda: sessions)


def test_the_first_worker_shows_every_worker_s_counts(tmp_path: Path) -> None:
    workerfigures.prepare(tmp_path)
    clock = FakeClock()
    first, second = Worker(tmp_path, 0, clock), Worker(tmp_path, 1, clock)
    first.metrics.shown_through(first.figures)
    first.serve(2, sessions=1)
    second.serve(3, sessions=4)
    second.metrics.role(Role.MX).auth_failed("XOAUTH2")  # a label value only it has seen
    second.metrics.queue_messages.set(7)  # the shared queue, as the second read it
    first.metrics.queue_messages.set(8)
    second.figures.publish()
    got = scraped(first.metrics)
    mx = frozenset({("role", "mx")})
    assert got["hato_connections_total", mx] == 5
    assert got["hato_messages_received_total", mx | {("result", "accepted")}] == 5
    local = frozenset({("transport", "local")})
    assert got["hato_deliveries_total", local | {("result", "delivered")}] == 5
    assert got["hato_delivery_latency_seconds_count", local] == 5
    assert got["hato_delivery_latency_seconds_bucket", local | {("le", "0.25")}] == 5
    assert got["hato_sessions_open", mx] == 5
    assert got["hato_auth_failures_total", frozenset({("mechanism", "XOAUTH2")})] == 1
    assert got["hato_queue_messages", frozenset()] == 8  # the first's own reading
    assert first.figures.counts() == {"delivered": 5}  # `hato status`'s last hour


def test_a_dead_worker_s_counts_stay_in_the_totals(tmp_path: Path) -> None:
    workerfigures.prepare(tmp_path)
    clock = FakeClock()
    first, dead = Worker(tmp_path, 0, clock), Worker(tmp_path, 1, clock)
    first.metrics.shown_through(first.figures)
    dead.serve(3)
    dead.figures.publish()
    workerfigures.retire(tmp_path, 1)  # the supervisor, before starting its replacement
    replacement = Worker(tmp_path, 1, clock)
    replacement.serve(1)
    replacement.figures.publish()
    first.serve(2)
    assert scraped(first.metrics)["hato_connections_total", frozenset({("role", "mx")})] == 6
    # The last hour is what the running workers did (a dead one's went with it).
    assert first.figures.counts() == {"delivered": 3}
    # A second death adds to what was retired.
    workerfigures.retire(tmp_path, 1)
    assert scraped(first.metrics)["hato_connections_total", frozenset({("role", "mx")})] == 6
    # A start empties it all.
    workerfigures.prepare(tmp_path)
    assert scraped(first.metrics)["hato_connections_total", frozenset({("role", "mx")})] == 2
