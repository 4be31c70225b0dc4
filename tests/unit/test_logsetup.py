"""Batched logging: every line arrives whole, warnings at once, the rest within the interval."""

from __future__ import annotations

import logging
import os
import time

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
    log.info("event=three")
    time.sleep(0.3)
    assert "event=three" in _drain(read_fd).decode()  # the timer flushed it
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
