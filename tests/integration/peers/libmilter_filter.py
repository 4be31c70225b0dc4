"""A milter built on Sendmail's own libmilter (Debian's `python3-milter`, pymilter over
libmilter.so), run by the system python3: `python3 libmilter_filter.py PORT [CONNECT]`.

With CONNECT ("reject" or "tempfail") it refuses every connection at the connect step
(SMFIS_REJECT, SMFIS_TEMPFAIL); without it, it does not ask for that step at all.

It answers by the message's content, so one instance serves every test:
- RCPT TO a local part "refused": 550 5.1.1 at RCPT (smfi_setreply + SMFIS_REJECT);
- MAIL FROM a local part "tempfail": SMFIS_TEMPFAIL at MAIL;
- HELO/EHLO "refused.helo.example": 550 5.7.1 at HELO (smfi_setreply + SMFIS_REJECT);
- at the end of every other message: adds `X-Libmilter: seen`, inserts `X-Libmilter-Top` at
  index 0; and, when the body holds the word, CHANGE-SUBJECT changes Subject,
  DELETE-FIELD deletes the first `X-Delete-Me`, REPLACE-BODY replaces the body,
  QUARANTINE quarantines, ADD-RCPT adds other@dest.example, DEL-RCPT deletes
  someone@dest.example, CHG-FROM makes the sender <bounces@sender.example> with RET=HDRS
  and ENVID=milter+2Benv (and an unknown FOO=1, to be ignored), PAR-RCPT adds
  par@dest.example with NOTIFY=NEVER, DISCARD discards, REJECT-BODY rejects with 554 5.7.1,
  ECHO-SUBJECT adds `X-Libmilter-Subject` repeating the Subject (as a filter's report field
  repeats what it found in the message: spamass-milter's URIs, say), DOUBLE-BODY replaces
  the body by itself twice (libmilter sends it in pieces of at most 65535 octets),
  FROM-LIST changes From to <team@list.example> (as a mailing-list milter rewrites it) and
  FROM-NOKEY to <someone@nokey.example>.
"""

from __future__ import annotations

import sys

import Milter

CONTINUE: int = Milter.CONTINUE
TEMPFAIL: int = Milter.TEMPFAIL
REJECT: int = Milter.REJECT
DISCARD: int = Milter.DISCARD
ACCEPT: int = Milter.ACCEPT


class Filter(Milter.Base):  # type: ignore[misc]
    def __init__(self) -> None:
        self.seen = bytearray()
        self.subject = ""

    def hello(self, hostname: str) -> int:
        if hostname == "refused.helo.example":
            self.setreply("550", "5.7.1", "HELO refused by libmilter")
            return REJECT
        return CONTINUE

    def envfrom(self, mailfrom: str, *params: str) -> int:
        self.seen = bytearray()
        self.subject = ""
        if mailfrom.strip("<>").split("@")[0] == "tempfail":
            return TEMPFAIL
        return CONTINUE

    def envrcpt(self, to: str, *params: str) -> int:
        if to.strip("<>").split("@")[0] == "refused":
            self.setreply("550", "5.1.1", "No such user here")
            return REJECT
        return CONTINUE

    def header(self, name: str, value: str) -> int:
        if name.lower() == "subject":
            self.subject = value
        return CONTINUE

    def body(self, chunk: bytes) -> int:
        self.seen += chunk
        return CONTINUE

    def eom(self) -> int:
        text = bytes(self.seen)
        if b"REJECT-BODY" in text:
            self.setreply("554", "5.7.1", "Body refused by libmilter")
            return REJECT
        if b"DISCARD" in text:
            return DISCARD
        self.addheader("X-Libmilter", "seen")
        self.addheader("X-Libmilter-Top", "first", 0)
        if b"ECHO-SUBJECT" in text:
            self.addheader("X-Libmilter-Subject", self.subject)
        if b"CHANGE-SUBJECT" in text:
            self.chgheader("Subject", 1, "changed by libmilter")
        if b"FROM-LIST" in text:
            self.chgheader("From", 1, "Team <team@list.example>")
        if b"FROM-NOKEY" in text:
            self.chgheader("From", 1, "<someone@nokey.example>")
        if b"DELETE-FIELD" in text:
            self.chgheader("X-Delete-Me", 1, "")
        if b"REPLACE-BODY" in text:
            self.replacebody(b"replaced by libmilter\r\n")
        if b"DOUBLE-BODY" in text:
            self.replacebody(text + text)
        if b"ADD-RCPT" in text:
            self.addrcpt("<other@dest.example>")
        if b"DEL-RCPT" in text:
            self.delrcpt("<someone@dest.example>")
        if b"CHG-FROM" in text:
            self.chgfrom("<bounces@sender.example>", "RET=HDRS ENVID=milter+2Benv FOO=1")
        if b"PAR-RCPT" in text:
            self.addrcpt("<par@dest.example>", "NOTIFY=NEVER ORCPT=rfc822;owner+2Bpar@dest.example")
        if b"QUARANTINE" in text:
            self.quarantine("test quarantine")
        return ACCEPT


class ConnectFilter(Filter):
    """Filter, refusing every connection at SMFIC_CONNECT as argv[2] says."""

    def connect(self, hostname: str, family: int, hostaddr: object) -> int:
        return REJECT if sys.argv[2] == "reject" else TEMPFAIL


def main() -> None:
    Milter.factory = ConnectFilter if len(sys.argv) > 2 else Filter
    Milter.set_flags(
        Milter.ADDHDRS
        + Milter.CHGHDRS
        + Milter.CHGBODY
        + Milter.QUARANTINE
        + Milter.ADDRCPT
        + Milter.DELRCPT
        + Milter.CHGFROM
        + Milter.ADDRCPT_PAR
    )
    Milter.runmilter("hato-test", f"inet:{sys.argv[1]}@127.0.0.1", 60)


if __name__ == "__main__":
    main()
