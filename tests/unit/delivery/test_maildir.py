"""MaildirCourier: byte-exact files, layout, exactly-once names, failures."""

from __future__ import annotations

import asyncio
import errno
import os
import queue
import stat
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path

import pytest

from hato.delivery import MaildirCourier
from hato.delivery import maildir as maildir_module
from hato.durable import files as durable_files
from hato.model import (
    Address,
    Courier,
    Delivered,
    Outcome,
    PermFailed,
    QueuedMessage,
    QueuedRecipient,
    Reply,
    TempFailed,
)
from kit.clock import FakeClock

BODY = b"Subject: hi\r\nFrom: <s@example.net>\r\n\r\nHello.\r\n"
PREFIX = b"Received: from x by y; Thu, 1 Jan 2026 00:00:00 +0000\r\n"
RECEIVED_AT = 1767225600.123456


@pytest.fixture
def root(tmp_path: Path) -> Path:
    return tmp_path / "mail"


@pytest.fixture
def courier(root: Path) -> Iterator[MaildirCourier]:
    c = MaildirCourier(
        root, "mx.example.org", clock=FakeClock(RECEIVED_AT, 1000.0, tick=0.001), max_threads=2
    )
    yield c
    c.close()


def message(tmp_path: Path, body: bytes = BODY, sender: Address | None = None) -> QueuedMessage:
    path = tmp_path / "body"
    path.write_bytes(body)
    return QueuedMessage(
        queue_id="Q7x9",
        mail_from=sender if sender is not None else Address("s", "example.net"),
        received_at=RECEIVED_AT,
        body_path=str(path),
        size=len(body),
        prefix=PREFIX,
    )


def rcpt(row: int, text: str, *, recovered: bool = False, attempts: int = 0) -> QueuedRecipient:
    address = Address.parse(text)
    return QueuedRecipient(row, address, address, attempts=attempts, recovered=recovered)


def run(
    courier: MaildirCourier, msg: QueuedMessage, recipients: Sequence[QueuedRecipient]
) -> list[Outcome]:
    return asyncio.run(courier.deliver(msg, recipients))


def files(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir()) if directory.exists() else []


def expected_content(to: str, body: bytes = BODY, sender: str = "<s@example.net>") -> bytes:
    head = f"Return-Path: {sender}\r\nDelivered-To: {to}\r\n".encode()
    return head + PREFIX + body


def test_is_a_courier(courier: MaildirCourier) -> None:
    c: Courier = courier
    assert c is courier


def test_byte_exact_file_and_layout(courier: MaildirCourier, root: Path, tmp_path: Path) -> None:
    outcomes = run(courier, message(tmp_path), [rcpt(5, "alice@example.org")])
    assert outcomes == [Delivered("maildir")]
    box = root / "example.org" / "alice"
    for sub in ("new", "cur", "tmp"):
        assert stat.S_IMODE((box / sub).stat().st_mode) == 0o700
    assert stat.S_IMODE(box.stat().st_mode) == 0o700
    assert stat.S_IMODE(box.parent.stat().st_mode) == 0o700
    assert files(box / "tmp") == [] and files(box / "cur") == []
    [name] = files(box / "new")
    content = expected_content("alice@example.org")
    assert name == f"1767225600.M123456QQ7x9R5.mx.example.org,S={len(content)}"
    assert (box / "new" / name).read_bytes() == content
    assert stat.S_IMODE((box / "new" / name).stat().st_mode) == 0o600


def test_null_sender_and_lower_cased_mailbox(
    courier: MaildirCourier, root: Path, tmp_path: Path
) -> None:
    msg = message(tmp_path)
    msg = QueuedMessage(msg.queue_id, None, msg.received_at, msg.body_path, msg.size, msg.prefix)
    assert run(courier, msg, [rcpt(1, "Bob@Example.ORG")]) == [Delivered("maildir")]
    [name] = files(root / "example.org" / "bob" / "new")
    data = (root / "example.org" / "bob" / "new" / name).read_bytes()
    assert data == expected_content("bob@example.org", sender="<>")


