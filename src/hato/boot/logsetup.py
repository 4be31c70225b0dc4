"""Logging for the server process: one line per event on stderr (DESIGN.md), text or JSON.

Lines are batched: formatting is cheap and the write happens at most every 100 ms (or at once
for warnings and errors, and whenever 32 KiB are waiting), so a busy server does not pay a
system call per event. Each write holds whole lines and at most PIPE_BUF (4096) octets, so
lines from several processes sharing stderr never interleave mid-line.

May import only the standard library (and is imported by the composition root).
"""

from __future__ import annotations

import json
import logging
import os
import sys
import threading
import time
from typing import IO

PIPE_BUF = 4096
FLUSH_INTERVAL = 0.1
FLUSH_BYTES = 32 * 1024


def _stamp(created: float, cache: dict[int, str]) -> str:
    second = int(created)
    text = cache.get(second)
    if text is None:
        cache.clear()
        text = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
        cache[second] = text
    return f"{text}.{int((created - second) * 1000):03d}Z"


class TextFormatter(logging.Formatter):
    """``2026-11-27T22:05:27.743Z INFO hato.queue: event=queued id=...``"""

    def __init__(self) -> None:
        super().__init__()
        self._cache: dict[int, str] = {}

    def format(self, record: logging.LogRecord) -> str:
        line = f"{_stamp(record.created, self._cache)} {record.levelname} {record.name}: "
        line += record.getMessage()
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        return line


class JsonFormatter(logging.Formatter):
    def __init__(self) -> None:
        super().__init__()
        self._cache: dict[int, str] = {}

    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "ts": _stamp(record.created, self._cache),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return json.dumps(entry, ensure_ascii=False)


class BatchingHandler(logging.Handler):
    def __init__(self, fd: int) -> None:
        super().__init__()
        self._fd = fd
        self._lines: list[bytes] = []
        self._size = 0
        self._wake = threading.Event()
        self._closed = False
        self._thread = threading.Thread(target=self._run, name="hato-log", daemon=True)
        self._thread.start()

    def emit(self, record: logging.LogRecord) -> None:
        try:
            line = (self.format(record) + "\n").encode("utf-8", "replace")
        except Exception:
            self.handleError(record)
            return
        with self.lock:  # type: ignore[union-attr]
            self._lines.append(line)
            self._size += len(line)
            urgent = record.levelno >= logging.WARNING or self._size >= FLUSH_BYTES
        if urgent:
            self.flush()

    def flush(self) -> None:
        with self.lock:  # type: ignore[union-attr]
            lines, self._lines, self._size = self._lines, [], 0
        chunk = bytearray()
        for line in lines:
            if chunk and len(chunk) + len(line) > PIPE_BUF:
                self._write(bytes(chunk))
                chunk.clear()
            chunk += line
        if chunk:
            self._write(bytes(chunk))

    def _write(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            try:
                written = os.write(self._fd, view)
            except InterruptedError:
                continue
            except OSError:
                return  # stderr is gone: nothing better to do with a log line
            view = view[written:]

    def _run(self) -> None:
        while not self._closed:
            self._wake.wait(FLUSH_INTERVAL)
            self.flush()

    def close(self) -> None:
        self._closed = True
        self._wake.set()
        self.flush()
        super().close()


def configure_logging(fmt: str, level: str, stream: IO[str] | None = None) -> logging.Handler:
    """Send hato's loggers to `stream` (default stderr), batched; returns the handler."""
    target = stream or sys.stderr
    target.flush()
    # Our formats use none of the record's caller, thread or process fields: skip computing
    # them for every record (the logging HOWTO's "Optimization"; ~3 % of the event loop).
    logging._srcfile = None
    logging.logThreads = False
    logging.logProcesses = False
    logging.logMultiprocessing = False
    handler = BatchingHandler(target.fileno())
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    root = logging.getLogger("hato")
    for old in root.handlers:
        old.close()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    root.propagate = False
    return handler
