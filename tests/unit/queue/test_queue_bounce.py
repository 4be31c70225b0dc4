"""The runner's notifications end to end: queue -> courier -> DSN queued from <> -> delivered."""

from __future__ import annotations

import asyncio
import email
import email.policy
import logging
import sqlite3
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
from queue_fakes import (
    MIB,
    FixedRng,
    ParsedDsn,
    ScriptedCourier,
    addr,
    eventually,
    open_queue,
    parse_dsn,
    run,
)

from hato.model import (
    Delivered,
    Handoff,
    Outcome,
    PermFailed,
    QueuedMessage,
    QueuedRecipient,
    RecipientDsn,
    Reply,
    TempFailed,
)
from hato.queue import AUTH_PARAM, SPF_PARAM, Queue, QueueRunner, QueueWriteError, Schedule
from hato.queue.store import Queue as QueueClass
from kit.clock import FakeClock

HOST = "mx.hato.test"
SENDER = "alice@example.com"
BODY = b"Subject: figures\r\nMessage-ID: <m1@example.com>\r\n\r\nthe figures\r\n"
NO_USER = PermFailed(Reply(550, "5.1.1", "no such user"), remote_mta="mx.example.org")
BUSY = TempFailed(Reply(451, "4.4.1", "try later"), remote_mta="mx.example.org")
HOUR = 3600.0


class DsnCourier(ScriptedCourier):
    """Keeps the bytes of every DSN it is handed (a spool file is gone once delivered)."""

    def __init__(self, script: Mapping[str, Outcome | Exception] | None = None) -> None:
        super().__init__(dict(script or {}))
        self.dsns: list[bytes] = []
        self.dsn_messages: list[QueuedMessage] = []

    async def deliver(
        self, message: QueuedMessage, recipients: Sequence[QueuedRecipient]
    ) -> Sequence[Outcome]:
        if message.mail_from is None and message.prefix == b"":
            data = message.body
            if data is None:
                data = await asyncio.to_thread(Path(message.body_path).read_bytes)
            self.dsns.append(data)
            self.dsn_messages.append(message)
        return await super().deliver(message, recipients)

    def parsed(self) -> list[ParsedDsn]:
        return [parse_dsn(d) for d in self.dsns]


@asynccontextmanager
async def running(
    queue: Queue, courier: ScriptedCourier, clock: FakeClock, **kwargs: object
) -> AsyncIterator[QueueRunner]:
    runner = QueueRunner(queue, courier, clock=clock, rng=FixedRng(), hostname=HOST, **kwargs)  # type: ignore[arg-type]
    task = asyncio.ensure_future(runner.run())
    try:
        yield runner
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task


async def send(
    queue: Queue,
    *to: str,
    body: bytes = BODY,
    mail_from: str | None = SENDER,
    params: Mapping[str, str | None] | None = None,
    **rcpt_params: Mapping[str, str],
) -> str:
    """Commit as the session does: (dest, original, RecipientDsn.from_params(rcpt params))."""
    writer = queue.new_body()
    writer.write(body)
    recipients = [
        (addr(t), addr(t), RecipientDsn.from_params(rcpt_params.get(t.split("@")[0], {})))
        for t in to
    ]
    return await queue.commit(
        writer,
        mail_from=addr(mail_from) if mail_from else None,
        recipients=recipients,
        prefix=b"Received: by test\r\n",
        params=dict(params or {}),
    )


def rows(root: Path) -> list[tuple[object, ...]]:
    with sqlite3.connect(root / "queue.db") as conn:
        return conn.execute("SELECT address, status FROM recipients ORDER BY row_id").fetchall()