def test_hostname_escaped_in_name(root: Path, tmp_path: Path) -> None:
    c = MaildirCourier(root, "odd/host:name", clock=FakeClock(RECEIVED_AT, 1000.0, tick=0.001))
    run(c, message(tmp_path), [rcpt(2, "alice@example.org")])
    c.close()
    [name] = files(root / "example.org" / "alice" / "new")
    assert ".odd\\057host\\072name,S=" in name


def test_same_row_twice_is_one_file(courier: MaildirCourier, root: Path, tmp_path: Path) -> None:
    msg = message(tmp_path)
    run(courier, msg, [rcpt(5, "alice@example.org")])
    run(courier, msg, [rcpt(5, "alice@example.org")])
    assert len(files(root / "example.org" / "alice" / "new")) == 1
    run(courier, msg, [rcpt(6, "alice@example.org")])  # another row is another copy
    assert len(files(root / "example.org" / "alice" / "new")) == 2


def test_recovered_row_moved_to_cur_is_not_written_again(
    courier: MaildirCourier, root: Path, tmp_path: Path
) -> None:
    msg = message(tmp_path)
    run(courier, msg, [rcpt(5, "alice@example.org")])
    box = root / "example.org" / "alice"
    [name] = files(box / "new")
    # A reader (IMAP server) moves it to cur/ and marks it seen; then we crash before
    # recording Delivered, and the row comes back recovered.
    os.rename(box / "new" / name, box / "cur" / f"{name}:2,S")
    outcomes = run(courier, msg, [rcpt(5, "alice@example.org", recovered=True)])
    assert outcomes == [Delivered("maildir")]
    assert files(box / "new") == []
    assert files(box / "cur") == [f"{name}:2,S"]


def test_retried_row_found_in_cur_too(courier: MaildirCourier, root: Path, tmp_path: Path) -> None:
    msg = message(tmp_path)
    run(courier, msg, [rcpt(5, "alice@example.org")])
    box = root / "example.org" / "alice"
    [name] = files(box / "new")
    os.rename(box / "new" / name, box / "cur" / f"{name}:2,")
    assert run(courier, msg, [rcpt(5, "alice@example.org", attempts=1)]) == [Delivered("maildir")]
    assert files(box / "new") == []


def test_recovered_row_not_yet_delivered_is_written(
    courier: MaildirCourier, root: Path, tmp_path: Path
) -> None:
    box = root / "example.org" / "alice"
    msg = message(tmp_path)
    # Another row's file whose name shares a prefix (R5 vs R50) must not count.
    run(courier, msg, [rcpt(50, "alice@example.org")])
    for name in files(box / "new"):
        os.rename(box / "new" / name, box / "cur" / f"{name}:2,S")
    outcomes = run(courier, msg, [rcpt(5, "alice@example.org", recovered=True)])
    assert outcomes == [Delivered("maildir")]
    [name] = files(box / "new")
    assert "R5." in name
    assert (box / "new" / name).read_bytes() == expected_content("alice@example.org")


def test_crash_after_rename_before_record_leaves_no_duplicate(
    courier: MaildirCourier, root: Path, tmp_path: Path
) -> None:
    msg = message(tmp_path)
    box = root / "example.org" / "alice"
    run(courier, msg, [rcpt(9, "alice@example.org")])
    # The process "died" here; a stale tmp file from an unfinished attempt is also there.
    (box / "tmp" / "stale").write_bytes(b"partial")
    assert run(courier, msg, [rcpt(9, "alice@example.org", recovered=True)]) == [
        Delivered("maildir")
    ]
    assert len(files(box / "new")) == 1


