"""The milter protocol, version 6 (Sendmail's libmilter, as Postfix speaks it), sans-IO.

Theory of operation. The MTA (we) and a milter exchange packets: a 4-octet network-order
length, then one command octet, then `length - 1` octets of data. We send commands
(`encode` and the `*_command` builders below: bytes out); the milter answers with replies,
which `ReplyReader.receive_data` takes in any chunking and `next_event` hands out whole
(bytes in, events out). No socket, no clock: the driver (client.py) does the I/O.

A conversation: SMFIC_OPTNEG (we offer version 6, the actions we can apply and the protocol
steps we can leave out; the milter answers with what it wants), then per connection
SMFIC_CONNECT and SMFIC_HELO, per message SMFIC_MAIL, SMFIC_RCPT (each), SMFIC_DATA, every
header field (SMFIC_HEADER), SMFIC_EOH, the body in chunks of at most 65535 octets
(SMFIC_BODY), SMFIC_BODYEOB; then SMFIC_QUIT (or SMFIC_ABORT to drop a message). Each may be
preceded by SMFIC_MACRO carrying the values of the macros that step sees ({j}, {i}, ...).
A step the milter asked us to skip (an SMFIP_NO* flag) is not sent; a step it said it does
not answer (SMFIP_NR_*) gets no reply. At SMFIC_BODYEOB the milter first sends its
modifications (add/insert/change a header field, envelope changes, a new body, quarantine),
then one final reply (accept, continue, discard, reject, tempfail or a reply code); it may
send SMFIR_PROGRESS any time to say it is still working.

Errors: a reply that cannot be parsed raises `MilterProtocolError` (the milter's fault);
nothing else escapes `ReplyReader`.
"""

from __future__ import annotations

import enum
import struct
from dataclasses import dataclass

VERSION = 6
MAX_BODY_CHUNK = 65535  # libmilter's MILTER_CHUNK_SIZE: one SMFIC_BODY at most
MAX_PACKET = 1024 * 1024 * 4  # a reply larger than this is nonsense (SMFIP_MDS_1M is 1 MiB)


class Command(bytes, enum.Enum):
    """SMFIC_* commands, MTA to milter."""

    ABORT = b"A"
    BODY = b"B"
    CONNECT = b"C"
    MACRO = b"D"
    BODYEOB = b"E"
    HELO = b"H"
    QUIT_NC = b"K"
    HEADER = b"L"
    MAIL = b"M"
    EOH = b"N"
    OPTNEG = b"O"
    QUIT = b"Q"
    RCPT = b"R"
    DATA = b"T"
    UNKNOWN = b"U"


class Action(enum.IntFlag):
    """SMFIF_*: the modifications a milter may ask for (negotiated)."""

    ADDHDRS = 0x01
    CHGBODY = 0x02
    ADDRCPT = 0x04
    DELRCPT = 0x08
    CHGHDRS = 0x10
    QUARANTINE = 0x20
    CHGFROM = 0x40
    ADDRCPT_PAR = 0x80
    SETSYMLIST = 0x100


class Step(enum.IntFlag):
    """SMFIP_*: protocol steps the milter does not want (NO*) or does not answer (NR_*)."""

    NOCONNECT = 0x01
    NOHELO = 0x02
    NOMAIL = 0x04
    NORCPT = 0x08
    NOBODY = 0x10
    NOHDRS = 0x20
    NOEOH = 0x40
    NR_HDR = 0x80
    NOUNKNOWN = 0x100
    NODATA = 0x200
    SKIP = 0x400
    RCPT_REJ = 0x800
    NR_CONN = 0x1000
    NR_HELO = 0x2000
    NR_MAIL = 0x4000
    NR_RCPT = 0x8000
    NR_DATA = 0x10000
    NR_UNKN = 0x20000
    NR_EOH = 0x40000
    NR_BODY = 0x80000
    HDR_LEADSPC = 0x100000


