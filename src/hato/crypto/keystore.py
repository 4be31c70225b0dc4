"""The users' public keys and key-failure policies, in DATA_DIR/keys.db (SQLite, mode 0600).

Only public keys are stored: `import_key` refuses private key material. One key per address
(a new import replaces the old one). The policy says what happens to mail for a user whose key
cannot be used (expired since import, say): DEFER (the default: 4xx, the mail waits) or
PLAINTEXT (stored in the clear with a warning header). Either way the admin is told (logged).
A failure of the database raises `StoreError` (hato.model.storeerror), on either backend.

Must not import anything of hato but model.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import enum
import os
import sqlite3
import threading
from collections.abc import Collection
from pathlib import Path
from typing import Any, Protocol

import idna

from hato.crypto.keys import KeyKind, PublicKey, parse_public_key
from hato.crypto.wkdhash import wkd_hash
from hato.model import Address
from hato.model.storeerror import StoreError

KEYS_DB = "keys.db"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS keys (
    address TEXT PRIMARY KEY,      -- lower-case local part "@" lower-case domain
    local TEXT NOT NULL,           -- as given, for printing
    domain TEXT NOT NULL,
    kind TEXT NOT NULL,            -- "openpgp" | "smime"
    data BLOB NOT NULL,            -- binary OpenPGP certificate or X.509 DER: public only
    fingerprint TEXT NOT NULL,
    expires TEXT,                  -- ISO 8601 UTC, NULL: never
    algorithm TEXT NOT NULL,
    wkd_hash TEXT NOT NULL,        -- z-base-32 SHA-1 of the lower-case local part
    imported TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS keys_wkd ON keys (domain, wkd_hash);
CREATE TABLE IF NOT EXISTS policies (
    address TEXT PRIMARY KEY,
    policy TEXT NOT NULL
);
"""


class FailurePolicy(enum.Enum):
    """What to do with mail for a user whose key cannot be used."""

    DEFER = "defer"
    PLAINTEXT = "plaintext"


class KeyLookup(Protocol):
    """What the session and delivery need from the key store."""

    def get(self, address: Address) -> PublicKey | None: ...

    def policy(self, address: Address) -> FailurePolicy: ...


class KeyIndex(KeyLookup, Protocol):
    """A `KeyLookup` that also tells, in one read, which of many addresses have a key."""

    def with_keys(self, addresses: Collection[Address]) -> set[Address]:
        """The ones of `addresses` that have a key now (as `get` would say: not cached
        negatively, a key committed before the read is seen)."""
        ...


def canonical(address: Address) -> str:
    """The key of an address: lower-case local part, "@", the domain in lower-case A-label
    form: bücher.example and xn--bcher-kva.example are one domain (RFC 5890 §2.3.2.1), and
    the resolver gives a mailbox in the form the configuration spells (directory/resolver.py),
    whatever form the key was imported or the mail addressed under."""
    return f"{address.local.lower()}@{address.domain_ascii.lower()}"


def stored_forms(address: Address) -> tuple[str, ...]:
    """Every key a row of `address` may have: `canonical`, then the forms an import kept
    before keys were stored under the A-label (the domain as given: its U-label form)."""
    local = address.local.lower()
    forms = [canonical(address), f"{local}@{address.domain.lower()}"]
    # Not a valid A-label (an address literal): the forms above only.
    with contextlib.suppress(UnicodeError):  # idna.IDNAError is a UnicodeError
        forms.append(f"{local}@{idna.decode(address.domain_ascii.lower())}")
    return tuple(dict.fromkeys(forms))