def test_failures_of_one_attempt_are_one_dsn_to_the_sender_delivered_like_mail(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, "hato.queue")
    clock = FakeClock()
    courier = DsnCourier({"a@example.org": NO_USER, "b@example.org": NO_USER})

    async def main() -> None:
        queue = await open_queue(tmp_path, clock)
        try:
            async with running(queue, courier, clock):
                await send(
                    queue,
                    "a@example.org",
                    "b@example.org",
                    "c@example.org",
                    # A checked sender: the whole message comes back (RFC 3461 §4.3).
                    params={"ENVID": "env+2B1", "RET": "FULL", SPF_PARAM: "pass"},
                    b={"ORCPT": "rfc822;B@example.org"},
                )
                await eventually(lambda: caplog.text.count("event=removed") == 2)
        finally:
            await queue.close()

    run(main)
    (dsn,) = courier.parsed()
    (message,) = courier.dsn_messages
    assert message.mail_from is None  # RFC 3461 §6.1: from the null reverse-path
    (call,) = [c for c in courier.calls if c.message is message]
    assert [str(r.address) for r in call.recipients] == [SENDER]
    assert dsn.per_message["Reporting-MTA"] == f"dns; {HOST}"
    assert dsn.per_message["Original-Envelope-Id"] == "env+1"
    assert [(r["Final-Recipient"], r["Action"], r["Status"]) for r in dsn.recipients] == [
        ("rfc822;a@example.org", "failed", "5.1.1"),
        ("rfc822;b@example.org", "failed", "5.1.1"),
    ]
    assert dsn.recipients[1]["Original-Recipient"] == "rfc822;B@example.org"
    assert dsn.recipients[0]["Diagnostic-Code"] == "smtp; 550 5.1.1 no such user"
    assert dsn.recipients[0]["Remote-MTA"] == "dns; mx.example.org"
    assert dsn.returned.get_content_type() == "message/rfc822"
    assert b"Received: by test\r\n" + BODY in courier.dsns[0]
    assert rows(tmp_path) == []


def test_notify_never_and_notify_success_only_send_no_bounce(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, "hato.queue")
    clock = FakeClock()
    courier = DsnCourier({"a@example.org": NO_USER, "b@example.org": NO_USER})

    async def main() -> None:
        queue = await open_queue(tmp_path, clock)
        try:
            async with running(queue, courier, clock):
                await send(
                    queue,
                    "a@example.org",
                    "b@example.org",
                    a={"NOTIFY": "NEVER"},
                    b={"NOTIFY": "SUCCESS"},
                )
                await eventually(lambda: "event=removed" in caplog.text)
                await asyncio.sleep(0.05)
        finally:
            await queue.close()

    run(main)
    assert courier.dsns == []
    assert caplog.text.count("event=bounce-suppressed") == 2
    assert "reason=notify" in caplog.text


def test_ret_hdrs_and_a_large_original_return_only_the_headers(tmp_path: Path) -> None:
    clock = FakeClock()
    courier = DsnCourier({"a@example.org": NO_USER})
    big = b"Subject: big\r\n\r\n" + b"x" * 76 + b"\r\n" * 1 + (b"y" * 78 + b"\r\n") * 14000

    async def main() -> None:
        queue = await open_queue(tmp_path, clock)
        try:
            async with running(queue, courier, clock):
                await send(queue, "a@example.org", params={"RET": "HDRS"})
                await send(queue, "a@example.org", body=big)  # 1.1 MiB: a spool file
                await eventually(lambda: len(courier.dsns) == 2)
        finally:
            await queue.close()

    run(main)
    assert len(big) > MIB
    for dsn, data in zip(courier.parsed(), courier.dsns, strict=True):
        assert dsn.returned.get_content_type() == "text/rfc822-headers"
        assert b"the figures" not in data and b"yyyy" not in data
        assert dsn.recipients[0]["Action"] == "failed"
    assert b"Subject: figures" in courier.dsns[0] and b"Subject: big" in courier.dsns[1]


def test_a_requiretls_message_comes_back_redacted(tmp_path: Path) -> None:
    clock = FakeClock()
    courier = DsnCourier({"a@example.org": NO_USER})

    async def main() -> None:
        queue = await open_queue(tmp_path, clock)
        try:
            async with running(queue, courier, clock):
                await send(queue, "a@example.org", params={"REQUIRETLS": None, "RET": "FULL"})
                await eventually(lambda: len(courier.dsns) == 1)
        finally:
            await queue.close()

    run(main)
    [data] = courier.dsns
    # RFC 8689 §5: nothing of the message (not even its Subject), whatever RET asked; the
    # report itself goes without REQUIRETLS.
    assert b"figures" not in data and b"message/rfc822" not in data
    report = email.message_from_bytes(data, policy=email.policy.default)
    parts = [p.get_content_type() for p in report.iter_parts()]
    assert parts == ["text/plain", "message/delivery-status"]
    assert b"Status: 5.1.1" in data and b"REQUIRETLS" in data
    assert "REQUIRETLS" not in courier.dsn_messages[0].params


