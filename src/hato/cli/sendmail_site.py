"""Where hato-sendmail finds the server, and the maildrop it leaves mail in when it is down.

Where: $HATO_CONTROL_SOCKET; else the configuration (-C FILE, $HATO_CONFIG, /etc/hato/hato.toml
or ./hato.toml, the first that exists) gives the data directory (``[server] data_dir``; without
one $HATO_HOME, else ./hato-data, as `hato serve` has it), whose control.sock is tried first,
then ``[server] submit_socket`` (default /run/hato/submit.sock). A configuration or data
directory found through the current directory is used only when it belongs to root or to the
user running hato-sendmail: another user's ./hato.toml could send the mail anywhere.

The maildrop (as Postfix's postdrop): DATA_DIR/maildrop, made by the server mode 1733 (anyone
may create a file there, no one but the server may list or read the directory). A message is
written to ``.NAME`` (mode 0644; the name is random and the directory cannot be listed), synced,
and renamed to ``NAME``; the server picks it up at its start and while running, with the checks
of a live submission, and takes the submitting user from the file's owner (server.maildrop).

Start-up time matters (one process per message): stdlib only.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from pathlib import Path

PUBLIC_SOCKET = "/run/hato/submit.sock"
SYSTEM_CONFIG = "/etc/hato/hato.toml"
MAILDROP = "maildrop"


@dataclass(frozen=True, slots=True)
class Site:
    data_dir: Path
    submit_socket: Path
    domain: str | None  # the first [[domain]], for -f-less senders when the server is down
    hostname: str | None
    guessed: bool = False  # data_dir is ./hato-data, named by nobody: trusted only if ours


def _ours(path: Path) -> bool:
    """Whether `path` belongs to root or to us (and is not a symlink to someone else's)."""
    try:
        return path.lstat().st_uid in (0, os.getuid())
    except OSError:
        return False


def locate(config: str | None, env: dict[str, str], cwd: Path) -> Site:
    """The server as the configuration names it (see the module docstring)."""
    raw: dict[str, object] = {}
    base = cwd
    guessed = False
    for candidate, explicit in ((config, True), (SYSTEM_CONFIG, True), ("hato.toml", False)):
        if candidate is None:
            continue
        file = Path(os.path.normpath(cwd / candidate))
        if not file.is_file():
            continue
        if not explicit and not _ours(file):
            continue  # another user's ./hato.toml: not trusted
        import tomllib

        try:
            raw = tomllib.loads(file.read_text("utf-8-sig"))
        except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError):
            raw = {}
        base = file.parent
        break
    server = raw.get("server") if isinstance(raw.get("server"), dict) else {}
    assert isinstance(server, dict)
    if isinstance(server.get("data_dir"), str):
        data_dir = Path(os.path.normpath(base / server["data_dir"]))
    else:
        home = env.get("HATO_HOME", "")
        data_dir = Path(os.path.normpath(cwd / (Path(home).expanduser() if home else "hato-data")))
        guessed = not home
    submit = server.get("submit_socket")
    domains = raw.get("domain")
    first = domains[0] if isinstance(domains, list) and domains else {}
    name = first.get("name") if isinstance(first, dict) else None
    hostname = server.get("hostname")
    return Site(
        data_dir=data_dir,
        submit_socket=Path(submit) if isinstance(submit, str) else Path(PUBLIC_SOCKET),
        domain=name if isinstance(name, str) else None,
        hostname=hostname if isinstance(hostname, str) else None,
        guessed=guessed,
    )


def socket_candidates(site: Site, env: dict[str, str]) -> list[Path]:
    explicit = env.get("HATO_CONTROL_SOCKET")
    if explicit:
        return [Path(explicit)]
    control = site.data_dir / "control.sock"
    found: list[Path] = []
    if not site.guessed or _ours(control):
        found.append(control)  # ./hato-data/control.sock only if it is root's or ours
    found.append(site.submit_socket)
    return found


def drop(site: Site, sender: str, recipients: list[str], message: bytes) -> Path | None:
    """Leave the message in the maildrop; its final path, or None when there is none we may
    use (no server ever started here, or the data directory is closed to us)."""
    maildrop = site.data_dir / MAILDROP
    if site.guessed and not _ours(site.data_dir):
        return None
    try:
        info = maildrop.lstat()
    except OSError:
        return None
    if not maildrop.is_dir() or info.st_uid not in (0, site.data_dir.stat().st_uid):
        return None  # not the server's maildrop
    name = f"{int(time.time())}.{os.getpid()}.{os.urandom(8).hex()}"
    tmp, final = maildrop / f".{name}", maildrop / name
    head = json.dumps({"from": sender, "rcpt": recipients, "uid": os.getuid()}).encode() + b"\n"
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
    fd = os.open(tmp, flags, 0o644)
    try:
        os.fchmod(fd, 0o644)  # the server may run as its own user: it must read the file
        view = memoryview(head + message)
        while view:
            view = view[os.write(fd, view) :]
        os.fsync(fd)
    except BaseException:
        os.close(fd)
        tmp.unlink(missing_ok=True)
        raise
    os.close(fd)
    os.rename(tmp, final)
    return final
