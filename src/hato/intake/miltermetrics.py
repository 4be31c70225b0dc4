"""What /metrics says about the milters (`[[milter]]`), per milter (its address, as
configured: a label of bounded cardinality).

- `hato_milter_calls_total{milter, stage, reply}`: each time a milter was asked and answered,
  at the `envelope` stage (before DATA: MAIL FROM, RCPT TO) or the `message` stage (the end
  of DATA), by its final word: continue, accept, reject, tempfail, replycode, discard.
- `hato_milter_actions_total{milter, action}`: the modifications it asked for at the end of
  the message, by libmilter's name: addheader, insheader, chgheader, replbody, chgfrom,
  addrcpt, delrcpt, quarantine.
- `hato_milter_unavailable_total{milter, stage, cause, action}`: it could not be asked
  (`cause`: `timeout`, or `error` for refused connections, closed ones and nonsense) and
  what was done: its default_action (`tempfail`, `accept`) at the message stage, `skipped`
  before DATA (the default action applies at the end of DATA).
- `hato_milter_seconds{milter, stage}`: how long each conversation took, failures included.

The checks count through the `MilterMetrics` protocol (miltercheck.py, milterearly.py);
`hato.server.metrics.MilterCounters` is the Prometheus one, on families `Metrics` builds with
all the others.
"""

from __future__ import annotations

import enum
from typing import Protocol

from hato.milter import MilterUnavailable
from hato.milter.protocol import (
    AddHeader,
    AddRecipient,
    ChangeFrom,
    ChangeHeader,
    DeleteRecipient,
    InsertHeader,
    Modification,
    Quarantine,
    ReplaceBody,
)

ACTIONS: dict[type[Modification], str] = {
    AddHeader: "addheader",
    InsertHeader: "insheader",
    ChangeHeader: "chgheader",
    ReplaceBody: "replbody",
    ChangeFrom: "chgfrom",
    AddRecipient: "addrcpt",
    DeleteRecipient: "delrcpt",
    Quarantine: "quarantine",
}


class Stage(enum.StrEnum):
    ENVELOPE = "envelope"  # before DATA: connect, HELO, MAIL, RCPT
    MESSAGE = "message"  # the end of DATA


class MilterMetrics(Protocol):
    """What the milter checks count."""

    def answered(self, milter: str, stage: Stage, reply: str, seconds: float) -> None: ...

    def changed(self, milter: str, changes: tuple[Modification, ...]) -> None: ...

    def unavailable(
        self, milter: str, stage: Stage, error: MilterUnavailable, action: str, seconds: float
    ) -> None: ...


class Uncounted:
    def answered(self, milter: str, stage: Stage, reply: str, seconds: float) -> None:
        pass

    def changed(self, milter: str, changes: tuple[Modification, ...]) -> None:
        pass

    def unavailable(
        self, milter: str, stage: Stage, error: MilterUnavailable, action: str, seconds: float
    ) -> None:
        pass


UNCOUNTED = Uncounted()


def cause(error: MilterUnavailable) -> str:
    """`timeout` when the milter was too slow (connect, a reply, the end of the message)."""
    return "timeout" if isinstance(error.__cause__, TimeoutError) else "error"
