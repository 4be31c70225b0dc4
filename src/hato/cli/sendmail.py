"""``hato-sendmail``: the sendmail interface that cron, PHP's mail() and scripts call.

    hato-sendmail [-t] [-i|-oi] [-f ADDR] [-F NAME] [ADDRESS...]   < message
    hato-sendmail -bs        an SMTP dialog on stdin/stdout (no AUTH: a trusted local program)
    hato-sendmail -bp        the queue, like mailq (also when called as "mailq")

The message is read from stdin; LF line ends become CRLF; without -i a line holding only "."
ends it. Date, Message-ID and From are added when missing (the sender is -f, else the login
name of the uid, qualified with the server's first domain). With -t the recipients are taken
from To, Cc and Bcc (and any given on the command line), and Bcc is removed. Then the message
goes to the server's `submit` op on the control socket (hato.server.control). A control
character in -F, -f or -r (text of the From field it may add) is a usage error: no option
adds a header field.

Where the socket is: $HATO_CONTROL_SOCKET; else DATA_DIR/control.sock, DATA_DIR from [server]
data_dir of the file given by -C, $HATO_CONFIG, /etc/hato/hato.toml or ./hato.toml (the first
that exists), else $HATO_HOME or ./hato-data as `hato serve` has it; then /run/hato/submit.sock
(the socket any local user may use).

Exit codes follow sysexits.h: 0 queued; 64 EX_USAGE; 67 EX_NOUSER a recipient was refused
(nothing was queued); 69 EX_UNAVAILABLE the message was refused; 70 EX_SOFTWARE; 75 EX_TEMPFAIL
the server is down or said "try later" (nothing was queued).

Start-up time matters (one process per message): stdlib only, no argparse, no pydantic; the
email package only for -t, the SMTP core only for -bs.
"""

from __future__ import annotations

import os
import re
import socket
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, TYPE_CHECKING

from hato.cli.queue import ControlClient, ServerDown
from hato.cli.sendmail_site import Site, drop, locate, socket_candidates

if TYPE_CHECKING:
    from hato.model import Reply

EX_OK = 0
EX_USAGE = 64
EX_NOUSER = 67
EX_UNAVAILABLE = 69
EX_SOFTWARE = 70
EX_TEMPFAIL = 75
# Options that take a value, attached or as the next argument (sendmail 8 and Postfix).
_WITH_VALUE = frozenset("BCFfhLNOoRrVX")
_IGNORED = frozenset("GimnUv")  # i is -i (handled), the rest change nothing here
_HEADER = re.compile(rb"^[!-9;-~]+[ \t]*:")  # RFC 5322 §2.2 field name, then ":"
# RFC 5322 §2.2: a field body is printable characters and WSP, and CR and LF only fold it
# (§2.2.3); a control character in -F, -f or -r (which become the From field hato-sendmail
# adds) would end the field and start another of the caller's choosing: refused.
_CONTROL = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")


class UsageError(Exception):
    pass


@dataclass(slots=True)
class Options:
    mode: str = "m"  # -b: m deliver (default), s SMTP on stdin, p print the queue
    extract: bool = False  # -t
    dot_ends: bool = True  # cleared by -i / -oi
    sender: str | None = None  # -f / -r
    full_name: str | None = None  # -F
    config: str | None = None  # -C
    recipients: list[str] = field(default_factory=list)


def parse_args(argv: Sequence[str], prog: str = "sendmail") -> Options:
    """Sendmail's command line: bundled flags are not a thing, values attach or follow."""
    opts = Options()
    if os.path.basename(prog) == "mailq":
        opts.mode = "p"
    args = list(argv)
    while args:
        arg = args.pop(0)
        if arg == "--":
            opts.recipients.extend(args)
            break
        if not arg.startswith("-") or arg == "-":
            opts.recipients.append(arg)
            continue
        flag, value = arg[1], arg[2:]
        if flag in _WITH_VALUE and not value:
            if not args:
                raise UsageError(f"option -{flag} needs a value")
            value = args.pop(0)
        if flag == "b":
            if value not in ("m", "s", "p"):
                raise UsageError(f"-b{value}: not supported (use -bm, -bs or -bp)")
            opts.mode = value
        elif flag == "t":
            opts.extract = True
        elif flag == "i" or (flag == "o" and value == "i"):
            opts.dot_ends = False
        elif flag in ("f", "r"):
            opts.sender = _header_text(flag, value)
        elif flag == "F":
            opts.full_name = _header_text(flag, value)
        elif flag == "C":
            opts.config = value
        elif flag == "q":
            opts.mode = "q"  # process the queue: a flush
        elif flag not in _WITH_VALUE and flag not in _IGNORED:
            raise UsageError(f"-{flag}: unknown option")
        # -B8BITMIME, -oem, -odi, -odb, -N, -R, -V, -h, -L, -O, -X, -v: accepted, no effect.
    return opts


