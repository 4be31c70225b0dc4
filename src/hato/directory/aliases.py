"""The aliases file (the /etc/aliases format of aliases(5)), parsed into an `AliasTable`.

Format: ``name: target, target, ...``; a line that starts with whitespace continues the one
before; empty lines and lines whose first non-blank character is ``#`` are ignored; a name or a
target may be a quoted string. A name without ``@`` applies to every local domain, ``name@domain``
to that domain only. A target is a local part (of the domain the alias was looked up in) or an
address, local or remote.

Pipes to commands (``|cmd``), files (``/path``), ``:include:`` lists and backslash-escaped
targets are not supported: they are reported as a config error naming file and line, never
skipped in silence.

Must not import anything of hato but model.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from hato.model import Address, AddressError

AliasTarget = str | Address
"""A target: a `str` is a local part of the alias's own domain; an `Address` is a full address."""


class AliasFileError(ValueError):
    """A config error in the aliases file (the message names file and line) or in an alias."""


def parse_target(text: str) -> AliasTarget:
    """One target: a local part or an address. Raises AliasFileError for what we refuse."""
    raw = text.strip()
    if len(raw) >= 2 and raw[0] == '"' and _quoted_end(raw, 0) == len(raw) - 1:
        raw = _unquote(raw)
    if not raw:
        raise AliasFileError("empty target")
    if raw.startswith("|"):
        raise AliasFileError(f"target {raw!r}: delivery to a command is not supported")
    if raw.startswith("/"):
        raise AliasFileError(f"target {raw!r}: delivery to a file is not supported")
    if raw.lower().startswith(":include:"):
        raise AliasFileError(f"target {raw!r}: :include: lists are not supported")
    if raw.startswith("\\"):
        raise AliasFileError(f"target {raw!r}: backslash-escaped targets are not supported")
    try:
        if "@" in raw:
            return Address.parse(raw)
        # RFC 5321 §4.1.2: a local part alone must still be a valid Local-part.
        Address.parse(f"{raw}@localhost")
    except AddressError as exc:
        raise AliasFileError(f"target {raw!r}: not a valid address ({exc})") from None
    return raw


def _alias_key(local: str, domain: str | None) -> str:
    """The lookup key of an alias name: ``local`` or ``local@domain``, lower-case."""
    if not local:
        raise AliasFileError("empty alias name")
    if domain is None:
        return local.lower()
    try:
        checked = Address.parse(f"postmaster@{domain}").domain
    except AddressError as exc:
        raise AliasFileError(f"alias domain {domain!r}: not a valid domain ({exc})") from None
    return f"{local.lower()}@{checked}"


@dataclass(frozen=True, slots=True)
class AliasTable:
    """Alias name -> targets. Keys are ``local`` (every local domain) or ``local@domain``,
    lower-case; `origins` says where each key was defined (``file:line``)."""

    entries: Mapping[str, tuple[AliasTarget, ...]]
    origins: Mapping[str, str] = field(default_factory=dict)

    @classmethod
    def load(cls, path: Path) -> AliasTable:
        """Read an aliases file; raises AliasFileError (``file:line: why``) or OSError."""
        return cls.parse(path.read_text(encoding="utf-8"), source=str(path))

    @classmethod
    def parse(cls, text: str, source: str = "<aliases>") -> AliasTable:
        entries: dict[str, tuple[AliasTarget, ...]] = {}
        origins: dict[str, str] = {}
        for lineno, logical in _logical_lines(text, source):
            where = f"{source}:{lineno}"
            try:
                name, targets = _parse_entry(logical)
            except AliasFileError as exc:
                raise AliasFileError(f"{where}: {exc}") from None
            if name in entries:
                raise AliasFileError(
                    f"{where}: alias {name!r} is already defined at {origins[name]}"
                )
            entries[name] = targets
            origins[name] = where
        return cls(entries, origins)

    def lookup(self, local: str, domain: str) -> tuple[AliasTarget, ...] | None:
        """Targets for lower-case `local` in `domain`: ``local@domain`` first, then ``local``."""
        found = self.entries.get(f"{local}@{domain}")
        if found is None:
            found = self.entries.get(local)
        return found

    def domains(self) -> frozenset[str]:
        """The domains named in ``local@domain`` keys."""
        return frozenset(key.rpartition("@")[2] for key in self.entries if "@" in key)


def _logical_lines(text: str, source: str) -> Iterator[tuple[int, str]]:
    """(first line number, joined text) of each entry; continuation lines start with blanks."""
    start = 0
    parts: list[str] = []
    for lineno, line in enumerate(text.splitlines(), start=1):
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        if line[0].isspace():
            if not parts:
                raise AliasFileError(f"{source}:{lineno}: continuation line without an alias")
            parts.append(stripped)
            continue
        if parts:
            yield start, " ".join(parts)
        start, parts = lineno, [stripped]
    if parts:
        yield start, " ".join(parts)


def _parse_entry(line: str) -> tuple[str, tuple[AliasTarget, ...]]:
    domain: str | None = None
    if line.startswith('"'):
        end = _quoted_end(line, 0)
        if end < 0:
            raise AliasFileError("unterminated quoted alias name")
        local, rest = _unquote(line[: end + 1]), line[end + 1 :]
        if rest.startswith("@"):
            colon = rest.find(":")
            if colon < 0:
                raise AliasFileError("expected ':' after the alias name")
            domain, rest = rest[1:colon].strip(), rest[colon:]
        rest = rest.lstrip()
        if not rest.startswith(":"):
            raise AliasFileError("expected ':' after the alias name")
    else:
        colon = line.find(":")
        if colon < 0:
            raise AliasFileError("expected 'name: target, ...'")
        name, rest = line[:colon].strip(), line[colon:]
        if any(ch.isspace() for ch in name):
            raise AliasFileError(f"alias name {name!r} contains white space (quote it)")
        if "@" in name:
            local, _, domain = name.rpartition("@")
        else:
            local = name
    key = _alias_key(local, domain)
    values = list(_split_targets(rest[1:]))
    if not values or all(not value.strip() for value in values):
        raise AliasFileError(f"alias {key!r} has no target")
    targets: list[AliasTarget] = []
    for value in values:
        try:
            targets.append(parse_target(value))
        except AliasFileError as exc:
            raise AliasFileError(f"alias {key!r}: {exc}") from None
    return key, tuple(targets)


def _split_targets(text: str) -> Iterator[str]:
    """Split at commas that are not inside a quoted string."""
    start = 0
    i = 0
    while i < len(text):
        ch = text[i]
        if ch == '"':
            end = _quoted_end(text, i)
            if end < 0:
                raise AliasFileError("unterminated quoted target")
            i = end
        elif ch == ",":
            yield text[start:i]
            start = i + 1
        i += 1
    yield text[start:]


def _quoted_end(text: str, start: int) -> int:
    """Index of the '"' closing the quoted string that opens at `start`, or -1."""
    i = start + 1
    while i < len(text):
        if text[i] == "\\":
            i += 2
            continue
        if text[i] == '"':
            return i
        i += 1
    return -1


def _unquote(quoted: str) -> str:
    out: list[str] = []
    i = 1
    while i < len(quoted) - 1:
        if quoted[i] == "\\" and i + 1 < len(quoted) - 1:
            i += 1
        out.append(quoted[i])
        i += 1
    return "".join(out)