# What we apply (no SETSYMLIST: we send our fixed macro set) and which steps we can omit.
OUR_ACTIONS = (
    Action.ADDHDRS | Action.CHGBODY | Action.ADDRCPT | Action.DELRCPT | Action.CHGHDRS
    | Action.QUARANTINE | Action.CHGFROM | Action.ADDRCPT_PAR
)  # fmt: skip
OUR_STEPS = Step(0x1FFFFF) & ~Step.RCPT_REJ  # every NO*/NR_* and SKIP, HDR_LEADSPC

# The step each command is, for the NO* (not sent) and NR_* (no reply) flags.
_NOT_SENT: dict[Command, Step] = {
    Command.CONNECT: Step.NOCONNECT,
    Command.HELO: Step.NOHELO,
    Command.MAIL: Step.NOMAIL,
    Command.RCPT: Step.NORCPT,
    Command.DATA: Step.NODATA,
    Command.HEADER: Step.NOHDRS,
    Command.EOH: Step.NOEOH,
    Command.BODY: Step.NOBODY,
    Command.UNKNOWN: Step.NOUNKNOWN,
}
_NO_REPLY: dict[Command, Step] = {
    Command.CONNECT: Step.NR_CONN,
    Command.HELO: Step.NR_HELO,
    Command.MAIL: Step.NR_MAIL,
    Command.RCPT: Step.NR_RCPT,
    Command.DATA: Step.NR_DATA,
    Command.HEADER: Step.NR_HDR,
    Command.EOH: Step.NR_EOH,
    Command.BODY: Step.NR_BODY,
    Command.UNKNOWN: Step.NR_UNKN,
}
# Commands that never get a reply, whatever was negotiated.
_SILENT = frozenset({Command.MACRO, Command.ABORT, Command.QUIT, Command.QUIT_NC})


class MilterProtocolError(Exception):
    """The milter sent something that is not the milter protocol."""


@dataclass(frozen=True, slots=True)
class Negotiated:
    """What SMFIC_OPTNEG settled: the milter's version, the actions it may take (within ours)
    and the steps it left out or will not answer."""

    version: int
    actions: Action
    steps: Step

    def sends(self, command: Command) -> bool:
        """Whether `command` is sent at all (SMFIP_NO*)."""
        step = _NOT_SENT.get(command)
        return step is None or not self.steps & step

    def answers(self, command: Command) -> bool:
        """Whether the milter replies to `command` (SMFIP_NR_*; SMFIC_BODYEOB always)."""
        if command in _SILENT:
            return False
        step = _NO_REPLY.get(command)
        return step is None or not self.steps & step


# Replies, milter to MTA.
@dataclass(frozen=True, slots=True)
class Continue:  # SMFIR_CONTINUE 'c'
    pass


@dataclass(frozen=True, slots=True)
class Accept:  # SMFIR_ACCEPT 'a': accept the message, no more questions
    pass


@dataclass(frozen=True, slots=True)
class Reject:  # SMFIR_REJECT 'r'
    pass


@dataclass(frozen=True, slots=True)
class Tempfail:  # SMFIR_TEMPFAIL 't'
    pass


@dataclass(frozen=True, slots=True)
class Discard:  # SMFIR_DISCARD 'd': say 250, deliver nothing
    pass


@dataclass(frozen=True, slots=True)
class Skip:  # SMFIR_SKIP 's': send no more body chunks
    pass


@dataclass(frozen=True, slots=True)
class Progress:  # SMFIR_PROGRESS 'p': still working, restart the timeout
    pass


@dataclass(frozen=True, slots=True)
class ReplyCode:  # SMFIR_REPLYCODE 'y': "550 5.7.1 text"
    code: int
    text: str  # the rest of the line, enhanced code included


@dataclass(frozen=True, slots=True)
class AddHeader:  # SMFIR_ADDHEADER 'h'
    name: str
    value: str


