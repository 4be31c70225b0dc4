"""``hato spam learn spam|ham [FILE ...]``: teach rspamd's classifier what a user said is
spam or not (the "this is spam" / "not spam" of a mail client, through Dovecot's IMAPSieve
recipe in docs/operations.md, or an admin by hand).

Each message (a file, or stdin when no file is named) is posted to rspamd's controller
(`POST /learnspam` or `/learnham`, [rspamd] controller_url, with its password; --controller
and --password-file instead, for a Sieve pipe that may not read Hato's configuration). A file is
streamed from disk in chunks; stdin is read whole first (the request needs its length).
A message that is encrypted (RFC 1847 multipart/encrypted, RFC 8551 S/MIME enveloped data: a
user's mail Hato stored encrypted to their key, docs/encryption.md, or mail encrypted end to
end) is not posted and counts as done: its content cannot be read, and rspamd would learn
only the form every encrypted message shares, teaching it that encrypted mail is spam (or
ham). A message rspamd has already learned the same way counts as done; one the controller could
not take for a passing reason of its own (5xx) is posted again, up to five times. Exit 0 when
every message was learned, 1 when one could not be (rspamd down, refused, unreadable file).

Must not import anything of hato at module level but hato.cli.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from hato.cli.errors import EX_FAILURE, CommandError
from hato.cli.options import load

CHUNK = 64 * 1024
HEAD = 64 * 1024  # octets read to find the header section's Content-Type
# A controller's 5xx (its statfile busy with a scan: "database is locked") is asked again
# after these pauses (15 s in all: 3.5 s was not enough on a loaded machine, CI saw it);
# a refusal (4xx: already learned, too few tokens) is not.
RETRY_PAUSES = (0.5, 1.0, 2.0, 4.0, 8.0)


async def _file_chunks(path: Path) -> AsyncIterator[bytes]:
    with path.open("rb") as handle:
        while chunk := await asyncio.to_thread(handle.read, CHUNK):
            yield chunk


def _encrypted(data: bytes | None, path: Path | None) -> bool:
    """Whether the message's Content-Type says it is encrypted (module docstring)."""
    from hato.crypto.mime import encrypted_type, split_message

    if data is None:
        assert path is not None
        with path.open("rb") as handle:
            data = handle.read(HEAD)
    return encrypted_type(split_message(data[:HEAD])) is True


async def _learn_all(args: argparse.Namespace, client: Any) -> int:
    from hato.filters import RspamdUnavailable, chunks_of

    spam = args.kind == "spam"
    failures = 0
    sources: list[Path | None] = list(args.files) or [None]
    try:
        for path in sources:
            name = str(path) if path is not None else "stdin"
            try:
                data = sys.stdin.buffer.read() if path is None else None
                if await asyncio.to_thread(_encrypted, data, path):
                    print(f"{name}: encrypted, its content cannot be read: not learned")
                    continue
                for pause in (*RETRY_PAUSES, None):
                    if data is not None:
                        learned = await client.learn(spam, len(data), chunks_of(data))
                    else:
                        assert path is not None
                        learned = await client.learn(spam, path.stat().st_size, _file_chunks(path))
                    if not learned.temporary or pause is None:
                        break
                    await asyncio.sleep(pause)
            except OSError as exc:
                print(f"hato: {name}: cannot read: {exc.strerror or exc}", file=sys.stderr)
                failures += 1
                continue
            except RspamdUnavailable as exc:
                print(f"hato: {name}: rspamd did not learn it: {exc}", file=sys.stderr)
                failures += 1
                continue
            if learned.learned:
                print(f"{name}: learned as {args.kind}")
            elif "already learned" in learned.detail:
                print(f"{name}: already learned as {args.kind}")
            else:
                print(f"hato: {name}: rspamd refused: {learned.detail}", file=sys.stderr)
                failures += 1
    finally:
        await client.aclose()
    return EX_FAILURE if failures else 0


def learn(args: argparse.Namespace) -> int:
    loaded = load(args)
    from hato.boot.filters import rspamd_client
    from hato.config.filter_sections import RspamdSettings

    section = loaded.settings.rspamd or RspamdSettings.model_validate({})
    password = section.password
    if args.password_file is not None:
        try:
            password = args.password_file.read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise CommandError(f"{args.password_file}: cannot read: {exc.strerror}") from None
    changes: dict[str, object] = {"password": password}
    if args.controller is not None:
        from hato.config.filter_sections import parse_http_url

        try:
            changes["controller_url"] = parse_http_url(args.controller)
        except ValueError as exc:
            raise CommandError(f"--controller: {exc}") from None
    section = section.model_copy(update=changes)
    for path in args.files:
        if not path.is_file():
            raise CommandError(f"{path}: no such file")
    return asyncio.run(_learn_all(args, rspamd_client(section)))


def register(commands: Any) -> None:
    from hato.cli.options import with_config

    spam = commands.add_parser(
        "spam", help="teach rspamd spam and ham", description="teach rspamd spam and ham"
    )
    actions = spam.add_subparsers(dest="action", metavar="ACTION", required=True)
    help_text = "post messages to rspamd's controller as spam or ham (files, or stdin)"
    sub = with_config(actions.add_parser("learn", help=help_text, description=help_text))
    sub.set_defaults(handler=learn)
    sub.add_argument("kind", choices=("spam", "ham"), help="what the messages are")
    sub.add_argument("files", nargs="*", type=Path, metavar="FILE", help="message files")
    sub.add_argument(
        "--controller",
        metavar="URL",
        help="rspamd's controller (default: [rspamd] controller_url, else http://127.0.0.1:11334)",
    )
    sub.add_argument(
        "--password-file",
        type=Path,
        metavar="FILE",
        help="a file holding the controller's password (default: [rspamd] password)",
    )