class KeyStore:
    """The key database; safe to share between threads (one connection behind a lock).
    `crypto/keystore_pg.py` is the same store on the shared PostgreSQL (it changes `_rows`)."""

    _POLICIES = "policies"

    def __init__(self, db_path: Path) -> None:
        self._path = db_path
        try:
            fd = os.open(db_path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        except FileExistsError:
            pass
        else:
            os.close(fd)  # created 0600 before SQLite could create it with the umask's mode
        self._lock = threading.Lock()
        try:
            self._conn = sqlite3.connect(db_path, isolation_level=None, check_same_thread=False)
            self._conn.execute("PRAGMA busy_timeout=5000")
            self._conn.execute("PRAGMA journal_mode=WAL")
            self._conn.executescript(_SCHEMA)
        except sqlite3.Error as exc:
            raise StoreError(f"{db_path}: {exc}") from None

    @classmethod
    def in_data_dir(cls, data_dir: Path) -> KeyStore:
        return cls(data_dir / KEYS_DB)

    def close(self) -> None:
        with self._lock:
            self._conn.close()

    def _rows(self, sql: str, params: tuple[object, ...] = ()) -> list[tuple[Any, ...]]:
        """Run one statement (written for SQLite and PostgreSQL alike: "?" placeholders,
        ON CONFLICT); its rows, if it returns any."""
        with self._lock:
            try:
                return self._conn.execute(sql, params).fetchall()
            except sqlite3.Error as exc:
                raise StoreError(f"{self._path}: {exc}") from None

    @property
    def cache_stamp(self) -> Path | None:
        """The file whose change invalidates a cache of `get`/`policy` (None: do not cache)."""
        return self._path

    # -- keys ------------------------------------------------------------------------------

    def import_key(self, data: bytes, address: Address, now: dt.datetime) -> PublicKey:
        """Check `data` (raises KeyImportError) and store it as the key of `address`."""
        key = parse_public_key(data, address, now)
        self.put(key, now)
        return key

    def revoke(self, fingerprint: str, address: Address, now: dt.datetime) -> PublicKey | None:
        """The stored key of `address`, if its fingerprint is `fingerprint` (its owner uploaded
        it revoked, with a key revocation signature, RFC 9580 §5.2.1.11: it must not be used
        any more), made unusable from `now` on as an expired one is: its owner's policy
        applies (DEFER: the mail waits) until a new key is imported, and no mail is stored in
        the clear for it meanwhile."""
        key = self.get(address)
        if key is None or key.fingerprint != fingerprint.lower():
            return None
        ended = dataclasses.replace(key, expires=min(now, key.expires or now))
        self.put(ended, now)
        return ended

    def put(self, key: PublicKey, now: dt.datetime) -> None:
        address = key.address
        row = (
            canonical(address),
            address.local,
            address.domain.lower(),
            key.kind.value,
            key.data,
            key.fingerprint,
            key.expires.isoformat() if key.expires else None,
            key.algorithm,
            wkd_hash(address.local),
            now.isoformat(),
        )
        self._rows(
            "INSERT INTO keys (address, local, domain, kind, data, fingerprint, expires,"
            " algorithm, wkd_hash, imported) VALUES (?,?,?,?,?,?,?,?,?,?)"
            " ON CONFLICT (address) DO UPDATE SET local = excluded.local,"
            " domain = excluded.domain, kind = excluded.kind, data = excluded.data,"
            " fingerprint = excluded.fingerprint, expires = excluded.expires,"
            " algorithm = excluded.algorithm, wkd_hash = excluded.wkd_hash,"
            " imported = excluded.imported",
            row,
        )
        self._drop_other_forms("keys", address)

    def _drop_other_forms(self, table: str, address: Address) -> None:
        """After a write under `canonical`: the rows of the same address kept under another
        form (see `stored_forms`) go, so that no older key or policy can be found for it."""
        others = stored_forms(address)[1:]
        if others:
            marks = ",".join("?" * len(others))
            self._rows(f"DELETE FROM {table} WHERE address IN ({marks})", others)

    def get(self, address: Address) -> PublicKey | None:
        forms = stored_forms(address)
        marks = ",".join("?" * len(forms))
        rows = self._rows(
            f"SELECT {_COLUMNS} FROM keys WHERE address IN ({marks}) ORDER BY imported DESC",
            forms,
        )
        return _key(rows[0]) if rows else None  # the latest import, whatever its form

    def with_keys(self, addresses: Collection[Address]) -> set[Address]:
        """One statement per `_IN_CHUNK` addresses (a queue runner's batch: one), in autocommit
        on PostgreSQL (the pool's connections), so no transaction of its own to commit."""
        wanted: dict[str, list[Address]] = {}
        for address in addresses:
            for form in stored_forms(address):
                wanted.setdefault(form, []).append(address)
        names = list(wanted)
        found: set[Address] = set()
        for start in range(0, len(names), _IN_CHUNK):
            chunk = names[start : start + _IN_CHUNK]
            marks = ",".join("?" * len(chunk))
            rows = self._rows(f"SELECT address FROM keys WHERE address IN ({marks})", tuple(chunk))
            for (name,) in rows:
                found.update(wanted[name])
        return found

    def remove(self, address: Address) -> bool:
        forms = stored_forms(address)
        marks = ",".join("?" * len(forms))
        rows = self._rows(f"DELETE FROM keys WHERE address IN ({marks}) RETURNING address", forms)
        return bool(rows)

    def list(self) -> list[PublicKey]:
        return [_key(row) for row in self._rows(f"SELECT {_COLUMNS} FROM keys ORDER BY address")]

    def find_wkd(self, domain: str, hashed: str) -> PublicKey | None:
        """The OpenPGP key published by WKD for `hashed` (z-base-32) at `domain`."""
        rows = self._rows(
            f"SELECT {_COLUMNS} FROM keys WHERE domain = ? AND wkd_hash = ? AND kind = ?",
            (domain.lower(), hashed.lower(), KeyKind.OPENPGP.value),
        )
        return _key(rows[0]) if rows else None

    # -- policies --------------------------------------------------------------------------

    def policy(self, address: Address) -> FailurePolicy:
        forms = stored_forms(address)
        marks = ",".join("?" * len(forms))
        rows = self._rows(
            f"SELECT address, policy FROM {self._POLICIES} WHERE address IN ({marks})", forms
        )
        chosen = dict(rows).get(forms[0], rows[0][1] if rows else None)  # canonical's first
        return FailurePolicy(chosen) if chosen else FailurePolicy.DEFER

    def set_policy(self, address: Address, policy: FailurePolicy) -> None:
        self._rows(
            f"INSERT INTO {self._POLICIES} (address, policy) VALUES (?, ?)"
            " ON CONFLICT (address) DO UPDATE SET policy = excluded.policy",
            (canonical(address), policy.value),
        )
        self._drop_other_forms(self._POLICIES, address)


_IN_CHUNK = 500  # addresses per statement (under SQLite's 999 host parameters of old)
_COLUMNS = "local, domain, kind, data, fingerprint, expires, algorithm"


def _key(row: tuple[Any, ...]) -> PublicKey:
    local, domain, kind, data, fingerprint, expires, algorithm = row
    return PublicKey(
        KeyKind(kind),
        Address(local, domain),
        bytes(data),
        fingerprint,
        dt.datetime.fromisoformat(expires) if expires else None,
        algorithm,
    )