def test_one_delay_warning_then_the_expiry_bounce(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, "hato.queue")
    clock = FakeClock()
    courier = DsnCourier({"slow@example.org": BUSY})
    schedule = Schedule(max_lifetime=24 * HOUR)

    def tries() -> int:
        return caplog.text.count("event=deferred") + caplog.text.count("event=expired")

    async def main() -> None:
        queue = await open_queue(tmp_path, clock)
        try:
            async with running(queue, courier, clock, schedule=schedule) as runner:
                await send(queue, "slow@example.org")
                await eventually(lambda: tries() == 1)
                assert courier.dsns == []  # a fresh deferral warns nobody
                for n, step in enumerate((4 * HOUR, 2 * HOUR, 2 * HOUR), start=2):
                    clock.advance(step)
                    runner.wake()
                    await eventually(lambda n=n: tries() == n)  # type: ignore[misc]
                await eventually(lambda: len(courier.dsns) == 1)
                clock.advance(24 * HOUR)
                runner.wake()
                await eventually(lambda: len(courier.dsns) == 2)
                await eventually(lambda: rows(tmp_path) == [])
        finally:
            await queue.close()

    run(main)
    warning, bounce = courier.parsed()
    assert warning.report["Subject"] == "Delayed Mail (still being retried)"
    (delayed,) = warning.recipients
    assert (delayed["Action"], delayed["Status"]) == ("delayed", "4.4.1")
    assert delayed["Will-Retry-Until"] == "Sat, 16 Jan 2027 08:00:00 +0000"
    assert warning.returned.get_content_type() == "text/rfc822-headers"  # RFC 3461 §4.3
    (failed,) = bounce.recipients
    assert (failed["Action"], failed["Status"]) == ("failed", "4.4.7")
    assert failed["Diagnostic-Code"] == "smtp; 451 4.4.1 try later"
    assert caplog.text.count("event=dsn-queued") == 2


def test_success_reports_delivered_relayed_and_none_when_the_next_hop_reports(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, "hato.queue")
    clock = FakeClock()
    courier = DsnCourier(
        {
            "box@example.org": Delivered("maildir"),
            "relay@example.net": Delivered("250 ok", Handoff.RELAYED),
            "dsn@example.net": Delivered("250 ok", Handoff.RELAYED_DSN),
        }
    )
    success = {"NOTIFY": "SUCCESS"}

    async def main() -> None:
        queue = await open_queue(tmp_path, clock)
        try:
            async with running(queue, courier, clock):
                await send(
                    queue,
                    "box@example.org",
                    "relay@example.net",
                    "dsn@example.net",
                    "quiet@example.org",  # no NOTIFY: FAILURE,DELAY only
                    params={AUTH_PARAM: SENDER},  # submitted by alice: a checked sender
                    box=success,
                    relay=success,
                    dsn=success,
                )
                await eventually(lambda: caplog.text.count("event=removed") == 2)
        finally:
            await queue.close()

    run(main)
    (dsn,) = courier.parsed()
    assert dsn.report["Subject"] == "Successful Mail Delivery Report"
    assert [(r["Final-Recipient"], r["Action"], r["Status"]) for r in dsn.recipients] == [
        ("rfc822;box@example.org", "delivered", "2.0.0"),
        ("rfc822;relay@example.net", "relayed", "2.0.0"),
    ]
    assert dsn.returned.get_content_type() == "text/rfc822-headers"


def test_a_dsn_that_fails_is_dropped_never_bounced(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, "hato.queue")
    clock = FakeClock()
    gone = PermFailed(Reply(550, "5.1.1", "sender unknown"))
    courier = DsnCourier({"a@example.org": NO_USER, SENDER: gone})

    async def main() -> None:
        queue = await open_queue(tmp_path, clock)
        try:
            async with running(queue, courier, clock):
                await send(queue, "a@example.org")
                await eventually(lambda: caplog.text.count("event=removed") == 2)
                await asyncio.sleep(0.05)
        finally:
            await queue.close()

    run(main)
    assert len(courier.dsns) == 1  # the bounce, and no bounce of the bounce
    assert "reason=null-sender" in caplog.text
    assert len(courier.calls) == 2