def _header_text(flag: str, value: str) -> str:
    """`value` of an option that may become header text, refused with a control character."""
    if _CONTROL.search(value):
        raise UsageError(f"-{flag}: a control character (CR, LF, ...) may not be in its value")
    return value


# ---- the message ----


def read_message(stream: IO[bytes], dot_ends: bool) -> bytes:
    """stdin to a CRLF message; a line of only "." ends it unless -i (sendmail's rule)."""
    lines = []
    for line in stream:
        line = line.rstrip(b"\r\n")
        if dot_ends and line == b".":
            break
        lines.append(line)
    return b"".join(line + b"\r\n" for line in lines)


def split_headers(message: bytes) -> tuple[list[bytes], bytes]:
    """The header fields (each with its folded lines, CRLF-ended) and the body."""
    if not _HEADER.match(message):
        return [], message.removeprefix(b"\r\n")
    head, sep, body = message.partition(b"\r\n\r\n")
    if not sep and not head.endswith(b"\r\n"):
        head, body = message, b""
    fields: list[bytes] = []
    for line in (head + b"\r\n").split(b"\r\n")[:-1]:
        if line[:1] in (b" ", b"\t") and fields:
            fields[-1] += line + b"\r\n"  # RFC 5322 §2.2.3: a folded line continues
        elif line:
            fields.append(line + b"\r\n")
    return fields, body


def _name(header: bytes) -> str:
    return header.split(b":", 1)[0].strip().decode("ascii", "replace").lower()


def _display_name(name: str) -> str:
    # RFC 5322 §3.2.5: a phrase with specials must be a quoted-string.
    if re.fullmatch(r"[\w !#$%&'*+/=?^`{|}~-]*", name):
        return name
    return '"' + name.replace("\\", "\\\\").replace('"', '\\"') + '"'


@dataclass(frozen=True, slots=True)
class Prepared:
    message: bytes
    sender: str
    recipients: list[str]


def prepare(
    message: bytes, opts: Options, *, user: str, gecos: str, domain: str, hostname: str
) -> Prepared:
    headers, body = split_headers(message)
    names = {_name(h) for h in headers}
    recipients = list(opts.recipients)
    if opts.extract:
        import email.utils  # only for -t: start-up time

        fields = [
            h.split(b":", 1)[1].decode("utf-8", "replace")
            for h in headers
            if _name(h) in ("to", "cc", "bcc")
        ]
        recipients += [addr for _, addr in email.utils.getaddresses(fields) if addr]
        # RFC 5322 §3.6.3: Bcc recipients get the message without the field.
        headers = [h for h in headers if _name(h) != "bcc"]
    sender = opts.sender if opts.sender is not None else user
    added: list[bytes] = []
    # RFC 5322 §3.6: orig-date and from are required; §3.6.4 Message-ID SHOULD be present.
    if "from" not in names:
        address = sender if "@" in sender or not sender else f"{sender}@{domain}"
        name = opts.full_name if opts.full_name is not None else gecos
        if _CONTROL.search(name):
            name = ""  # a GECOS field no From may carry (-F is refused so: parse_args)
        shown = f"{_display_name(name)} <{address}>" if name else address
        added.append(f"From: {shown}\r\n".encode())
    if "date" not in names:
        added.append(f"Date: {_rfc5322_date(time.time())}\r\n".encode())
    if "message-id" not in names:
        token = f"{time.time_ns():x}.{os.getpid()}.{os.urandom(6).hex()}"
        added.append(f"Message-ID: <{token}@{hostname}>\r\n".encode())
    return Prepared(b"".join(headers + added) + b"\r\n" + body, sender, recipients)


def _rfc5322_date(when: float) -> str:
    """RFC 5322 §3.3 date-time in local time with its offset (no locale, no email import)."""
    t = time.localtime(when)
    days, months = "Mon Tue Wed Thu Fri Sat Sun", "Jan Feb Mar Apr May Jun Jul Aug Sep Oct Nov Dec"
    off = t.tm_gmtoff // 60
    zone = f"{'+' if off >= 0 else '-'}{abs(off) // 60:02d}{abs(off) % 60:02d}"
    return (
        f"{days.split()[t.tm_wday]}, {t.tm_mday:02d} {months.split()[t.tm_mon - 1]} {t.tm_year} "
        f"{t.tm_hour:02d}:{t.tm_min:02d}:{t.tm_sec:02d} {zone}"
    )


