"""The figures of every worker in one answer (issue 15: /metrics counted the first worker only).

Theory of operation. With `[server] workers`, each worker counts in its own memory (its
`Metrics` registry, its last hour of delivery outcomes), and the first answers /metrics and
`hato status`. So every worker publishes its figures every PUBLISH_SECONDS into
DATA_DIR/figures/worker-N.json (written whole to a temporary file and renamed: a reader never
sees half of one), and the first adds the others' latest to its own live figures at each
answer (`WorkerFigures`: its `collect` is what /metrics shows, its `counts` what `hato status`
shows as the last hour). Another worker's figures are thus at most PUBLISH_SECONDS old (and
written once more as it stops).

What is added up: every counter and histogram (connections, messages, deliveries and their
latency, TLS, AUTH failures, rspamd, milters, the screen) and the open sessions gauge
(SUMMED_GAUGES). The other gauges describe what the workers share (the queue, which each reads
from the same store) or what only the first does (the doctor, egress): those are the first's.

Totals never fall back: the supervisor empties the directory at start (`prepare`, no server
runs), and when a worker dies it adds the worker's last published figures into retired.json
(`retire`) before starting its replacement, which counts from zero; retired.json is counted as
a worker (not in the last hour, which a dead worker no longer has). What a dead worker counted
after its last publication is lost.

May import model, server.metrics and server.deliverycount.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector

from hato.model import logfmt
from hato.server.deliverycount import OutcomeCounter
from hato.server.metrics import Metrics

log = logging.getLogger("hato.metrics")

FIGURES_DIR = "figures"  # under DATA_DIR
PUBLISH_SECONDS = 2.0
RETIRED = "retired.json"
SUMMED_TYPES = frozenset({"counter", "histogram", "summary"})
SUMMED_GAUGES = frozenset({"hato_sessions_open"})  # each worker's own sessions

# One published sample: its name, labels and value (JSON: a list of three).
_Key = tuple[str, tuple[tuple[str, str], ...]]


def worker_file(directory: Path, worker: int) -> Path:
    return directory / f"worker-{worker}.json"


def prepare(directory: Path) -> None:
    """At the supervisor's start, before any worker: no worker has counted anything yet."""
    directory.mkdir(mode=0o700, exist_ok=True)
    for path in directory.iterdir():
        path.unlink()


def retire(directory: Path, worker: int) -> None:
    """A worker died: its last figures go into retired.json (the supervisor, before starting
    its replacement), so the server's totals do not fall back when the new one starts at 0."""
    path = worker_file(directory, worker)
    dead = _read(path)
    if dead is None:
        return
    retired = _read(directory / RETIRED) or {"families": []}
    families = _families(retired)
    for family in dead["families"]:
        into = families.setdefault(family["name"], {**family, "samples": []})
        into["samples"] = _as_list(_add(_as_dict(into["samples"]), family["samples"]))
    try:
        _write(directory / RETIRED, {"families": list(families.values())})
        owner = directory.stat()
        if os.geteuid() == 0 and owner.st_uid != 0:  # the supervisor runs as root, the first
            os.chown(directory / RETIRED, owner.st_uid, owner.st_gid)  # worker reads it as hato
        path.unlink()
    except OSError as exc:  # a full disk: the totals fall back, the supervisor goes on
        log.warning(logfmt("metrics-publish-failed", worker=worker, error=exc))


def snapshot(metrics: Metrics, last_hour: OutcomeCounter) -> dict[str, Any]:
    """This worker's figures that are added up, as JSON."""
    families = [
        {
            "name": family.name,
            "type": family.type,
            "help": family.documentation,
            "samples": [
                [s.name, s.labels, s.value]
                for s in family.samples
                if not s.name.endswith("_created")  # a time, not a count
            ],
        }
        for family in metrics.registry.collect()
        if _summed(family.type, family.name)
    ]
    return {"families": families, "last_hour": last_hour.counts()}


class WorkerFigures(Collector):
    """One worker's part: it publishes its figures; in the first, `collect` and `counts` add
    the others' to its own."""

    def __init__(
        self, directory: Path, worker: int, metrics: Metrics, last_hour: OutcomeCounter
    ) -> None:
        self._directory = directory
        self._worker = worker
        self._metrics = metrics
        self._last_hour = last_hour

    def publish(self) -> None:
        _write(worker_file(self._directory, self._worker), snapshot(self._metrics, self._last_hour))

    async def publish_every(self, interval: float = PUBLISH_SECONDS) -> None:
        """Publish until cancelled, and once more then (a worker that stops)."""
        try:
            while True:
                self._publish_logged()
                await asyncio.sleep(interval)
        finally:
            self._publish_logged()

    def _publish_logged(self) -> None:
        try:
            self.publish()
        except OSError as exc:  # a full disk: /metrics misses this worker's newest figures
            log.warning(logfmt("metrics-publish-failed", error=exc))

    def _others(self) -> list[dict[str, Any]]:
        mine = worker_file(self._directory, self._worker).name
        try:
            paths = sorted(p for p in self._directory.iterdir() if p.name != mine)
        except FileNotFoundError:
            return []
        return [found for p in paths if p.suffix == ".json" and (found := _read(p)) is not None]

    def counts(self) -> dict[str, int]:
        """`hato status`'s last hour: this worker's and the others' latest."""
        total = self._last_hour.counts()
        for other in self._others():
            for kind, count in other.get("last_hour", {}).items():
                total[kind] = total.get(kind, 0) + int(count)
        return total

    def collect(self) -> Iterator[Metric]:
        """What /metrics shows: this worker's registry, with the others' counts added."""
        others: dict[str, dict[_Key, float]] = {}
        for other in self._others():
            for name, published in _families(other).items():
                others[name] = _add(others.get(name, {}), published["samples"])
        for family in self._metrics.registry.collect():
            extra = others.get(family.name) if _summed(family.type, family.name) else None
            if not extra:
                yield family
                continue
            summed = Metric(family.name, family.documentation, family.type, family.unit)
            for sample in family.samples:
                key = _key(sample.name, sample.labels)
                summed.add_sample(sample.name, sample.labels, sample.value + extra.pop(key, 0.0))
            for (name, labels), value in extra.items():  # label values only others have seen
                summed.add_sample(name, dict(labels), value)
            yield summed


def _summed(kind: str, name: str) -> bool:
    return kind in SUMMED_TYPES or name in SUMMED_GAUGES


def _key(name: str, labels: dict[str, str]) -> _Key:
    return name, tuple(sorted(labels.items()))


def _add(into: dict[_Key, float], samples: Iterable[list[Any]]) -> dict[_Key, float]:
    for name, labels, value in samples:
        key = _key(name, labels)
        into[key] = into.get(key, 0.0) + float(value)
    return into


def _as_dict(samples: Iterable[list[Any]]) -> dict[_Key, float]:
    return _add({}, samples)


def _as_list(samples: dict[_Key, float]) -> list[list[Any]]:
    return [[name, dict(labels), value] for (name, labels), value in samples.items()]


def _families(figures: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {family["name"]: family for family in figures.get("families", [])}


def _read(path: Path) -> dict[str, Any] | None:
    try:
        found = json.loads(path.read_bytes())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        log.warning(logfmt("metrics-figures-unreadable", path=path, error=exc))
        return None
    return found if isinstance(found, dict) else None


def _write(path: Path, figures: dict[str, Any]) -> None:
    temporary = path.with_suffix(".tmp")
    try:
        temporary.write_text(json.dumps(figures, separators=(",", ":")))
        os.replace(temporary, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            temporary.unlink()
