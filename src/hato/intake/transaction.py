"""The transaction the pipeline works on: who sends, to whom (each recipient with the address
it was given as and its DSN request), and what its acceptance has reserved so far.

One value instead of the parallel lists a session kept: the RCPT steps (intake/recipients.py)
add to it, the end-of-message steps (intake/message.py) read it; every door (the SMTP session,
local submission, the server's own notices) fills the same fields.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from hato.model import Address, RecipientDsn, ReversePath
from hato.policy import Reservation

NO_DSN = RecipientDsn()  # no NOTIFY/ORCPT given: RFC 3461 defaults apply


@dataclass(slots=True)
class Transaction:
    """One message's envelope as it is accepted, step by step (mutable while it is built)."""

    mail_from: ReversePath
    params: dict[str, str | None] = field(default_factory=dict)  # MAIL FROM's ESMTP parameters
    user: Address | None = None  # the authenticated account (SMTP AUTH), or None
    local: bool = False  # from a program on this machine: trusted to relay as `user` is
    smtputf8: bool = False  # RFC 6531 §3.4: SMTPUTF8 was given
    # (deliver-to, as given in RCPT TO): aliases expand to several rows, each once.
    recipients: list[tuple[Address, Address]] = field(default_factory=list)
    dsn: dict[Address, RecipientDsn] = field(default_factory=dict)  # RFC 3461, per deliver-to
    originals: list[Address] = field(default_factory=list)  # every accepted RCPT TO, in order
    keyed: bool = False  # a recipient has a key: received into a sealed scratch file (issue 6)
    quota: Reservation | None = None  # the sending-limit reservation, settled by the answer

    def add(self, targets: tuple[Address, ...], original: Address, dsn: RecipientDsn) -> None:
        """Rows for `targets` (the resolution of `original`), each destination once."""
        for dest in targets:
            # `dsn` has a key for every destination added: no set rebuilt per RCPT (100
            # recipients made 5,050 set insertions a message).
            if dest not in self.dsn:
                self.recipients.append((dest, original))
                self.dsn[dest] = dsn
        self.originals.append(original)

    def dests(self) -> list[Address]:
        return [dest for dest, _ in self.recipients]

    def rows(self, dests: tuple[Address, ...]) -> list[tuple[Address, Address, RecipientDsn]]:
        """Queue rows for `dests`: deliver-to, original, DSN request."""
        original_of = dict(self.recipients)
        return [(d, original_of.get(d, d), self.dsn.get(d, NO_DSN)) for d in dests]
