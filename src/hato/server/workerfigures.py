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
runs), and a worker that replaces a dead one takes over what its predecessor last published
(`WorkerFigures.take_over`, before its own first publication): its worker-N.json keeps the dead
worker's counts added to its own, replaced whole, so no reader ever sees them twice or not at
all (not in the last hour, which a dead worker no longer has). What a dead worker counted after
its last publication is lost.

The directory is the server user's: the supervisor, root, never reads, writes or follows a link
in it. It only makes it or empties it, through file descriptors (`prepare`: a link or a file in
its place is removed, not followed; unlink never follows one). The workers read each other's
files bounded (MAX_FIGURES_BYTES), not through a link, and checked in shape: a file that is not
what a worker writes is left out, never a failed /metrics.

May import model, server.metrics and server.deliverycount.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import json
import logging
import os
import stat
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
DIR_MODE = 0o700
MAX_FIGURES_BYTES = 1 << 20  # one worker's figures are a few hundred samples, some 50 kB
SUMMED_TYPES = frozenset({"counter", "histogram", "summary"})
SUMMED_GAUGES = frozenset({"hato_sessions_open"})  # each worker's own sessions

# One published sample: its name, labels and value (JSON: a list of three).
_Key = tuple[str, tuple[tuple[str, str], ...]]


def worker_file(directory: Path, worker: int) -> Path:
    return directory / f"worker-{worker}.json"


def prepare(data_dir: Path, owner: tuple[int, int] | None = None) -> None:
    """At the supervisor's start (root), before any worker: DATA_DIR/figures/ is a directory of
    its own, `owner`'s (the server's user), and empty; no worker has counted anything yet.
    Only through descriptors, so nothing the server's user put there (a symbolic link in place
    of the directory or of a file in it) makes root write, give away or empty anything else.
    Raises OSError when it cannot be made so."""
    top = os.open(data_dir, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        fd = _own_directory(top)
    finally:
        os.close(top)
    try:
        if owner is not None and (os.fstat(fd).st_uid, os.fstat(fd).st_gid) != owner:
            os.fchown(fd, *owner)  # made by root here, written by the workers
        for name in os.listdir(fd):
            with contextlib.suppress(FileNotFoundError, IsADirectoryError):
                os.unlink(name, dir_fd=fd)  # a link itself, never what it points to
    finally:
        os.close(fd)


def _own_directory(top: int) -> int:
    """FIGURES_DIR under the directory `top`, opened without following a link; whatever else
    has its name (a link, a file) is removed first."""
    for _ in range(3):
        with contextlib.suppress(FileExistsError):
            os.mkdir(FIGURES_DIR, DIR_MODE, dir_fd=top)
        try:
            return os.open(
                FIGURES_DIR,
                os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC,
                dir_fd=top,
            )
        except OSError as exc:
            if exc.errno not in (errno.ELOOP, errno.ENOTDIR):
                raise
        with contextlib.suppress(FileNotFoundError):
            os.unlink(FIGURES_DIR, dir_fd=top)  # the link or file, not its target
    raise OSError(errno.ELOOP, "something keeps replacing it", FIGURES_DIR)


def snapshot(
    metrics: Metrics, last_hour: OutcomeCounter, inherited: list[dict[str, Any]] | None = None
) -> dict[str, Any]:
    """This worker's figures that are added up, as JSON (with a dead predecessor's)."""
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
    return {"families": _merged(families, inherited or []), "last_hour": last_hour.counts()}


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
        self._inherited: list[dict[str, Any]] = []  # a dead predecessor's last figures

    def take_over(self) -> None:
        """Before the first publication: what a dead worker of this number last published
        stays in this one's (the directory is emptied at start, so nothing is found then)."""
        found = _read(worker_file(self._directory, self._worker))
        self._inherited = found["families"] if found is not None else []

    def publish(self) -> None:
        figures = snapshot(self._metrics, self._last_hour, self._inherited)
        _write(worker_file(self._directory, self._worker), figures)

    async def publish_every(self, interval: float = PUBLISH_SECONDS) -> None:
        """Take over a dead predecessor's figures, then publish until cancelled, and once more
        then (a worker that stops)."""
        self.take_over()
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
        found = [f for p in paths if p.suffix == ".json" and (f := _read(p)) is not None]
        return [*found, {"families": self._inherited}]  # in mine, which is not read

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


def _merged(mine: list[dict[str, Any]], inherited: list[dict[str, Any]]) -> list[dict[str, Any]]:
    families = _families({"families": mine})
    for family in inherited:
        into = families.setdefault(family["name"], {**family, "samples": []})
        into["samples"] = _as_list(_add(_as_dict(into["samples"]), family["samples"]))
    return list(families.values())


def _read(path: Path) -> dict[str, Any] | None:
    """Another worker's figures: a regular file (not through a link), at most
    MAX_FIGURES_BYTES, of the shape `snapshot` writes; None (logged) for anything else."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except FileNotFoundError:
        return None
    except OSError as exc:
        log.warning(logfmt("metrics-figures-unreadable", path=path, error=exc))
        return None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise ValueError("not a regular file")
        data = b""
        while len(data) <= MAX_FIGURES_BYTES and (chunk := os.read(fd, 1 << 16)):
            data += chunk
        if len(data) > MAX_FIGURES_BYTES:
            raise ValueError(f"larger than {MAX_FIGURES_BYTES} bytes")
        found = _checked(json.loads(data))
    except (OSError, ValueError) as exc:
        log.warning(logfmt("metrics-figures-unreadable", path=path, error=exc))
        return None
    finally:
        os.close(fd)
    return found


def _checked(found: object) -> dict[str, Any]:
    """`found` if it has the shape `snapshot` writes, else ValueError (what is added up later
    never meets a wrong type)."""
    if not isinstance(found, dict) or not isinstance(found.get("families"), list):
        raise ValueError("no families")
    for family in found["families"]:
        if not (
            isinstance(family, dict)
            and all(isinstance(family.get(key), str) for key in ("name", "type", "help"))
            and isinstance(family.get("samples"), list)
            and all(_is_sample(sample) for sample in family["samples"])
        ):
            raise ValueError("a family of the wrong shape")
    last_hour = found.get("last_hour", {})
    if not isinstance(last_hour, dict) or not all(
        isinstance(kind, str) and _is_number(count) for kind, count in last_hour.items()
    ):
        raise ValueError("a last hour of the wrong shape")
    return found


def _is_sample(sample: object) -> bool:
    return (
        isinstance(sample, list)
        and len(sample) == 3
        and isinstance(sample[0], str)
        and isinstance(sample[1], dict)
        and all(isinstance(k, str) and isinstance(v, str) for k, v in sample[1].items())
        and _is_number(sample[2])
    )


def _is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _write(path: Path, figures: dict[str, Any]) -> None:
    temporary = path.with_suffix(".tmp")
    try:
        # Made anew (O_EXCL): a link planted in its place is removed, not written through.
        with contextlib.suppress(FileNotFoundError):
            temporary.unlink()
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
        with os.fdopen(os.open(temporary, flags, 0o600), "w") as out:
            out.write(json.dumps(figures, separators=(",", ":")))
        os.replace(temporary, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            temporary.unlink()
