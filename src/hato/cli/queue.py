"""``hato queue list|show|flush|hold|release|delete|bounce``, and the control-socket client.

With the server running, every command is a request on DATA_DIR/control.sock (see
hato.server.control). With it stopped, list and show read the SQLite store read-only, and the
other commands change it directly while holding DATA_DIR/hato.lock (so no server can start
meanwhile) and log each change (`admin-hold` ...) on stderr, as the server would in its log
(hato.cli.audit).

Must not import anything of hato at module level but hato.cli (hato-sendmail imports the
client from here and must start fast); the queue room is imported only for offline work.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import json
import socket
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from hato.cli.errors import EX_FAILURE, CommandError

if TYPE_CHECKING:
    from hato.config import Settings

SOCKET_NAME = "control.sock"
EX_TEMPFAIL = 75  # sysexits.h


class ServerDown(Exception):
    """Nothing answers on the control socket."""


class ControlClient:
    """One connection to the control socket; JSON lines (see hato.server.control)."""

    def __init__(self, path: str | Path, timeout: float = 60.0) -> None:
        self.path = str(path)
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._sock.settimeout(timeout)
        try:
            self._sock.connect(self.path)
        except (FileNotFoundError, ConnectionRefusedError) as exc:
            self._sock.close()
            raise ServerDown(f"{self.path}: {exc.strerror}") from None
        except PermissionError as exc:  # the 0600 socket, to another user: name the file
            self._sock.close()
            raise PermissionError(exc.errno, exc.strerror, self.path) from None
        except OSError:
            self._sock.close()
            raise
        self._file = self._sock.makefile("rb")

    def request(self, request: dict[str, Any], payload: bytes = b"") -> dict[str, Any]:
        line = json.dumps(request, separators=(",", ":")).encode() + b"\n"
        self._sock.sendall(line + payload)
        answer = self._file.readline()
        if not answer:
            raise ConnectionResetError(f"{self.path}: the server closed the connection")
        response = json.loads(answer)
        if not isinstance(response, dict):
            raise ValueError("the server's answer is not a JSON object")
        return response

    def close(self) -> None:
        self._file.close()
        self._sock.close()

    def __enter__(self) -> ControlClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def check(response: dict[str, Any]) -> dict[str, Any]:
    if not response.get("ok"):
        raise CommandError(str(response.get("error", "the server refused the request")))
    return response


# ---- formatting (shared with hato-sendmail -bp) ----


def _when(epoch: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(epoch))


def print_list(rows: Sequence[dict[str, Any]], out: IO[str]) -> None:
    """mailq-like: one line per recipient, the reason on the line below."""
    if not rows:
        print("Mail queue is empty", file=out)
        return
    print(
        f"{'QUEUE ID':<14} {'ARRIVAL':<19} {'SIZE':>8} {'STATE':<7} {'TRIES':>5} "
        f"{'NEXT TRY':<19} SENDER -> RECIPIENT",
        file=out,
    )
    ids: dict[str, int] = {}
    for row in rows:
        ids[row["queue_id"]] = row["size"]
        busy = "*" if row["busy"] else ""
        print(
            f"{row['queue_id'] + busy:<14} {_when(row['received_at'])} {row['size']:>8} "
            f"{row['status']:<7} {row['attempts']:>5} {_when(row['next_attempt'])} "
            f"{row['sender']} -> <{row['recipient']}>",
            file=out,
        )
        print(f"{'':<14} {row['why']}", file=out)
    kib = sum(ids.values()) // 1024
    print(f"-- {kib} Kbytes in {len(ids)} message(s), {len(rows)} recipient(s).", file=out)


def print_show(message: dict[str, Any], out: IO[str]) -> None:
    params = " ".join(k if v is None else f"{k}={v}" for k, v in message["params"].items())
    print(f"queue id:  {message['queue_id']}", file=out)
    print(f"sender:    {message['sender']}", file=out)
    print(f"arrival:   {_when(message['received_at'])}", file=out)
    print(f"size:      {message['size']} octets (body: {message['body']})", file=out)
    if params:
        print(f"params:    {params}", file=out)
    print("recipients:", file=out)
    for r in message["recipients"]:
        shown = f"<{r['recipient']}>"
        if r["original"] != r["recipient"]:
            shown += f" (for <{r['original']}>)"
        print(f"  {shown}: {r['status']}, {r['attempts']} attempt(s)", file=out)
        if r["last_reply"]:
            print(f"    last reply: {r['last_reply']}", file=out)
        print(f"    why: {r['why']}", file=out)
    print("headers:", file=out)
    for line in message["headers"].rstrip("\r\n").split("\r\n"):
        print(f"  {line}", file=out)


def print_result(result: dict[str, Any], out: IO[str]) -> None:
    done = {"hold": "held", "release": "released", "flush": "flushed", "delete": "deleted"}
    verb = done.get(result["action"], "bounced")
    print(f"{verb} {result['rows']} recipient(s) of {len(result['messages'])} message(s)", file=out)
    if result["busy"]:
        print(f"{result['busy']} recipient(s) being delivered right now: left alone", file=out)
    for queue_id in result["removed"]:
        print(f"{queue_id}: removed from the queue", file=out)
    for note in result["skipped"]:
        print(note, file=out)


# ---- the commands ----


def _data_dir(args: argparse.Namespace) -> Path:
    from hato.cli.options import load

    return Path(load(args).settings.server.data_dir)


@contextlib.contextmanager
def _connect(data_dir: Path) -> Iterator[ControlClient | None]:
    try:
        client = ControlClient(data_dir / SOCKET_NAME)
    except ServerDown:
        yield None
        return
    with client:
        yield client


@contextlib.contextmanager
def _offline(
    data_dir: Path,
    *,
    writable: bool,
    log: Callable[[str], None] = lambda _: None,
    settings: Settings | None = None,
) -> Iterator[Any]:
    """The store without a server: for writing, only while no server holds hato.lock;
    `log`: where its changes are logged (hato.cli.audit: the command's stderr); `settings`:
    the configuration, whose address book a DSN's recipient is resolved by."""
    from hato.queue.offline import OfflineAdmin

    keys: list[Any] = []

    def committer(queue: Any) -> Any:
        """A DSN to a user with an imported key is stored encrypted, as the server's."""
        from hato.crypto import KEYS_DB, KeyStore
        from hato.intake.notices import KeyedCommitter
        from hato.model import SystemClock
        from hato.queue import PlainCommit

        if not (data_dir / KEYS_DB).exists():
            return PlainCommit(queue)
        keys.append(KeyStore(data_dir / KEYS_DB))
        if settings is None:
            return KeyedCommitter(queue, keys[-1], SystemClock())
        from hato.cli.checks import resolver_of

        # As the server's: a notice to an alias goes to the mailboxes behind it, keyed as they are.
        return KeyedCommitter(
            queue,
            keys[-1],
            SystemClock(),
            resolver_of(settings),
            hostname=settings.server.hostname,
        )

    from hato.server.datadir import open_lock

    # Not through a link: `hato queue list` runs as root in the server user's directory.
    try:
        lock = open_lock(data_dir / "hato.lock")
    except OSError as exc:
        raise CommandError(f"{data_dir / 'hato.lock'}: {exc.strerror or exc}") from None
    with lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            if writable:
                raise CommandError(
                    f"a hato server holds {data_dir} but its control socket does not answer; "
                    "retry in a moment, or stop the server",
                    EX_TEMPFAIL,
                ) from None
        try:
            admin = OfflineAdmin(
                data_dir / "queue", writable=writable, log=log, committer=committer
            )
        except (FileNotFoundError, OSError) as exc:
            raise CommandError(f"{data_dir / 'queue'}: {exc}") from None
        try:
            yield admin
        finally:
            admin.close()
            for store in keys:
                store.close()


def _selector(args: argparse.Namespace) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if getattr(args, "domain", None):
        out["domain"] = args.domain
    if getattr(args, "sender", None) is not None:
        out["sender"] = args.sender
    return out


def list_queue(args: argparse.Namespace) -> int:
    data_dir = _data_dir(args)
    request = {"op": "queue.list", **_selector(args)}
    with _connect(data_dir) as client:
        if client is not None:
            rows = check(client.request(request))["rows"]
        else:
            from hato.queue.admin import Selector, as_json

            with _offline(data_dir, writable=False) as admin:
                rows = [as_json(r) for r in admin.list(Selector.from_dict(request), time.time())]
    if args.json:
        json.dump(rows, sys.stdout, indent=1)
        print()
    else:
        print_list(rows, sys.stdout)
    return 0


def show(args: argparse.Namespace) -> int:
    data_dir = _data_dir(args)
    notes: list[str] = []  # from the server: e.g. port 25 blocked (delivery/egress.py)
    with _connect(data_dir) as client:
        if client is not None:
            answer = check(client.request({"op": "queue.show", "id": args.id}))
            message, notes = answer["message"], answer.get("notes", [])
        else:
            from hato.queue.admin import as_json

            with _offline(data_dir, writable=False) as admin:
                detail = admin.show(args.id, time.time())
                if detail is None:
                    raise CommandError(f"{args.id}: no such message in the queue")
                message = as_json(detail)
    if args.json:
        json.dump(message, sys.stdout, indent=1)
        print()
    else:
        print_show(message, sys.stdout)
        for note in notes:
            print(f"note: {note}")
    return 0


def change(args: argparse.Namespace) -> int:
    """hold, release, flush, delete, bounce: by ids, ALL, --domain or --sender."""
    action: str = args.action
    selector = _selector(args)
    ids = [i for i in args.ids if i != "ALL"]
    every = "ALL" in args.ids
    if ids and (selector or every):
        raise CommandError("give queue ids, or ALL, or --domain/--sender, not several", 2)
    if not ids and not selector and not every and action != "flush":
        raise CommandError(f"hato queue {action}: give queue ids, ALL, --domain or --sender", 2)
    requests = [{"id": i} for i in ids] or [{**selector, "all": True} if every else selector]
    from hato.cli.datadir import data_dir_of
    from hato.cli.options import load
    from hato.cli.stderrlog import stderr_log

    loaded = load(args)
    data_dir = data_dir_of(loaded, write=False)
    failed = 0
    with _connect(data_dir) as client:
        for request in requests:
            if client is not None:
                answer = client.request({"op": f"queue.{action}", **request})
                if not answer.get("ok"):
                    print(f"hato: {answer.get('error')}", file=sys.stderr)
                    failed += 1
                    continue
                result = answer["result"]
            else:
                data_dir_of(loaded)  # the store is written as the server's user
                result = _change_offline(
                    data_dir, action, request, stderr_log(loaded), loaded.settings
                )
            if request.get("id") and not result["rows"] and not result["busy"]:
                print(f"hato: {request['id']}: no recipient to {action}", file=sys.stderr)
                failed += 1
            print_result(result, sys.stdout)
    if client is None and action in ("flush", "release"):
        print("the server is stopped: the mail is due when it starts", file=sys.stdout)
    return EX_FAILURE if failed else 0


def _change_offline(
    data_dir: Path,
    action: str,
    request: dict[str, Any],
    log: Callable[[str], None],
    settings: Settings | None = None,
) -> dict[str, Any]:
    from hato.queue.admin import Action, Selector, as_json

    with _offline(data_dir, writable=True, log=log, settings=settings) as admin:
        result = admin.apply(Action(action), Selector.from_dict(request), time.time())
    return as_json(result)


def register(commands: Any) -> None:
    """Add ``hato queue ...`` to the ``hato`` parser's subcommands."""
    from hato.cli.options import with_config

    parser = commands.add_parser("queue", help="see and steer the mail queue")
    actions = parser.add_subparsers(dest="queue_command", metavar="ACTION", required=True)
    lst = with_config(actions.add_parser("list", help="the queued recipients (like mailq)"))
    lst.add_argument("--json", action="store_true", help="JSON instead of a table")
    lst.add_argument("--domain", help="only recipients of this domain")
    lst.add_argument("--sender", help="only messages from this envelope sender")
    lst.set_defaults(handler=list_queue)
    sh = with_config(actions.add_parser("show", help="one message and why it is still queued"))
    sh.add_argument("id", metavar="ID")
    sh.add_argument("--json", action="store_true", help="JSON instead of text")
    sh.set_defaults(handler=show)
    for name, help_text in (
        ("flush", "try now (all deferred mail without arguments)"),
        ("hold", "keep queued but do not try"),
        ("release", "undo hold"),
        ("delete", "remove without a bounce"),
        ("bounce", "give up and return to the sender"),
    ):
        sub = with_config(actions.add_parser(name, help=help_text, description=help_text))
        sub.add_argument("ids", nargs="*", metavar="ID", help="queue ids, or ALL")
        sub.add_argument("--domain", help="the recipients of this domain")
        sub.add_argument("--sender", help="the messages from this envelope sender")
        sub.set_defaults(handler=change, action=name)
