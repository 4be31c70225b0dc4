"""hato.durable: the durable-file kit (write, fsync, syncfs, the batching worker)."""

from __future__ import annotations

import asyncio
import errno
import os
import threading
from pathlib import Path

import pytest

from hato.durable import files
from hato.durable.worker import BatchWorker, call_on_loop


def test_write_all_writes_everything_and_fsync_dir_syncs_a_directory(tmp_path: Path) -> None:
    path = tmp_path / "f"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        files.write_all(fd, b"x" * 300_000)
    finally:
        os.close(fd)
    files.fsync_dir(tmp_path)
    assert path.read_bytes() == b"x" * 300_000
    with pytest.raises(NotADirectoryError):
        files.fsync_dir(path)


def test_write_all_v_is_one_writev_and_goes_on_after_a_short_write(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pieces = (b"Return-Path: <a@b>\r\n", b"", b"Delivered-To: c@d\r\n", b"y" * 10_240)
    whole = b"".join(pieces)
    calls: list[str] = []
    real_writev, real_write = os.writev, os.write

    def writev(fd: int, buffers: list[bytes]) -> int:
        calls.append("writev")
        return real_writev(fd, buffers)

    monkeypatch.setattr("hato.durable.files.os.writev", writev)
    path = tmp_path / "one"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        files.write_all_v(fd, pieces)
    finally:
        os.close(fd)
    assert path.read_bytes() == whole and calls == ["writev"]

    for cut in (0, 1, 20, len(pieces[0]) + 5, len(whole) - 1):  # the kernel took only `cut`

        def short(fd: int, buffers: list[bytes], cut: int = cut) -> int:
            return real_write(fd, b"".join(buffers)[:cut])

        def trickle(fd: int, data: memoryview) -> int:
            return real_write(fd, data[:3000])  # and then a little at a time

        monkeypatch.setattr("hato.durable.files.os.writev", short)
        monkeypatch.setattr("hato.durable.files.os.write", trickle)
        path = tmp_path / f"short-{cut}"
        fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o600)
        try:
            files.write_all_v(fd, pieces)
        finally:
            os.close(fd)
        assert path.read_bytes() == whole


def test_sync_files_uses_one_syncfs_per_file_system_and_fsync_for_one_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    if not files.has_syncfs():
        pytest.skip("syncfs(2) is Linux only")
    calls: list[int] = []
    monkeypatch.setattr(files, "syncfs", calls.append)
    fds = [os.open(tmp_path / str(i), os.O_WRONLY | os.O_CREAT, 0o600) for i in range(3)]
    try:
        dev = os.fstat(fds[0]).st_dev
        assert files.sync_files([(fd, dev) for fd in fds]) == dict.fromkeys(fds)
        assert calls == [fds[0]]
        assert files.sync_files([(fds[1], dev)]) == {fds[1]: None}
        assert calls == [fds[0]]  # one file: its own fsync

        def failing(fd: int) -> None:
            raise OSError(errno.EIO, "I/O error")

        monkeypatch.setattr(files, "syncfs", failing)
        result = files.sync_files([(fd, dev) for fd in fds])
        assert all(isinstance(e, OSError) and e.errno == errno.EIO for e in result.values())
    finally:
        for fd in fds:
            os.close(fd)


def test_sync_dirs_uses_one_syncfs_per_file_system_and_fsync_for_one_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    if not files.has_syncfs():
        pytest.skip("syncfs(2) is Linux only")
    dirs = [tmp_path / name for name in ("a", "b", "c")]
    for path in dirs:
        path.mkdir()
    dev = os.stat(tmp_path).st_dev
    synced: list[int] = []
    fsynced: list[str] = []
    monkeypatch.setattr(files, "syncfs", synced.append)
    monkeypatch.setattr(files, "fsync_dir", fsynced.append)
    # A directory named twice is synced once; one syncfs for the three of one file system.
    listed = [(str(path), dev) for path in dirs] + [(str(dirs[0]), dev)]
    assert files.sync_dirs(listed) == dict.fromkeys(str(path) for path in dirs)
    assert len(synced) == 1 and fsynced == []
    # One directory on a file system (here: the other "device"): its own fsync.
    result = files.sync_dirs([(str(dirs[0]), dev), (str(dirs[1]), dev + 1)])
    assert result == {str(dirs[0]): None, str(dirs[1]): None}
    assert len(synced) == 1 and fsynced == [str(dirs[0]), str(dirs[1])]