# ---- the server ----


class NotAllowed(ServerDown):
    """No socket answers, and one refused this user (the server may well be running)."""


def connect(candidates: Sequence[Path]) -> ControlClient:
    """The first socket that answers (a 0600 control socket refuses other users: go on)."""
    problems = []
    denied = False
    for path in candidates:
        try:
            return ControlClient(path)
        except ServerDown as exc:
            problems.append(str(exc))
        except PermissionError as exc:
            problems.append(f"{path}: {exc.strerror}")
            denied = True
    raise (NotAllowed if denied else ServerDown)("; ".join(problems))


def submit(client: ControlClient, prepared: Prepared, err: IO[str]) -> int:
    answer = client.request(
        {
            "op": "submit",
            "from": prepared.sender,
            "rcpt": prepared.recipients,
            "size": len(prepared.message),
        },
        prepared.message,
    )
    if answer.get("ok"):
        return EX_OK
    for rcpt, reply in (answer.get("refused") or {}).items():
        print(f"hato-sendmail: {rcpt}: {reply}", file=err)
    print(f"hato-sendmail: not sent: {answer.get('error')}", file=err)
    if answer.get("refused"):
        return EX_NOUSER
    if answer.get("temporary"):
        return EX_TEMPFAIL
    return EX_UNAVAILABLE if "reply" in answer else EX_SOFTWARE


def _login() -> tuple[str, str]:
    import pwd

    try:
        entry = pwd.getpwuid(os.getuid())
    except KeyError:
        return str(os.getuid()), ""
    return entry.pw_name, entry.pw_gecos.split(",", 1)[0]


def run(
    opts: Options, stdin: IO[bytes], stdout: IO[bytes], err: IO[str], env: dict[str, str]
) -> int:
    cwd = Path.cwd()
    site = locate(opts.config or env.get("HATO_CONFIG"), env, cwd)
    candidates = socket_candidates(site, env)
    if opts.mode == "m" and not opts.extract and not opts.recipients:
        raise UsageError("no recipients (give addresses, or -t to read them from the message)")
    message = read_message(stdin, opts.dot_ends) if opts.mode == "m" else b""
    try:
        client = connect(candidates)
    except ServerDown as exc:
        if opts.mode == "p":
            return _offline_mailq(site.data_dir, err)
        if opts.mode == "m" and _dropped(site, opts, message):
            return EX_OK  # in the maildrop: the server takes it at its start
        if isinstance(exc, NotAllowed):  # "not running" misled: it ran, for root only
            print(
                f"hato-sendmail: cannot reach the mail server as {_login()[0]} ({exc}); "
                "the control socket is for root and the server's user: the admin sets "
                "[server] submit_socket for every local user (docs/operations.md); not sent",
                file=err,
            )
        else:
            print(f"hato-sendmail: the mail server is not running ({exc}); not sent", file=err)
        return EX_TEMPFAIL
    with client:
        hello = client.request({"op": "hello"})
        if opts.mode == "p" or opts.mode == "q":
            return _mailq(client, opts.mode, err)
        user, gecos = _login()
        info = {"user": user, "gecos": gecos, "domain": hello["domain"]}
        if opts.mode == "s":
            return smtp_dialog(client, hello["hostname"], stdin, stdout, info)
        prepared = prepare(message, opts, hostname=hello["hostname"], **info)
        if not prepared.recipients:
            print("hato-sendmail: no recipients found in the message (-t)", file=err)
            return EX_USAGE
        return submit(client, prepared, err)


def _dropped(site: Site, opts: Options, message: bytes) -> bool:
    """Leave the message in the server's maildrop (server down); False if there is none."""
    if site.domain is None:
        return False
    user, gecos = _login()
    hostname = site.hostname or socket.gethostname()
    prepared = prepare(message, opts, user=user, gecos=gecos, domain=site.domain, hostname=hostname)
    if not prepared.recipients:
        return False
    return drop(site, prepared.sender, prepared.recipients, prepared.message) is not None


