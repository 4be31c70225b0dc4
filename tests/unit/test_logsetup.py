"""Batched logging: every line arrives whole, warnings at once, the rest within the interval."""

from __future__ import annotations

import json
import logging
import os
import time
from typing import IO

import pytest

from hato.boot import logsetup
from hato.boot.logsetup import PIPE_BUF, BatchingHandler, TextFormatter


def _reader() -> tuple[int, int]:
    read_fd, write_fd = os.pipe()
    os.set_blocking(read_fd, False)
    return read_fd, write_fd


def _drain(fd: int) -> bytes:
    out = b""
    while True:
        try:
            chunk = os.read(fd, 65536)
        except BlockingIOError:
            return out
        if not chunk:
            return out
        out += chunk


def _logger(handler: logging.Handler, name: str) -> logging.Logger:
    logger = logging.getLogger(name)
    logger.handlers[:] = [handler]
    logger.setLevel(logging.INFO)
    logger.propagate = False
    return logger


@pytest.fixture(autouse=True)
def _timer_off(monkeypatch: pytest.MonkeyPatch) -> None:
    """The handler's thread flushes every FLUSH_INTERVAL: one of its flushes between two lines
    of a test (a loaded machine can hold the test up that long) would pass for the test's own
    flush, or be half written when the test reads. Off here, except where it is the point."""
    monkeypatch.setattr(logsetup, "FLUSH_INTERVAL", 3600.0)


def test_info_lines_are_batched_and_warnings_flush_at_once() -> None:
    read_fd, write_fd = _reader()
    handler = BatchingHandler(write_fd)
    handler.setFormatter(TextFormatter())
    log = _logger(handler, "hato.test.batch")
    log.info("event=one")
    assert _drain(read_fd) == b""  # held back...
    log.warning("event=two")
    text = _drain(read_fd).decode()  # ...until a warning flushes everything, in order
    assert text.index("INFO hato.test.batch: event=one") < text.index("WARNING")
    handler.close()
    os.close(read_fd)


def test_the_timer_flushes_info_lines(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(logsetup, "FLUSH_INTERVAL", 0.1)
    read_fd, write_fd = _reader()
    handler = BatchingHandler(write_fd)
    handler.setFormatter(TextFormatter())
    log = _logger(handler, "hato.test.timer")
    log.info("event=three")  # no warning, far from FLUSH_BYTES: only the timer writes it
    deadline = time.monotonic() + 30
    text = b""
    while b"event=three" not in text:
        assert time.monotonic() < deadline, "the timer never flushed the line"
        time.sleep(0.01)  # polling the pipe for the timer's write
        text += _drain(read_fd)
    handler.close()
    os.close(read_fd)


def test_writes_hold_whole_lines_within_pipe_buf() -> None:
    read_fd, write_fd = _reader()
    handler = BatchingHandler(write_fd)
    handler.setFormatter(TextFormatter())
    log = _logger(handler, "hato.test.lines")
    for i in range(300):
        log.info("event=line n=%d pad=%s", i, "x" * 40)
    handler.flush()
    data = _drain(read_fd)
    lines = data.decode().splitlines()
    assert len(lines) == 300 and all(line.endswith("x" * 40) for line in lines)
    assert len(data) > PIPE_BUF  # several writes were needed
    handler.close()
    os.close(read_fd)


_STREAMS: list[IO[str]] = []  # the handler writes to the stream's descriptor: keep it open


Saved = tuple[list[logging.Handler], bool]


def _configured(fmt: str) -> tuple[int, logging.Handler, Saved]:
    read_fd, write_fd = _reader()
    hato = logging.getLogger("hato")
    saved = (list(hato.handlers), hato.propagate)
    _STREAMS.append(os.fdopen(write_fd, "w"))
    handler = logsetup.configure_logging(fmt, "info", _STREAMS[-1])
    return read_fd, handler, saved


def _restore(read_fd: int, handler: logging.Handler, saved: Saved) -> None:
    handler.close()
    hato = logging.getLogger("hato")
    hato.handlers[:], hato.propagate = saved
    logsetup._fast = None
    os.close(read_fd)
    _STREAMS.pop().close()


@pytest.mark.parametrize("fmt", ["text", "json"])
def test_info_lines_of_hato_loggers_skip_the_record_but_read_the_same(
    fmt: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(time, "time", lambda: 1764281127.743)  # both paths read the clock
    log = logging.getLogger("hato.test.fast")
    read_fd, handler, saved = _configured(fmt)
    try:
        assert isinstance(log, logsetup._FastLogger)  # made at import: converted
        taken: list[str] = []
        monkeypatch.setattr(handler, "handle", lambda record: taken.append(record.msg))
        log.info("event=fast n=1")
        assert taken == []  # not through a LogRecord
        monkeypatch.undo()
        monkeypatch.setattr(time, "time", lambda: 1764281127.743)
        logging.Logger.info(log, "event=fast n=1")  # the ordinary path, for comparison
        handler.flush()
        fast, slow = _drain(read_fd).decode().splitlines()
        assert fast == slow
        if fmt == "text":
            assert fast == "2025-11-27T22:05:27.743Z INFO hato.test.fast: event=fast n=1"
        else:
            assert json.loads(fast)["msg"] == "event=fast n=1"
    finally:
        _restore(read_fd, handler, saved)


def test_a_filter_or_another_handler_on_the_way_takes_the_ordinary_path() -> None:
    log = logging.getLogger("hato.test.slow")
    read_fd, handler, saved = _configured("text")
    seen: list[logging.LogRecord] = []
    other = logging.Handler()
    other.emit = seen.append  # type: ignore[method-assign,assignment]
    try:
        log.addHandler(other)
        log.info("event=a")
        log.removeHandler(other)
        dropped = logging.Filter("nothing")  # passes no record of hato.test.slow
        handler.addFilter(dropped)
        log.info("event=b")
        handler.removeFilter(dropped)
        log.info("event=%s", "c")  # arguments: ordinary path, same line
        handler.flush()
        lines = _drain(read_fd).decode().splitlines()
        assert [r.getMessage() for r in seen] == ["event=a"]
        assert [line.split(": ", 1)[1] for line in lines] == ["event=a", "event=c"]
    finally:
        _restore(read_fd, handler, saved)


@pytest.mark.parametrize(
    ("created", "stamp"),
    [
        (1764281127.0, "2025-11-27T22:05:27.000Z"),
        (1764281127.0005, "2025-11-27T22:05:27.000Z"),
        (1764281127.0999, "2025-11-27T22:05:27.099Z"),
        (1764281127.9995, "2025-11-27T22:05:27.999Z"),
        (0.9999999999999999, "1970-01-01T00:00:00.999Z"),  # the largest float below 1
    ],
)
def test_a_stamp_truncates_to_the_millisecond_within_its_second(created: float, stamp: str) -> None:
    assert logsetup._stamp(created, {}) == stamp