def test_a_dsn_that_cannot_be_queued_keeps_the_failed_recipient_queued(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, "hato.queue")
    clock = FakeClock()
    courier = DsnCourier({"a@example.org": NO_USER})
    real_commit = QueueClass.commit
    refusals = [QueueWriteError(28, "disk full")]

    async def flaky_commit(self: Queue, *args: object, **kwargs: object) -> str:
        if kwargs.get("mail_from") is None and refusals:
            raise refusals.pop()
        return await real_commit(self, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(QueueClass, "commit", flaky_commit)

    async def main() -> None:
        queue = await open_queue(tmp_path, clock)
        try:
            async with running(queue, courier, clock) as runner:
                await send(queue, "a@example.org")
                await eventually(lambda: "event=dsn-failed" in caplog.text)
                await eventually(lambda: rows(tmp_path) == [("a@example.org", "queued")])
                clock.advance(300)
                runner.wake()
                await eventually(lambda: len(courier.dsns) == 1)
                await eventually(lambda: rows(tmp_path) == [])
        finally:
            await queue.close()

    run(main)
    assert parse_dsn(courier.dsns[0]).recipients[0]["Action"] == "failed"


@pytest.mark.parametrize(
    ("params", "sent"),
    [({}, False), ({SPF_PARAM: "fail"}, False), ({SPF_PARAM: "pass"}, True)],
)
def test_success_dsn_only_for_a_sender_that_authenticated_or_passed_spf(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, params: dict[str, str | None], sent: bool
) -> None:
    """Backscatter: anyone can put a victim's address in MAIL FROM and ask NOTIFY=SUCCESS."""
    caplog.set_level(logging.INFO, "hato.queue")
    clock = FakeClock()
    courier = DsnCourier({"box@example.org": Delivered("maildir")})

    async def main() -> None:
        queue = await open_queue(tmp_path, clock)
        try:
            async with running(queue, courier, clock):
                await send(queue, "box@example.org", params=params, box={"NOTIFY": "SUCCESS"})
                await eventually(lambda: caplog.text.count("event=removed") == 1 + sent)
                await asyncio.sleep(0.05)
        finally:
            await queue.close()

    run(main)
    assert len(courier.dsns) == int(sent)
    assert ("event=dsn-success-ignored" in caplog.text) is not sent


HEADERS, WHOLE = "text/rfc822-headers", "message/rfc822"


@pytest.mark.parametrize(
    ("original", "params", "returned"),
    [
        # A copy one of our aliases forwarded: the body only to an authenticated sender.
        ("alias@example.org", {}, HEADERS),
        ("alias@example.org", {SPF_PARAM: "pass"}, HEADERS),
        ("alias@example.org", {AUTH_PARAM: SENDER}, WHOLE),
        # Any other failure: the body only to a sender that authenticated or passed SPF
        # (anyone may forge the rest: backscatter of a stranger's body, 2026-12-08).
        ("x@elsewhere.example", {}, HEADERS),
        ("x@elsewhere.example", {SPF_PARAM: "fail"}, HEADERS),
        ("x@elsewhere.example", {SPF_PARAM: "pass"}, WHOLE),
        ("x@elsewhere.example", {AUTH_PARAM: SENDER}, WHOLE),
    ],
)
def test_a_bounce_returns_the_body_only_to_a_checked_sender(
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    original: str,
    params: dict[str, str | None],
    returned: str,
) -> None:
    caplog.set_level(logging.INFO, "hato.queue")
    clock = FakeClock()
    courier = DsnCourier({"x@elsewhere.example": NO_USER})

    async def main() -> None:
        queue = await open_queue(tmp_path, clock)
        try:
            async with running(queue, courier, clock):
                writer = queue.new_body()
                writer.write(BODY)
                forward = (addr("x@elsewhere.example"), addr(original), RecipientDsn())
                await queue.commit(
                    writer, mail_from=addr(SENDER), recipients=[forward], prefix=b"", params=params
                )
                await eventually(lambda: caplog.text.count("event=removed") == 2)
        finally:
            await queue.close()

    run(main)
    (dsn,) = courier.parsed()
    assert dsn.returned.get_content_type() == returned
