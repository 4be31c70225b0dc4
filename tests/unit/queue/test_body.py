"""BodyWriter.written_out: a spooled body made readable whole from its file, without an fsync
(direct delivery reads it before any commit)."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest

from hato.queue import BodyWriter
from hato.queue.body import FLUSH_AT


def test_written_out_puts_the_buffered_rest_in_the_file_without_an_fsync(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fsynced: list[int] = []
    real_fsync = os.fsync

    def counting(fd: int) -> None:
        fsynced.append(fd)
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", counting)
    body = BodyWriter("Q1", str(tmp_path / "Q1"))
    data = b"x" * FLUSH_AT + b"the rest, still in memory\r\n"
    body.write(data[:FLUSH_AT])  # written to the file at once
    body.write(data[FLUSH_AT:])  # buffered
    assert not body.inline and (tmp_path / "Q1").read_bytes() == data[:FLUSH_AT]
    assert body.written_out()
    assert (tmp_path / "Q1").read_bytes() == data and fsynced == []
    assert body.written_out()  # nothing more to write: still all there
    body.seal()  # queued after all: made durable then
    assert len(fsynced) == 1 and (tmp_path / "Q1").read_bytes() == data
    body.discard()
    assert not (tmp_path / "Q1").exists()


def test_written_out_is_false_after_a_write_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def full(*_args: object) -> int:
        raise OSError(errno.ENOSPC, "No space left on device")

    body = BodyWriter("Q2", str(tmp_path / "Q2"))
    monkeypatch.setattr("hato.queue.body.os.write", full)
    body.write(b"y" * (FLUSH_AT + 1))
    assert not body.written_out()
    assert isinstance(body.error, OSError) and body.error.errno == errno.ENOSPC
    body.discard()


def test_written_out_after_the_commit_took_the_body_is_a_bug(tmp_path: Path) -> None:
    body = BodyWriter("Q3", str(tmp_path / "Q3"))
    body.write(b"z" * (FLUSH_AT + 1))
    body.mark_sealed()
    with pytest.raises(RuntimeError):
        body.written_out()
    body.discard()
