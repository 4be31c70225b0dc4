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
`MilterCounters` is the Prometheus one, on the server's registry (server/metrics.py).
"""

from __future__ import annotations

import enum
from typing import Protocol

from prometheus_client import CollectorRegistry, Counter, Histogram

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

# A milter's answer at the end of the message may wait for a virus scan: up to minutes.
MILTER_BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 30.0, 300.0)
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


class MilterCounters:
    """The Prometheus side of `MilterMetrics`, registered on `registry`."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.calls = Counter(
            "hato_milter_calls",
            "Milter conversations that got an answer, by milter, stage and final reply",
            ["milter", "stage", "reply"],
            registry=registry,
        )
        self.actions = Counter(
            "hato_milter_actions",
            "Modifications milters asked for at the end of the message, by milter and action",
            ["milter", "action"],
            registry=registry,
        )
        self.failures = Counter(
            "hato_milter_unavailable",
            "Milter conversations that failed (timeout, error), by the action then taken",
            ["milter", "stage", "cause", "action"],
            registry=registry,
        )
        self.seconds = Histogram(
            "hato_milter_seconds",
            "Seconds one milter conversation took, by milter and stage",
            ["milter", "stage"],
            buckets=MILTER_BUCKETS,
            registry=registry,
        )

    def answered(self, milter: str, stage: Stage, reply: str, seconds: float) -> None:
        self.calls.labels(milter, stage.value, reply).inc()
        self.seconds.labels(milter, stage.value).observe(seconds)

    def changed(self, milter: str, changes: tuple[Modification, ...]) -> None:
        for change in changes:
            self.actions.labels(milter, ACTIONS[type(change)]).inc()

    def unavailable(
        self, milter: str, stage: Stage, error: MilterUnavailable, action: str, seconds: float
    ) -> None:
        self.failures.labels(milter, stage.value, cause(error), action).inc()
        self.seconds.labels(milter, stage.value).observe(seconds)