def test_sync_dirs_reports_a_failure_for_every_directory_it_covered(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    if not files.has_syncfs():
        pytest.skip("syncfs(2) is Linux only")
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    dev = os.stat(tmp_path).st_dev

    def failing(*_args: object) -> None:
        raise OSError(errno.EIO, "I/O error")

    monkeypatch.setattr(files, "syncfs", failing)
    result = files.sync_dirs([(str(tmp_path / "a"), dev), (str(tmp_path / "b"), dev)])
    assert set(result) == {str(tmp_path / "a"), str(tmp_path / "b")}
    assert all(isinstance(e, OSError) and e.errno == errno.EIO for e in result.values())
    # A lone directory is fsynced: a missing one gives its own error.
    monkeypatch.undo()
    result = files.sync_dirs([(str(tmp_path / "gone"), dev)])
    assert isinstance(result[str(tmp_path / "gone")], FileNotFoundError)
    # The real calls: durable, no error.
    assert files.sync_dirs([(str(tmp_path / "a"), dev), (str(tmp_path / "b"), dev)]) == {
        str(tmp_path / "a"): None,
        str(tmp_path / "b"): None,
    }


def test_waiting_jobs_are_one_batch_up_to_the_weight_limit_and_stop_finishes_them() -> None:
    batches: list[list[int]] = []
    worker: BatchWorker[int] = BatchWorker(batches.append, name="t", max_batch=5, weight=int)
    for n in (1, 2, 2, 3, 1, 9, 1):
        worker.submit(n)  # all waiting when the thread starts
    worker.start()
    worker.stop()
    # A batch takes waiting jobs until its weight reaches 5 (the last one may pass it).
    assert batches == [[1, 2, 2], [3, 1, 9], [1]]
    assert not worker.started


def test_jobs_of_one_turn_of_the_loop_are_handed_over_together_and_split_at_the_limit() -> None:
    batches: list[list[int]] = []
    worker: BatchWorker[int] = BatchWorker(batches.append, name="t", max_batch=5, weight=int)
    queued: list[int] = []
    loop = asyncio.new_event_loop()
    try:

        async def turn(jobs: tuple[int, ...]) -> None:
            for n in jobs:
                worker.submit_soon(asyncio.get_running_loop(), n)
            queued.append(worker._jobs.qsize())  # nothing before the turn ends
            await asyncio.sleep(0)  # the turn ends: its jobs go in one hand-over
            queued.append(worker._jobs.qsize())

        loop.run_until_complete(turn((1, 2, 2, 3, 1, 9, 1)))
        loop.run_until_complete(turn((4,)))
    finally:
        loop.close()
    assert queued == [0, 1, 1, 2]
    worker.start()
    worker.stop()
    # As for jobs queued one by one: batches up to the weight limit (the last may pass it).
    assert batches == [[1, 2, 2], [3, 1, 9], [1, 4]]

    batches.clear()
    worker.start()
    idle = asyncio.new_event_loop()
    try:
        worker.submit_soon(idle, 7)  # its turn never ends: stop hands it over
        worker.stop()
    finally:
        idle.close()
    assert batches == [[7]]


def test_call_on_loop_settles_on_the_loop_and_ignores_a_closed_loop() -> None:
    loop = asyncio.new_event_loop()
    seen: list[str] = []
    try:

        async def main() -> None:
            done = asyncio.Event()

            def settle(arg: str) -> None:
                seen.append(arg)
                done.set()

            thread = threading.Thread(target=call_on_loop, args=(loop, settle, "a"))
            thread.start()
            await done.wait()
            thread.join()

        loop.run_until_complete(main())
    finally:
        loop.close()
    call_on_loop(loop, seen.append, "b")  # closed: nothing, no error
    assert seen == ["a"]
