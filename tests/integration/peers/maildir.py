"""Reading what a server delivered into Maildir (and Maildir++) directories."""

from __future__ import annotations

import contextlib
import os
import re
import time
from collections import Counter
from pathlib import Path

# A header field line or a folded continuation (RFC 5322 §2.2, §2.2.3).
_HEADER_LINE = re.compile(rb"[\x21-\x39\x3b-\x7e]+:[^\r\n]*|[ \t][^\r\n]*")
MARKER_HEADER = b"X-Hato-Test-Marker"
_MARKER = re.compile(rb"^" + MARKER_HEADER + rb": *(\S+)", re.MULTILINE)


def messages(root: Path) -> list[Path]:
    """Delivered messages of one Maildir: files in new/ and cur/ (tmp/ is still being written)."""
    found: list[Path] = []
    for sub in ("new", "cur"):
        directory = root / sub
        if directory.is_dir():
            found.extend(p for p in directory.iterdir() if p.is_file())
    return sorted(found)


def count(root: Path) -> int:
    """How many messages `messages(root)` would list, without a stat per file: for polling a
    Maildir that fills with thousands of files while a benchmark measures the machine."""
    total = 0
    for sub in ("new", "cur"):
        with contextlib.suppress(FileNotFoundError):
            total += len(os.listdir(root / sub))
    return total


def all_messages(base: Path) -> list[Path]:
    """Every delivered message in every Maildir under `base`."""
    if not base.is_dir():
        return []
    return sorted(p for p in base.rglob("*") if p.is_file() and p.parent.name in ("new", "cur"))


def wait_for_count(root: Path, count: int, timeout: float) -> list[Path]:
    """Poll until at least `count` messages are in the Maildir or `timeout` seconds pass."""
    deadline = time.monotonic() + timeout
    while True:
        found = messages(root)
        if len(found) >= count or time.monotonic() >= deadline:
            return found
        time.sleep(0.05)


def wait_for_new(root: Path, before: list[Path], timeout: float) -> bytes:
    """The octets of a message delivered to the Maildir that is not among `before` (its
    `messages(root)` before the sending): for copies a marker cannot find (encrypted ones)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        new = [p for p in messages(root) if p not in before]
        if new:
            return new[0].read_bytes()
        time.sleep(0.05)
    raise AssertionError(f"no new message in {root} within {timeout} s")


def split_added(stored: bytes, sent: bytes) -> bytes:
    """Check that `stored` is added header lines followed by exactly `sent`; return the prefix.

    Raises AssertionError with the differing bytes when the body is not byte-exact.
    """
    if not stored.endswith(sent):
        limit = min(len(stored), len(sent))
        tail = stored[len(stored) - limit :]
        first = next((i for i in range(limit) if tail[i] != sent[i]), limit)
        raise AssertionError(
            f"stored message does not end with the sent bytes; first difference at offset "
            f"{first} of the last {limit}: stored {tail[first : first + 80]!r} "
            f"vs sent {sent[first : first + 80]!r}"
        )
    prefix = stored[: len(stored) - len(sent)]
    eol = b"\r\n" if b"\r\n" in prefix else b"\n"
    lines = prefix.split(eol)
    assert lines[-1] == b"", f"added headers do not end with a line end: {prefix!r}"
    bad = [line for line in lines[:-1] if not _HEADER_LINE.fullmatch(line)]
    assert not bad, f"added prefix has non-header lines {bad!r}"
    return prefix


def markers(paths: list[Path]) -> Counter[str]:
    """How many delivered messages carry each test marker header."""
    counts: Counter[str] = Counter()
    for path in paths:
        head = path.read_bytes().split(b"\r\n\r\n", 1)[0].split(b"\n\n", 1)[0]
        for found in _MARKER.findall(head):
            counts[found.decode("ascii")] += 1
    return counts


def stored_form(stores_crlf: bool, sent: bytes) -> bytes:
    """What byte-exact storage of `sent` looks like (Postfix stores LF line ends, Hato CRLF)."""
    return sent if stores_crlf else sent.replace(b"\r\n", b"\n")


def header_fields(stored: bytes) -> list[str]:
    """The unfolded header fields of a stored message (RFC 5322 §2.2.3)."""
    head = stored.split(b"\r\n\r\n", 1)[0].decode()
    return [re.sub(r"\r\n[ \t]+", " ", f) for f in re.split(r"\r\n(?![ \t])", head)]


def find_marker(paths: list[Path], marker: str) -> list[Path]:
    """The delivered messages whose marker header is `marker`."""
    return [p for p in paths if markers([p]).get(marker)]


def wait_for_marker(root: Path, marker: str, timeout: float = 60.0) -> list[Path]:
    """Poll a Maildir until a message with `marker` appears (or `timeout` seconds pass).

    The default bounds a delivery that happens: it returns as soon as the message is there,
    and a loaded 2-core CI machine took over 20 s for a queue delivery that takes 100 ms here."""
    deadline = time.monotonic() + timeout
    while True:
        found = find_marker(messages(root), marker)
        if found or time.monotonic() >= deadline:
            return found
        time.sleep(0.05)


def wait_for_report(root: Path, timeout: float, returning: bytes = b"") -> bytes:
    """Poll a Maildir until a delivery report (RFC 6522 multipart/report) arrives whose bytes
    hold `returning` (the returned message's marker, say); its bytes. Fails after `timeout`."""
    deadline = time.monotonic() + timeout
    while True:
        for path in messages(root):
            data = path.read_bytes()
            if b"multipart/report" in data and returning in data:
                return data
        assert time.monotonic() < deadline, f"no report in {root} within {timeout} s"
        time.sleep(0.05)


def assert_each_once(
    base: Path, accepted: set[str], attempted: set[str], *, timeout: float, settle: float
) -> None:
    """Every marker that got 250 arrives (within `timeout`), none twice, and nothing that was
    never sent: the exactly-once check of the crash and stop tests. `settle` waits for a late
    duplicate after the last expected message arrived."""
    deadline = time.monotonic() + timeout
    counts = markers(all_messages(base))
    while not accepted <= counts.keys() and time.monotonic() < deadline:
        time.sleep(0.2)
        counts = markers(all_messages(base))
    time.sleep(settle)
    counts = markers(all_messages(base))
    missing = accepted - counts.keys()
    assert not missing, f"{len(missing)} of {len(accepted)} messages answered 250 were lost"
    duplicated = {marker: n for marker, n in counts.items() if n > 1}
    assert not duplicated, f"delivered more than once: {duplicated}"
    assert counts.keys() <= attempted, "delivered messages nobody sent"