def smtp_dialog(
    client: ControlClient, hostname: str, stdin: IO[bytes], stdout: IO[bytes], info: dict[str, str]
) -> int:
    """-bs: Hato's own SMTP core answers on stdin/stdout; each message goes to `submit`.

    A local pipe, not the network: bare LF line ends are taken as CRLF (scripts write them);
    there is no STARTTLS or AUTH (the caller is a local program, trusted like -bm)."""
    from hato.smtp import (
        NEED_DATA,
        PAUSED,
        BodyChunk,
        CloseConnection,
        ConnectionLost,
        Hello,
        MailFrom,
        MessageAborted,
        MessageEnd,
        RcptTo,
        ServerConnection,
        ServerSettings,
        TransactionReset,
    )

    conn = ServerConnection(ServerSettings(hostname=hostname))
    conn.greet()
    sender: str | None = None
    rcpts: list[str] = []
    body = bytearray()
    last = b""
    while True:
        event = conn.next_event()
        if event is NEED_DATA:
            stdout.write(conn.data_to_send())
            stdout.flush()
            data = os.read(stdin.fileno(), 65536)
            # A CR ending the last read and an LF starting this one are one CRLF.
            fixed = re.sub(rb"(?<!\r)\n", b"\r\n", last[-1:] + data)[len(last[-1:]) :]
            last = data or last
            conn.receive_data(fixed)
        elif event is PAUSED:
            raise RuntimeError("the SMTP core waits for an answer we do not know")
        elif isinstance(event, Hello | RcptTo):
            if isinstance(event, RcptTo):
                rcpts.append(str(event.address))
            conn.accept()
        elif isinstance(event, MailFrom):
            sender, rcpts = ("" if event.path is None else str(event.path)), []
            body.clear()
            conn.accept()
        elif isinstance(event, BodyChunk):
            body += event.data
        elif isinstance(event, MessageEnd):
            opts = Options(sender=sender or "", recipients=rcpts)
            prepared = prepare(bytes(body), opts, hostname=hostname, **info)
            body.clear()
            answer = client.request(
                {
                    "op": "submit",
                    "from": prepared.sender,
                    "rcpt": rcpts,
                    "size": len(prepared.message),
                },
                prepared.message,
            )
            if answer.get("ok"):
                conn.accept(f"Ok: queued as {answer['id']}")
            else:
                conn.reply(_reply(str(answer.get("reply") or "451 4.3.0 local error")))
        elif isinstance(event, MessageAborted | TransactionReset):
            body.clear()
        elif isinstance(event, CloseConnection | ConnectionLost):
            stdout.write(conn.data_to_send())
            stdout.flush()
            return EX_OK


def _reply(text: str) -> Reply:
    """A Reply from its text form "550 5.1.1 words" (as the control socket sends it)."""
    from hato.model import Reply

    code, _, rest = text.partition(" ")
    enhanced, _, words = rest.partition(" ")
    if not re.fullmatch(r"[245]\.\d{1,3}\.\d{1,3}", enhanced):
        enhanced, words = "", rest
    return Reply(int(code), enhanced or None, words)


def _mailq(client: ControlClient, mode: str, err: IO[str]) -> int:
    from hato.cli.queue import print_list, print_result

    if mode == "q":
        answer = client.request({"op": "queue.flush"})
        if answer.get("ok"):
            print_result(answer["result"], sys.stdout)
    else:
        answer = client.request({"op": "queue.list"})
        if answer.get("ok"):
            print_list(answer["rows"], sys.stdout)
    if not answer.get("ok"):
        print(f"hato-sendmail: {answer.get('error')}", file=err)
        return EX_UNAVAILABLE
    return EX_OK


def _offline_mailq(data: Path, err: IO[str]) -> int:
    from hato.cli.queue import print_list
    from hato.queue import QueueError
    from hato.queue.admin import Selector, as_json
    from hato.queue.offline import OfflineAdmin

    try:
        admin = OfflineAdmin(data / "queue", writable=False, log=lambda _: None)
    except (OSError, QueueError) as exc:
        print(f"hato-sendmail: the mail server is not running; {exc}", file=err)
        return EX_TEMPFAIL
    try:
        print_list([as_json(r) for r in admin.list(Selector(), time.time())], sys.stdout)
    finally:
        admin.close()
    return EX_OK


def main(argv: Sequence[str] | None = None) -> int:
    args = sys.argv if argv is None else ["sendmail", *argv]
    try:
        opts = parse_args(args[1:], args[0])
        return run(opts, sys.stdin.buffer, sys.stdout.buffer, sys.stderr, dict(os.environ))
    except UsageError as exc:
        print(f"hato-sendmail: {exc}", file=sys.stderr)
        return EX_USAGE
    except (OSError, ValueError, KeyError) as exc:
        print(f"hato-sendmail: {type(exc).__name__}: {exc}; not sent", file=sys.stderr)
        return EX_TEMPFAIL if isinstance(exc, OSError) else EX_SOFTWARE
    except KeyboardInterrupt:
        return EX_TEMPFAIL


if __name__ == "__main__":
    sys.exit(main())
