"""Write-side flow control of an SMTP session: a client that does not read its replies stops
being read.

Theory of operation. Every command line a client pipelines (RFC 2920) is answered, and some
answers are much longer than the command (an EHLO's capability list, a 452 for a recipient past
the limit, a 250 for each BDAT chunk). A client that writes commands and never reads would
have the server buffer its replies without bound: 20 MB of `EHLO a` took the process from 83 to
398 MB. asyncio tells a protocol when its transport's write buffer passes the high-water mark
(`pause_writing`) and when it has drained below the low one (`resume_writing`); in between the
session reads nothing more, so what it holds is one read's replies at most, and the kernel's
socket buffers push back on the client (RFC 5321 §4.5.3.2.7: the idle timeout still ends a
client that never reads). The session resumes reading only when neither a decision in flight
(`busy`) nor the full write buffer holds it.
"""

from __future__ import annotations

import asyncio


class WriteBackpressure:
    """`pause_writing`/`resume_writing` for `SmtpSession` (its transport and state)."""

    transport: asyncio.Transport | None
    busy: bool
    closing: bool
    writes_paused: bool = False

    def pause_writing(self) -> None:
        # The transport's buffer passed its high-water mark: read nothing more for now.
        self.writes_paused = True
        if self.transport is not None and not self.closing:
            self.transport.pause_reading()

    def resume_writing(self) -> None:
        self.writes_paused = False
        if self.may_read() and self.transport is not None:
            self.transport.resume_reading()

    def may_read(self) -> bool:
        """Whether reading may resume: nothing in flight, not closing, replies being read."""
        return not self.busy and not self.closing and not self.writes_paused