@dataclass(frozen=True, slots=True)
class InsertHeader:  # SMFIR_INSHEADER 'i': at `index` (0 = on top)
    index: int
    name: str
    value: str


@dataclass(frozen=True, slots=True)
class ChangeHeader:  # SMFIR_CHGHEADER 'm': the index-th (from 1) field `name`; "" deletes it
    index: int
    name: str
    value: str


@dataclass(frozen=True, slots=True)
class ChangeFrom:  # SMFIR_CHGFROM 'e'
    address: str
    args: str


@dataclass(frozen=True, slots=True)
class AddRecipient:  # SMFIR_ADDRCPT '+' / SMFIR_ADDRCPT_PAR '2'
    address: str
    args: str


@dataclass(frozen=True, slots=True)
class DeleteRecipient:  # SMFIR_DELRCPT '-'
    address: str


@dataclass(frozen=True, slots=True)
class ReplaceBody:  # SMFIR_REPLBODY 'b': one piece of the new body (pieces concatenate)
    data: bytes


@dataclass(frozen=True, slots=True)
class Quarantine:  # SMFIR_QUARANTINE 'q'
    reason: str


@dataclass(frozen=True, slots=True)
class OptionsReply:  # SMFIC_OPTNEG 'O' from the milter
    negotiated: Negotiated


Final = Continue | Accept | Reject | Tempfail | Discard | Skip | ReplyCode
Modification = (
    AddHeader | InsertHeader | ChangeHeader | ChangeFrom | AddRecipient | DeleteRecipient
    | ReplaceBody | Quarantine
)  # fmt: skip
Event = Final | Modification | Progress | OptionsReply

_SIMPLE: dict[bytes, Event] = {
    b"c": Continue(),
    b"a": Accept(),
    b"r": Reject(),
    b"t": Tempfail(),
    b"d": Discard(),
    b"s": Skip(),
    b"p": Progress(),
}


def packet(command: Command, data: bytes = b"") -> bytes:
    """One packet: length (command octet included), command, data."""
    return struct.pack("!I", len(data) + 1) + command.value + data


def _z(*fields: str | bytes) -> bytes:
    """NUL-terminated strings (milter strings are octets; ours are UTF-8)."""
    return b"".join((f.encode() if isinstance(f, str) else f) + b"\0" for f in fields)


def optneg_command(actions: Action = OUR_ACTIONS, steps: Step = OUR_STEPS) -> bytes:
    return packet(Command.OPTNEG, struct.pack("!III", VERSION, actions, steps))


def macro_command(step: Command, macros: dict[str, str]) -> bytes:
    """SMFIC_MACRO: the macros `step` sees, sent just before it."""
    pairs = [part for name, value in macros.items() for part in (name, value)]
    return packet(Command.MACRO, step.value + _z(*pairs))


def connect_command(hostname: str, ip: str, port: int) -> bytes:
    """SMFIC_CONNECT: family '4' or '6' with port and address, 'U' when unknown."""
    if not ip:
        return packet(Command.CONNECT, _z(hostname) + b"U")
    family = b"6" if ":" in ip else b"4"
    return packet(Command.CONNECT, _z(hostname) + family + struct.pack("!H", port) + _z(ip))


def helo_command(name: str) -> bytes:
    return packet(Command.HELO, _z(name))


def mail_command(path: str, args: tuple[str, ...] = ()) -> bytes:
    """SMFIC_MAIL: "<address>" then each ESMTP parameter."""
    return packet(Command.MAIL, _z(path, *args))


def rcpt_command(path: str, args: tuple[str, ...] = ()) -> bytes:
    return packet(Command.RCPT, _z(path, *args))


def header_command(name: str | bytes, value: str | bytes) -> bytes:
    return packet(Command.HEADER, _z(name, value))


