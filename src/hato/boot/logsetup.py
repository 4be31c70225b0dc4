"""Logging for the server process: one line per event on stderr (DESIGN.md), text or JSON.

Lines are batched: formatting is cheap and the write happens at most every 100 ms (or at once
for warnings and errors, and whenever 32 KiB are waiting), so a busy server does not pay a
system call per event. Each write holds whole lines and at most PIPE_BUF (4096) octets, so
lines from several processes sharing stderr never interleave mid-line.

An info line of a `hato.*` logger whose only way out is this handler (no other handler or
filter on the way, the usual case) skips the logging module's record machinery: `_FastLogger`
hands the message straight to the handler, which formats the same line with the same
formatter (a few calls instead of about fifteen; four info lines per message made ~5 % of the
event loop thread, issue 15). Anything else (another handler, a filter, arguments, exc_info,
any other level) takes the ordinary path.

May import only the standard library (and is imported by the composition root).
"""

from __future__ import annotations

import json
import logging
import os
import sys
import threading
import time
from typing import IO, Any

PIPE_BUF = 4096
FLUSH_INTERVAL = 0.1
FLUSH_BYTES = 32 * 1024


# A stamp's milliseconds, formatted once (".000Z" to ".999Z"): one index instead of a format.
_MILLIS = tuple(f".{ms:03d}Z" for ms in range(1000))


def _stamp(created: float, cache: dict[int, str]) -> str:
    second = int(created)
    text = cache.get(second)
    if text is None:
        cache.clear()
        text = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
        cache[second] = text
    return text + _MILLIS[int((created - second) * 1000)]  # < 1000: x < 1 gives x * 1000 < 1000


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


class _Line:
    """What the formatters read of a LogRecord, for `BatchingHandler.emit_info`."""

    __slots__ = ("created", "msg", "name")
    levelname = "INFO"
    levelno = logging.INFO
    exc_info = None

    def __init__(self, created: float, name: str, msg: str) -> None:
        self.created = created
        self.name = name
        self.msg = msg

    def getMessage(self) -> str:
        return self.msg


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

    def emit_info(self, name: str, msg: str) -> None:
        """An info line of logger `name`, formatted as `emit` formats its record."""
        formatter = self.formatter
        if type(formatter) is TextFormatter:
            # `TextFormatter.format`'s line, without the record and the call (issue 15).
            text = f"{_stamp(time.time(), formatter._cache)} INFO {name}: {msg}\n"
        elif isinstance(formatter, TextFormatter | JsonFormatter):
            text = formatter.format(_Line(time.time(), name, msg)) + "\n"  # type: ignore[arg-type]
        else:
            self.handle(logging.LogRecord(name, logging.INFO, "", 0, msg, None, None))
            return
        line = text.encode("utf-8", "replace")
        with self.lock:  # type: ignore[union-attr]
            self._lines.append(line)
            self._size += len(line)
            urgent = self._size >= FLUSH_BYTES
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


# The handler of the "hato" logger set by `configure_logging` (None: no fast path).
_fast: BatchingHandler | None = None


class _FastLogger(logging.Logger):
    """A `hato.*` logger whose info lines go straight to the configured handler when nothing
    else could see them (module docstring); otherwise exactly `logging.Logger`."""

    def info(self, msg: object, *args: object, **kwargs: Any) -> None:
        handler = _fast
        if (
            handler is None
            or args
            or kwargs
            or type(msg) is not str
            or not self.isEnabledFor(logging.INFO)
            or not _only_way_out(self, handler)
        ):
            super().info(msg, *args, **kwargs)
            return
        handler.emit_info(self.name, msg)


def _only_way_out(logger: logging.Logger, handler: BatchingHandler) -> bool:
    """Whether `handler`, on the "hato" logger, is the only one that sees `logger`'s lines
    (no handler or filter on the way, nothing propagated past "hato")."""
    node: logging.Logger | None = logger
    while node is not None and node.name != "hato":
        if node.handlers or node.filters or not node.propagate:
            return False
        node = node.parent
    return (
        node is not None
        and not node.propagate
        and not node.filters
        and len(node.handlers) == 1
        and node.handlers[0] is handler
        and not handler.filters
        and handler.level <= logging.INFO
    )


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
    global _fast
    _fast = handler
    # The hato loggers made so far (at import) take the fast path for their info lines.
    for name, logger in list(logging.Logger.manager.loggerDict.items()):
        if name.startswith("hato.") and type(logger) is logging.Logger:
            logger.__class__ = _FastLogger
    return handler