def test_several_recipients_one_worker_call_one_dir_sync_for_the_batch(
    courier: MaildirCourier, root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    msg = message(tmp_path)
    recipients = [
        rcpt(1, "alice@example.org"),
        rcpt(2, "bob@example.org"),
        rcpt(3, "carol@example.net"),
    ]
    run(courier, msg, [rcpt(10, "alice@example.org"), rcpt(11, "bob@example.org")])
    synced: list[list[tuple[str, int]]] = []
    threads: set[str] = set()
    real = durable_files.sync_dirs

    def counting(dirs: Iterable[tuple[str, int]]) -> dict[str, OSError | None]:
        synced.append(list(dirs))
        threads.add(threading.current_thread().name)
        return real(synced[-1])

    monkeypatch.setattr(maildir_module, "sync_dirs", counting)
    outcomes = run(courier, msg, [*recipients, rcpt(4, "alice@example.org")])
    assert outcomes == [Delivered("maildir")] * 4
    [batch] = synced  # the renames of the whole call made durable at once
    assert sorted({path for path, _ in batch}) == sorted(
        str(root / d / "new") for d in ("example.net/carol", "example.org/alice", "example.org/bob")
    )
    assert {dev for _, dev in batch} == {os.stat(root).st_dev}
    assert all(name.startswith("maildir") for name in threads)  # never on the event loop
    for to, box in (
        ("carol@example.net", "example.net/carol"),
        ("bob@example.org", "example.org/bob"),
    ):
        [name] = [n for n in files(root / box / "new") if "R2." in n or "R3." in n]
        assert (root / box / "new" / name).read_bytes() == expected_content(to)
    assert len(files(root / "example.org" / "alice" / "new")) == 3


def test_large_body_streamed(courier: MaildirCourier, root: Path, tmp_path: Path) -> None:
    body = b"".join(b"line %07d\r\n" % i for i in range(60_000))  # ~780 KB
    assert len(body) > maildir_module.SMALL_BODY
    run(courier, message(tmp_path, body), [rcpt(1, "alice@example.org")])
    [name] = files(root / "example.org" / "alice" / "new")
    data = (root / "example.org" / "alice" / "new" / name).read_bytes()
    assert data == expected_content("alice@example.org", body)
    assert name.endswith(f",S={len(data)}")


def test_large_body_without_sendfile(
    courier: MaildirCourier, root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def no_sendfile(*args: object) -> int:
        raise OSError(errno.EINVAL, "not here")

    monkeypatch.setattr(os, "sendfile", no_sendfile)
    body = os.urandom(maildir_module.SMALL_BODY * 3 + 7)
    run(courier, message(tmp_path, body), [rcpt(1, "alice@example.org")])
    [name] = files(root / "example.org" / "alice" / "new")
    data = (root / "example.org" / "alice" / "new" / name).read_bytes()
    assert data == expected_content("alice@example.org", body)


def failing(code: int) -> Callable[..., object]:
    def fail(*args: object) -> object:
        raise OSError(code, os.strerror(code))

    return fail


@pytest.mark.parametrize(
    ("function", "code", "reply"),
    [
        (
            "writev",  # a body under 256 KiB goes out with its header lines in one writev(2)
            errno.ENOSPC,
            Reply(452, "4.3.1", "Insufficient system storage, try again later"),
        ),
        (
            "fsync",
            errno.ENOSPC,
            Reply(452, "4.3.1", "Insufficient system storage, try again later"),
        ),
        ("writev", errno.EDQUOT, Reply(452, "4.2.2", "Mailbox full, try again later")),
        ("fsync", errno.EIO, Reply(451, "4.3.0", "Local error in processing, try again later")),
    ],
)
def test_disk_errors_are_temp_failures_and_leave_nothing(
    courier: MaildirCourier,
    root: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    function: str,
    code: int,
    reply: Reply,
) -> None:
    msg = message(tmp_path)
    run(courier, msg, [rcpt(1, "alice@example.org")])  # mailbox exists; the disk is full now
    monkeypatch.setattr(os, function, failing(code))
    outcomes = run(courier, msg, [rcpt(2, "alice@example.org"), rcpt(3, "bob@example.org")])
    monkeypatch.undo()
    # Retried soon (10 s after a first attempt), not after the queue's normal backoff.
    assert outcomes == [TempFailed(reply, retry_after=10.0), TempFailed(reply, retry_after=10.0)]
    box = root / "example.org" / "alice"
    assert len(files(box / "new")) == 1  # only the first message
    assert files(box / "tmp") == []
    assert files(root / "example.org" / "bob" / "new") == []


def test_failed_dir_fsync_is_temp_failure_and_retry_is_idempotent(
    courier: MaildirCourier, root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    msg = message(tmp_path)
    run(courier, msg, [rcpt(1, "alice@example.org")])
    monkeypatch.setattr(durable_files, "fsync_dir", failing(errno.EIO))
    [outcome] = run(courier, msg, [rcpt(2, "alice@example.org", attempts=2)])
    assert isinstance(outcome, TempFailed) and outcome.retry_after == 40.0  # 10 s, 20 s, 40 s
    monkeypatch.undo()
    assert run(courier, msg, [rcpt(2, "alice@example.org", attempts=3)]) == [Delivered("maildir")]
    assert len(files(root / "example.org" / "alice" / "new")) == 2


@pytest.mark.parametrize(
    "address",
    [
        Address("../../etc", "example.org"),
        Address("..", "example.org"),
        Address(".hidden", "example.org"),
        Address("a/b", "example.org"),
        Address("a\x00b", "example.org"),
        Address("alice", ".."),
        Address("alice", "a/../.."),
    ],
)
def test_bad_mailbox_name_is_perm_failure(
    courier: MaildirCourier, root: Path, tmp_path: Path, address: Address
) -> None:
    msg = message(tmp_path)
    recipients = [QueuedRecipient(1, address, address), rcpt(2, "alice@example.org")]
    outcomes = run(courier, msg, recipients)
    assert outcomes == [PermFailed(Reply(550, "5.1.1", "No such mailbox")), Delivered("maildir")]
    assert sorted(p.name for p in root.iterdir()) == ["example.org"]
    assert sorted(p.name for p in (root / "example.org").iterdir()) == ["alice"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["body", "mail"]


def test_missing_body_is_temp_failure(courier: MaildirCourier, tmp_path: Path) -> None:
    msg = message(tmp_path)
    os.unlink(msg.body_path)
    outcomes = run(courier, msg, [rcpt(1, "alice@example.org"), rcpt(2, "bob@example.org")])
    assert [type(o) for o in outcomes] == [TempFailed, TempFailed]


def test_mailbox_removed_behind_our_back_is_made_again(
    courier: MaildirCourier, root: Path, tmp_path: Path
) -> None:
    msg = message(tmp_path)
    run(courier, msg, [rcpt(1, "alice@example.org")])
    box = root / "example.org" / "alice"
    for sub in ("new", "cur", "tmp"):
        for name in files(box / sub):
            os.unlink(box / sub / name)
        os.rmdir(box / sub)
    assert run(courier, msg, [rcpt(2, "alice@example.org")]) == [Delivered("maildir")]
    assert len(files(box / "new")) == 1


def test_no_recipients(courier: MaildirCourier, tmp_path: Path) -> None:
    assert run(courier, message(tmp_path), []) == []


def test_inline_body_is_written_without_a_file(
    courier: MaildirCourier, root: Path, tmp_path: Path
) -> None:
    msg = QueuedMessage(
        "Q8in", Address("s", "example.net"), RECEIVED_AT, "", len(BODY), PREFIX, body=BODY
    )
    assert run(courier, msg, [rcpt(1, "alice@example.org")]) == [Delivered("maildir")]
    [name] = files(root / "example.org" / "alice" / "new")
    data = (root / "example.org" / "alice" / "new" / name).read_bytes()
    assert data == expected_content("alice@example.org")
    assert name.endswith(f",S={len(data)}")


def test_waiting_deliveries_are_one_batch_with_one_dir_sync_per_batch(
    root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    courier = MaildirCourier(
        root, "mx.example.org", clock=FakeClock(RECEIVED_AT, 1000.0, tick=0.001)
    )
    synced: list[list[str]] = []
    real = durable_files.sync_dirs

    def counting(dirs: Iterable[tuple[str, int]]) -> dict[str, OSError | None]:
        listed = list(dirs)
        synced.append(sorted({path for path, _ in listed}))
        return real(listed)

    monkeypatch.setattr(maildir_module, "sync_dirs", counting)
    wakeups: list[object] = []

    class Jobs(queue.SimpleQueue[object]):
        def put(self, item: object, block: bool = True, timeout: float | None = None) -> None:
            wakeups.append(item)
            super().put(item, block, timeout)

    courier._worker._jobs = Jobs()  # type: ignore[assignment]

    async def main() -> list[list[Outcome]]:
        first = QueuedMessage("Q0", None, RECEIVED_AT, "", 4, body=b"x\r\n")
        await courier.deliver(first, [rcpt(99, "alice@example.org")])  # mailboxes exist now
        await courier.deliver(first, [rcpt(98, "bob@example.org")])
        synced.clear()
        wakeups.clear()
        batches = courier.batches
        messages = [
            QueuedMessage(f"Q{i}", None, RECEIVED_AT, "", 4, body=b"%d\r\n" % i)
            for i in range(1, 21)
        ]
        results = await asyncio.gather(
            *(
                courier.deliver(m, [rcpt(i, "alice@example.org"), rcpt(100 + i, "bob@example.org")])
                for i, m in enumerate(messages)
            )
        )
        # The 20 calls came in one turn of the loop: handed over together (one wake-up of
        # the worker, not one a call), one batch.
        assert len(wakeups) == 1 and courier.batches - batches == 1
        return results

    try:
        results = asyncio.run(main())
    finally:
        courier.close()
    assert results == [[Delivered("maildir")] * 2] * 20
    assert len(files(root / "example.org" / "alice" / "new")) == 21
    assert len(files(root / "example.org" / "bob" / "new")) == 21
    # The new/ directories are synced once per batch, never once per message.
    both = sorted(str(root / "example.org" / box / "new") for box in ("alice", "bob"))
    assert synced == [both]


def test_a_failed_copy_in_a_batch_fails_alone(
    courier: MaildirCourier, root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    msg = message(tmp_path)
    run(courier, msg, [rcpt(1, "alice@example.org"), rcpt(2, "bob@example.org")])
    real_rename = os.rename

    def no_rename_for_bob(src: str, dst: str) -> None:
        if "/bob/" in src:
            raise OSError(errno.EIO, "Input/output error")
        real_rename(src, dst)

    monkeypatch.setattr(os, "rename", no_rename_for_bob)
    outcomes = run(courier, msg, [rcpt(3, "alice@example.org"), rcpt(4, "bob@example.org")])
    monkeypatch.undo()
    assert outcomes == [
        Delivered("maildir"),
        TempFailed(Reply(451, "4.3.0", "Local error in processing, try again later"), 10.0),
    ]
    assert files(root / "example.org" / "bob" / "tmp") == []
    assert len(files(root / "example.org" / "bob" / "new")) == 1
    assert len(files(root / "example.org" / "alice" / "new")) == 2


@pytest.mark.skipif(not durable_files.has_syncfs(), reason="syncfs(2) is Linux only")
def test_a_batch_is_synced_with_one_syncfs_and_its_failure_fails_every_copy(
    courier: MaildirCourier, root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    msg = message(tmp_path)
    run(courier, msg, [rcpt(1, "alice@example.org"), rcpt(2, "bob@example.org")])
    calls: list[int] = []
    real = durable_files.syncfs

    def counting(fd: int) -> None:
        calls.append(fd)
        real(fd)

    monkeypatch.setattr(durable_files, "syncfs", counting)
    outcomes = run(courier, msg, [rcpt(3, "alice@example.org"), rcpt(4, "bob@example.org")])
    # One for the files before their renames, one for the two new/ directories after them.
    assert outcomes == [Delivered("maildir")] * 2 and len(calls) == 2
    monkeypatch.setattr(durable_files, "syncfs", failing(errno.EIO))
    outcomes = run(courier, msg, [rcpt(5, "alice@example.org"), rcpt(6, "bob@example.org")])
    local_error = Reply(451, "4.3.0", "Local error in processing, try again later")
    assert outcomes == [TempFailed(local_error, retry_after=10.0)] * 2
    for box in ("alice", "bob"):
        assert len(files(root / "example.org" / box / "new")) == 2  # not the failed batch
        assert files(root / "example.org" / box / "tmp") == []


@pytest.mark.skipif(not durable_files.has_syncfs(), reason="syncfs(2) is Linux only")
def test_a_failed_sync_of_the_new_dirs_fails_their_copies_and_a_retry_is_idempotent(
    courier: MaildirCourier, root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    msg = message(tmp_path)
    run(courier, msg, [rcpt(1, "alice@example.org"), rcpt(2, "bob@example.org")])
    real = durable_files.syncfs
    calls: list[int] = []

    def second_fails(fd: int) -> None:  # the files' syncfs works, the directories' fails
        calls.append(fd)
        if len(calls) == 2:
            raise OSError(errno.EIO, "Input/output error")
        real(fd)

    monkeypatch.setattr(durable_files, "syncfs", second_fails)
    outcomes = run(courier, msg, [rcpt(3, "alice@example.org"), rcpt(4, "bob@example.org")])
    monkeypatch.undo()
    local_error = Reply(451, "4.3.0", "Local error in processing, try again later")
    assert outcomes == [TempFailed(local_error, retry_after=10.0)] * 2
    # Renamed already but not known durable: the retry finds them and writes no second copy.
    retry = [rcpt(3, "alice@example.org", attempts=1), rcpt(4, "bob@example.org", attempts=1)]
    assert run(courier, msg, retry) == [Delivered("maildir")] * 2
    for box in ("alice", "bob"):
        assert len(files(root / "example.org" / box / "new")) == 2
        assert files(root / "example.org" / box / "tmp") == []


def test_folder_param_delivers_into_a_maildirpp_folder(
    courier: MaildirCourier, root: Path, tmp_path: Path
) -> None:
    plain = message(tmp_path)
    junk = QueuedMessage(
        plain.queue_id,
        plain.mail_from,
        plain.received_at,
        plain.body_path,
        plain.size,
        prefix=plain.prefix,
        params={maildir_module.FOLDER_PARAM: "Junk"},
    )
    assert run(courier, junk, [rcpt(5, "alice@example.org")]) == [Delivered("maildir")]
    box = root / "example.org" / "alice"
    assert files(box / ".Junk" / "new") and (box / ".Junk" / "maildirfolder").exists()
    assert files(box / "new") == []  # not in the inbox
    bad = QueuedMessage(
        plain.queue_id,
        plain.mail_from,
        plain.received_at,
        plain.body_path,
        plain.size,
        prefix=plain.prefix,
        params={maildir_module.FOLDER_PARAM: "../../x"},
    )
    (outcome,) = run(courier, bad, [rcpt(6, "alice@example.org")])
    assert isinstance(outcome, PermFailed)  # a folder name can never leave the mailbox


def test_a_kept_mailbox_is_per_address_and_folder(
    courier: MaildirCourier, root: Path, tmp_path: Path
) -> None:
    plain = message(tmp_path)
    junk = QueuedMessage(
        plain.queue_id, plain.mail_from, plain.received_at, plain.body_path, plain.size,
        prefix=plain.prefix, params={maildir_module.FOLDER_PARAM: "Junk"},
    )  # fmt: skip
    box = root / "example.org" / "bob"
    for row, (msg, to) in enumerate(
        [(plain, "Bob@Example.ORG"), (junk, "Bob@Example.ORG"), (plain, "bob@example.org")]
    ):
        assert run(courier, msg, [rcpt(row, to)]) == [Delivered("maildir")]
    assert len(files(box / "new")) == 2 and len(files(box / ".Junk" / "new")) == 1
    for name in files(box / "new"):
        assert (box / "new" / name).read_bytes() == expected_content("bob@example.org")
    bad = rcpt(9, "alice@example.org")
    bad = QueuedRecipient(9, Address("../x", "example.org"), bad.original)
    for _ in range(2):  # never kept: refused each time
        (outcome,) = run(courier, plain, [bad])
        assert isinstance(outcome, PermFailed)
