"""The heartbeat's view of the database in /metrics (hato_store_up) and in the log: one line
when the database stops answering, one when it answers again, none per failed beat."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest

from hato.boot.heartbeat import Heartbeat
from hato.server.metrics import Metrics


class _Pool:
    """Connections that fail while `down`; statements that do nothing."""

    def __init__(self) -> None:
        self.down = False
        self.statements: list[str] = []

    @contextlib.contextmanager
    def connection(self, timeout: float) -> Iterator[Any]:
        if self.down:
            raise psycopg.OperationalError("connection refused\nmore")
        yield self

    def execute(self, sql: str, params: object = None) -> None:
        self.statements.append(sql)


def _up(metrics: Metrics) -> float | None:
    return metrics.registry.get_sample_value("hato_store_up")


def test_store_up_follows_the_heartbeats(caplog: pytest.LogCaptureFixture) -> None:
    pool, metrics = _Pool(), Metrics()
    beat = Heartbeat(pool, metrics, name="a", address="127.0.0.1:25", every=1.0, pid=1)  # type: ignore[arg-type]
    caplog.set_level(logging.INFO, logger="hato")
    assert beat.beat() and _up(metrics) == 1.0
    assert "INSERT INTO nodes" in pool.statements[0]
    pool.down = True
    assert not beat.beat() and not beat.beat()
    assert _up(metrics) == 0.0
    pool.down = False
    assert beat.beat() and _up(metrics) == 1.0
    events = [r.getMessage() for r in caplog.records]
    assert events == [
        'event=store-unavailable what=heartbeat error="connection refused"',
        "event=store-available what=heartbeat",
    ], events
