"""A Hypothesis state machine over the SMTP server core: every state x every verb, each
reply checked against a small model of RFC 5321 sequencing."""

from __future__ import annotations

import re

import pytest
from hypothesis import HealthCheck, settings
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from hato.model import Reply
from hato.smtp import (
    NEED_DATA,
    Event,
    LocalProtocolError,
    RcptTo,
    State,
)
from kit.smtp_core import Driver

REPLY = re.compile(r"([2-5][0-9][0-9])([ -])[^\r\n]*")
GREETED, READY, MAIL, RCPT, DATA, BDAT, CLOSED = (
    "greeted",
    "ready",
    "mail",
    "rcpt",
    "data",
    "bdat",
    "closed",
)
TO_STATE = {
    GREETED: State.GREETED,
    READY: State.READY,
    MAIL: State.MAIL,
    RCPT: State.RCPT,
    DATA: State.DATA,
    BDAT: State.BDAT,
    CLOSED: State.CLOSED,
}


def refuse_nobody(event: Event) -> Reply | str | None:
    """Every recipient here is @example.org; nobody@ is the one the app refuses."""
    if isinstance(event, RcptTo) and event.address.local == "nobody":
        return Reply(550, "5.1.1", "No such user")
    return None


class SmtpCoreMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        # Any number of errors and junk commands: the model checks states, not the limits.
        self.driver = Driver.make(
            greet=False,
            decide=refuse_nobody,
            max_recipients=3,
            max_bad_commands=10**6,
            max_junk_commands=10**6,
        )
        self.driver.conn.greet()
        assert self.send(b"") == [220]
        self.model = GREETED
        self.accepted = 0
        self.refused = 0

    def send(self, data: bytes) -> list[int]:
        output = self.driver.run(data)
        codes: list[int] = []
        for line in output.split("\r\n")[:-1]:
            match = REPLY.fullmatch(line)
            assert match, line
            if match.group(2) == " ":
                codes.append(int(match.group(1)))
        return codes

    def in_transaction(self) -> bool:
        return self.model in (MAIL, RCPT, BDAT)

    def reset(self) -> None:
        self.model = READY
        self.accepted = self.refused = 0

    # ---- rules: every verb is tried in every state where commands are read ----
    @precondition(lambda self: self.model not in (CLOSED, DATA))
    @rule()
    def ehlo(self) -> None:
        if self.model == BDAT:
            assert self.send(b"EHLO c.example\r\n") == [503]
            return
        assert self.send(b"EHLO c.example\r\n") == [250]
        self.reset()

    @precondition(lambda self: self.model not in (CLOSED, DATA))
    @rule()
    def mail(self) -> None:
        ok = self.model == READY
        assert self.send(b"MAIL FROM:<a@b.example>\r\n") == [250 if ok else 503]
        if ok:
            self.model = MAIL

    @precondition(lambda self: self.model not in (CLOSED, DATA))
    @rule()
    def rcpt(self) -> None:
        codes = self.send(b"RCPT TO:<x@example.org>\r\n")
        if self.model not in (MAIL, RCPT):
            assert codes == [503]
        elif self.accepted >= 3:
            assert codes == [452]
        else:
            assert codes == [250]
            self.accepted += 1
            self.model = RCPT

    @precondition(lambda self: self.model not in (CLOSED, DATA))
    @rule()
    def rcpt_refused(self) -> None:
        codes = self.send(b"RCPT TO:<nobody@example.org>\r\n")
        if self.model not in (MAIL, RCPT):
            assert codes == [503]
        elif self.accepted >= 3:
            assert codes == [452]
        else:
            assert codes == [550]
            self.refused += 1

    @precondition(lambda self: self.model not in (CLOSED, DATA))
    @rule()
    def data(self) -> None:
        codes = self.send(b"DATA\r\n")
        if self.model == RCPT:
            assert codes == [354]
            self.model = DATA
        elif self.model == MAIL and self.refused:
            assert codes == [554]
        else:
            assert codes == [503]

    @precondition(lambda self: self.model == DATA)
    @rule()
    def body(self) -> None:
        assert self.send(b"Subject: s\r\n\r\n..body\r\n.\r\n") == [250]
        self.reset()

    @precondition(lambda self: self.model not in (CLOSED, DATA))
    @rule()
    def bdat(self) -> None:
        codes = self.send(b"BDAT 3\r\nabc")
        if self.model in (RCPT, BDAT):
            assert codes == [250]
            self.model = BDAT
        elif self.model == MAIL and self.refused:
            assert codes == [554]
        else:
            assert codes == [503]

    @precondition(lambda self: self.model not in (CLOSED, DATA))
    @rule()
    def bdat_last(self) -> None:
        codes = self.send(b"BDAT 2 LAST\r\nxy")
        if self.model in (RCPT, BDAT):
            assert codes == [250]
            self.reset()
        elif self.model == MAIL and self.refused:
            assert codes == [554]
        else:
            assert codes == [503]

    @precondition(lambda self: self.model not in (CLOSED, DATA))
    @rule()
    def rset(self) -> None:
        assert self.send(b"RSET\r\n") == [250]
        if self.model != GREETED:
            self.reset()

    @precondition(lambda self: self.model not in (CLOSED, DATA))
    @rule()
    def harmless(self) -> None:
        assert self.send(b"NOOP\r\nVRFY x\r\nEXPN y\r\nHELP\r\n") == [250, 252, 252, 214]

    @precondition(lambda self: self.model not in (CLOSED, DATA))
    @rule()
    def unknown_and_unoffered(self) -> None:
        codes = self.send(b"FROB\r\nSTARTTLS\r\nAUTH PLAIN\r\n")
        expected = 502 if self.model == READY else 503
        assert codes == [500, expected, expected]

    @precondition(lambda self: self.model not in (CLOSED, DATA))
    @rule()
    def quit(self) -> None:
        assert self.send(b"QUIT\r\n") == [221]
        self.model = CLOSED

    @precondition(lambda self: self.model == CLOSED)
    @rule()
    def after_close(self) -> None:
        assert self.driver.conn.next_event() is NEED_DATA
        with pytest.raises(LocalProtocolError):
            self.driver.conn.receive_data(b"NOOP\r\n")

    @invariant()
    def state_matches_model(self) -> None:
        assert self.driver.conn.state is TO_STATE[self.model]


SmtpCoreMachine.TestCase.settings = settings(
    max_examples=200,
    stateful_step_count=30,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
test_smtp_core_state_machine = SmtpCoreMachine.TestCase
