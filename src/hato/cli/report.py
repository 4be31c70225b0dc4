"""``hato report``: read the DMARC aggregate and SMTP TLS reports others sent us and print who
sends as our domains, from where, failing what (docs/reports.md); and ``hato report send``:
have the running server send its own reports now.

    hato report FILE...           report files (.xml, .xml.gz, .zip, .json, .json.gz) or
                                  messages carrying them; a Maildir (or any directory): every
                                  message in it; no FILE or "-": standard input
    hato report --json FILE...    the same as JSON
    hato report send [--now]      send the reports due (with --now: everything up to now)

Exit codes: 0 read (some inputs may be listed as not read); 1 nothing could be read;
75 (EX_TEMPFAIL) `send` found no server answering.

Must not import anything of hato at module level but hato.cli.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from hato.cli.errors import CommandError

EX_TEMPFAIL = 75
SEND_TIMEOUT = 300.0  # DNS lookups and queueing for every domain with events


def _inputs(paths: list[str], limit: int) -> Iterator[tuple[str, bytes]]:
    if not paths or paths == ["-"]:
        yield "stdin", sys.stdin.buffer.read(limit + 1)
        return
    for text in paths:
        path = Path(text)
        if path.is_dir():
            folders = [path / "cur", path / "new"] if (path / "cur").is_dir() else [path]
            files = sorted(f for folder in folders for f in folder.iterdir() if f.is_file())
        else:
            files = [path]
        for file in files:
            try:
                with file.open("rb") as stream:
                    yield str(file), stream.read(limit + 1)
            except OSError as exc:
                raise CommandError(f"{file}: {exc.strerror or exc}") from None


def show(args: argparse.Namespace) -> int:
    from hato.reports.reading import MAX_REPORT_SIZE, Found, read_reports
    from hato.reports.summary import render_json, render_text

    total = Found()
    for name, data in _inputs(args.paths, MAX_REPORT_SIZE):
        if len(data) > MAX_REPORT_SIZE:
            total.errors.append(f"{name}: larger than {MAX_REPORT_SIZE} octets")
            continue
        found = read_reports(data, name)
        total.dmarc += found.dmarc
        total.tls += found.tls
        total.errors += found.errors
    print(render_json(total) if args.json else render_text(total), end="")
    return 0 if total.dmarc or total.tls or not total.errors else 1


def send(args: argparse.Namespace) -> int:
    from hato.cli.options import load
    from hato.cli.queue import SOCKET_NAME, ControlClient, ServerDown, check

    loaded = load(args)
    path = Path(loaded.settings.server.data_dir) / SOCKET_NAME
    try:
        with ControlClient(path, timeout=SEND_TIMEOUT) as client:
            result = check(client.request({"op": "reports.send", "now": bool(args.now)}))
    except ServerDown as exc:
        raise CommandError(f"no server answers on {exc}; start it first", EX_TEMPFAIL) from None
    except (OSError, ValueError) as exc:
        raise CommandError(f"{path}: {exc}") from None
    reports = result["reports"]
    for line in reports["sent"]:
        print(f"sent: {line}")
    for line in reports["skipped"]:
        print(f"skipped: {line}")
    if not reports["sent"] and not reports["skipped"]:
        print("nothing to report")
    return 0


def run(args: argparse.Namespace) -> int:
    if args.paths[:1] == ["send"]:
        extra = [p for p in args.paths[1:]]
        if extra:
            raise CommandError(f"hato report send takes no files: {' '.join(extra)}", 64)
        return send(args)
    if args.now:
        raise CommandError("--now belongs to `hato report send`", 64)
    return show(args)


def register(commands: Any) -> None:
    from hato.cli.options import with_config

    help_text = "summarise received DMARC/TLS reports; `hato report send` sends ours now"
    sub = commands.add_parser("report", help=help_text, description=help_text)
    sub.add_argument("paths", nargs="*", metavar="FILE", help="files, Maildirs, - (stdin)")
    sub.add_argument("--json", action="store_true", help="print JSON")
    sub.add_argument("--now", action="store_true", help="with send: report up to now")
    with_config(sub).set_defaults(handler=run)