def body_commands(data: bytes) -> list[bytes]:
    """SMFIC_BODY packets of at most 65535 octets each."""
    return [
        packet(Command.BODY, data[i : i + MAX_BODY_CHUNK])
        for i in range(0, len(data), MAX_BODY_CHUNK)
    ]


def simple_command(command: Command) -> bytes:
    """DATA, EOH, BODYEOB, ABORT, QUIT, QUIT_NC: no data."""
    return packet(command)


class ReplyReader:
    """Bytes from the milter in, replies out (any chunking gives the same replies)."""

    def __init__(self, max_packet: int = MAX_PACKET) -> None:
        self._buffer = bytearray()
        self._max = max_packet

    def receive_data(self, data: bytes) -> None:
        self._buffer += data

    def next_event(self) -> Event | None:
        """The next whole reply, or None until more bytes come."""
        if len(self._buffer) < 4:
            return None
        (length,) = struct.unpack("!I", self._buffer[:4])
        if length < 1 or length > self._max:
            raise MilterProtocolError(f"packet length {length}")
        if len(self._buffer) < 4 + length:
            return None
        code = bytes(self._buffer[4:5])
        data = bytes(self._buffer[5 : 4 + length])
        del self._buffer[: 4 + length]
        return parse_reply(code, data)


def _strings(data: bytes, count: int, code: bytes) -> list[str]:
    """`count` NUL-terminated strings (a missing last NUL tolerated, as libmilter's peers do)."""
    parts = data.split(b"\0")
    if parts and parts[-1] == b"":
        parts.pop()
    if len(parts) < count:
        raise MilterProtocolError(f"reply {code!r}: {len(parts)} strings, {count} expected")
    return [p.decode("utf-8", "replace") for p in parts]


def _index(data: bytes, code: bytes) -> tuple[int, bytes]:
    if len(data) < 4:
        raise MilterProtocolError(f"reply {code!r}: no index")
    return struct.unpack("!I", data[:4])[0], data[4:]


def parse_reply(code: bytes, data: bytes) -> Event:
    """One reply from its command octet and data."""
    simple = _SIMPLE.get(code)
    if simple is not None:
        return simple
    if code == b"y":
        (line, *_) = _strings(data, 1, code)
        head, _, text = line.partition(" ")
        # RFC 5321 §4.2: a 3-digit code; a milter may only give a 4xx or 5xx.
        if len(head) != 3 or not head.isdigit() or head[0] not in "45":
            raise MilterProtocolError(f"reply code {line[:20]!r} is not 4xx or 5xx")
        return ReplyCode(int(head), text.strip())
    if code == b"h":
        name, value, *_ = _strings(data, 2, code)
        return AddHeader(name, value)
    if code in (b"i", b"m"):
        index, rest = _index(data, code)
        name, *others = _strings(rest, 1, code)
        value = others[0] if others else ""
        return (
            InsertHeader(index, name, value) if code == b"i" else ChangeHeader(index, name, value)
        )
    if code == b"e":
        address, *args = _strings(data, 1, code)
        return ChangeFrom(address, args[0] if args else "")
    if code in (b"+", b"2"):
        address, *args = _strings(data, 1, code)
        return AddRecipient(address, args[0] if args else "")
    if code == b"-":
        return DeleteRecipient(_strings(data, 1, code)[0])
    if code == b"b":
        return ReplaceBody(data)
    if code == b"q":
        reason = _strings(data, 0, code)
        return Quarantine(reason[0] if reason else "")
    if code == b"O":
        if len(data) < 12:
            raise MilterProtocolError("SMFIC_OPTNEG reply shorter than 12 octets")
        version, actions, steps = struct.unpack("!III", data[:12])
        if version < 2:
            raise MilterProtocolError(f"milter protocol version {version}")
        return OptionsReply(Negotiated(version, Action(actions & OUR_ACTIONS), Step(steps)))
    raise MilterProtocolError(f"unknown reply {code!r}")
