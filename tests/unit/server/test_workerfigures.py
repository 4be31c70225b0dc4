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
    first, second = Worker(tmp_path / "figures", 0, clock), Worker(tmp_path / "figures", 1, clock)
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
    first, dead = Worker(tmp_path / "figures", 0, clock), Worker(tmp_path / "figures", 1, clock)
    first.metrics.shown_through(first.figures)
    dead.serve(3)
    dead.figures.publish()
    replacement = Worker(tmp_path / "figures", 1, clock)
    replacement.figures.take_over()  # as it starts, before its first publication
    replacement.serve(1)
    replacement.figures.publish()
    first.serve(2)
    assert scraped(first.metrics)["hato_connections_total", frozenset({("role", "mx")})] == 6
    # The last hour is what the running workers did (a dead one's went with it).
    assert first.figures.counts() == {"delivered": 3}
    # A second death: the next replacement takes over both.
    again = Worker(tmp_path / "figures", 1, clock)
    again.figures.take_over()
    again.figures.publish()
    assert scraped(first.metrics)["hato_connections_total", frozenset({("role", "mx")})] == 6
    # A start empties it all.
    workerfigures.prepare(tmp_path)
    assert scraped(first.metrics)["hato_connections_total", frozenset({("role", "mx")})] == 2


# The directory is the server user's; the supervisor that prepares it is root. What a
# compromised worker plants there must not make root (or another worker) write, read or empty
# anything else.


def test_a_link_in_place_of_the_directory_is_not_followed(tmp_path: Path) -> None:
    elsewhere = tmp_path / "etc"
    elsewhere.mkdir()
    (elsewhere / "passwd").write_text("root:x:0:0\n")
    data = tmp_path / "data"
    data.mkdir()
    (data / "figures").symlink_to(elsewhere)
    workerfigures.prepare(data)
    assert (elsewhere / "passwd").read_text() == "root:x:0:0\n"  # not emptied
    figures = data / "figures"
    assert figures.is_dir() and not figures.is_symlink() and list(figures.iterdir()) == []


def test_links_in_the_directory_are_removed_not_their_targets(tmp_path: Path) -> None:
    victim = tmp_path / "shadow"
    victim.write_text("secret\n")
    workerfigures.prepare(tmp_path)
    figures = tmp_path / "figures"
    (figures / "worker-1.json").symlink_to(victim)
    (figures / "worker-1.tmp").symlink_to(victim)
    workerfigures.prepare(tmp_path)
    assert list(figures.iterdir()) == [] and victim.read_text() == "secret\n"


def test_a_worker_does_not_write_through_a_planted_temporary(tmp_path: Path) -> None:
    victim = tmp_path / "passwd"
    victim.write_text("root:x:0:0\n")
    workerfigures.prepare(tmp_path)
    figures = tmp_path / "figures"
    (figures / "worker-1.tmp").symlink_to(victim)
    worker = Worker(figures, 1, FakeClock())
    worker.serve(1)
    worker.figures.publish()
    assert victim.read_text() == "root:x:0:0\n"
    assert not (figures / "worker-1.tmp").exists() and (figures / "worker-1.json").is_file()


def test_what_is_not_a_worker_s_figures_is_left_out(tmp_path: Path) -> None:
    workerfigures.prepare(tmp_path)
    figures = tmp_path / "figures"
    clock = FakeClock()
    first, second = Worker(figures, 0, clock), Worker(figures, 1, clock)
    first.metrics.shown_through(first.figures)
    second.serve(3)
    second.figures.publish()
    outside = tmp_path / "elsewhere.json"
    outside.write_bytes((figures / "worker-1.json").read_bytes())
    (figures / "worker-2.json").symlink_to(outside)  # not read through a link
    huge = b'{"families":[],"pad":"' + b"x" * workerfigures.MAX_FIGURES_BYTES + b'"}'
    (figures / "worker-3.json").write_bytes(huge)  # not read past the bound
    (figures / "worker-4.json").write_text('{"families":[{"name":1}]}')  # the wrong shape
    (figures / "worker-5.json").write_text('{"families":[],"last_hour":{"delivered":"x"}}')
    first.serve(1)
    assert scraped(first.metrics)["hato_connections_total", frozenset({("role", "mx")})] == 4
    assert first.figures.counts() == {"delivered": 4}
