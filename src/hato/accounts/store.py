"""Users and argon2id password hashes in one SQLite file (WAL).

Theory of operation: every thread gets its own connection (SQLite connections must not be
shared by concurrent threads), in autocommit mode, so every read is its own transaction and sees
what another process (the `hato` CLI) committed a moment ago. `exists` is one SELECT on the
primary key: cheap enough to run on the event loop for every RCPT. Writers take
``BEGIN IMMEDIATE`` implicitly through single statements and wait up to `busy_timeout`.

Passwords are hashed with argon2id (RFC 9106). The default parameters are argon2-cffi's, which
are RFC 9106 §4's second recommended option (t=3, m=64 MiB, p=4, 16-byte salt, 32-byte tag);
pass stronger `parameters` to raise them. Hashes made with weaker parameters are upgraded on the
next successful `verify`. A password never leaves this module, not even in an exception.
With a `VerifiedCache` (accounts/authcache.py, [auth] cache_ttl) a password that verified
against the stored hash a moment ago is not run through argon2id again.
A failure of the database raises `StoreError` (hato.model.storeerror), on either backend.

SCRAM-SHA-256 keys (RFC 5802 §3) sit beside the hash and are far cheaper to attack offline (one
PBKDF2 run per guess, no memory cost), so their iteration count is the store's
`scram_iterations` ([auth] scram_iterations). Keys with fewer iterations are re-derived at the
next successful `verify`, like the hashes. With `scram_iterations = 0` (SCRAM not offered) no
keys are stored, and those already there are removed when the store is first opened.

Must not import anything of hato but model.
"""

from __future__ import annotations

import os
import sqlite3
import threading
from pathlib import Path
from typing import Any

from argon2 import Parameters, PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from argon2.profiles import RFC_9106_LOW_MEMORY

from hato.accounts.authcache import VerifiedCache
from hato.model import Address
from hato.model.auth import SCRAM_ITERATIONS, ScramCredentials
from hato.model.storeerror import StoreError

_SCHEMA_VERSION = 2
_SCHEMA = """
CREATE TABLE IF NOT EXISTS users (
    address TEXT PRIMARY KEY,          -- canonical: lower-case local part "@" lower-case domain
    password_hash TEXT NOT NULL,       -- argon2id PHC string
    scram_salt BLOB,                   -- RFC 5802 §3 / RFC 7677: SCRAM-SHA-256 credentials,
    scram_iterations INTEGER,          -- derived from the password when it is set; NULL for
    scram_stored_key BLOB,             -- accounts made before SCRAM existed (they can still
    scram_server_key BLOB              -- use PLAIN/LOGIN)
) WITHOUT ROWID
"""
_SCRAM_COLUMNS = (
    "scram_salt BLOB",
    "scram_iterations INTEGER",
    "scram_stored_key BLOB",
    "scram_server_key BLOB",
)
_BUSY_TIMEOUT_MS = 5000
_NO_SCRAM = (
    "scram_salt = NULL, scram_iterations = NULL, scram_stored_key = NULL, scram_server_key = NULL"
)


class AccountError(Exception):
    """A user-store operation that cannot be done as asked."""


class UserExists(AccountError):
    """`add` of an address that already is an account."""


class UnknownUser(AccountError):
    """An operation on an address that is not an account."""


def canonical_key(address: Address) -> str:
    """The account key: lower-case local part, "@", lower-case domain."""
    return f"{address.local.lower()}@{address.domain.lower()}"


def read_account_keys(path: Path) -> frozenset[str]:
    """The canonical keys of the accounts in the users.db at `path`, read only: the file is
    neither made nor changed (`hato check-config` may run as anyone, before the first `hato
    user add`). None if there is no file or no table yet; StoreError if it cannot be read."""
    if not path.exists():
        return frozenset()
    try:
        conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    except sqlite3.Error as exc:
        raise StoreError(f"{path}: {exc}") from None
    try:
        return frozenset(str(row[0]) for row in conn.execute("SELECT address FROM users"))
    except sqlite3.OperationalError as exc:
        if "no such table" in str(exc):
            return frozenset()  # made, but no account added yet
        raise StoreError(f"{path}: {exc}") from None
    except sqlite3.Error as exc:
        raise StoreError(f"{path}: {exc}") from None
    finally:
        conn.close()


def _address_of(key: str) -> Address:
    local, _, domain = key.rpartition("@")
    return Address(local, domain)


class UserStore:
    """The accounts of our local domains (implements `hato.model.UserDirectory`).

    Safe to use from several threads. The database file is created on first use, mode 0600.
    """

    def __init__(
        self,
        db_path: Path,
        *,
        parameters: Parameters = RFC_9106_LOW_MEMORY,
        scram_iterations: int = SCRAM_ITERATIONS,
        verified_cache: VerifiedCache | None = None,
    ) -> None:
        self._path = db_path
        self._scram_iterations = scram_iterations
        self._verified = verified_cache
        self._hasher = PasswordHasher.from_parameters(parameters)
        self._local = threading.local()
        self._lock = threading.Lock()
        self._connections: list[sqlite3.Connection] = []
        self._ready = False
        self._dummy_hash: str | None = None

    # -- connections -----------------------------------------------------------------------

    @property
    def path(self) -> Path:
        """The database file."""
        return self._path

    def _prepare_file(self) -> None:
        """Create the database file 0600 (before SQLite would create it with the umask's mode)
        and its schema; once per process."""
        try:
            fd = os.open(self._path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        except FileExistsError:
            pass
        else:
            os.close(fd)
        conn = self._connect()
        try:
            # WAL: readers (RCPT checks) never wait for a writer (the CLI), and the mode sticks to
            # the file. SQLite gives the -wal and -shm files the database file's permissions.
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute(_SCHEMA)
            have = {str(row[1]) for row in conn.execute("PRAGMA table_info(users)")}
            for column in _SCRAM_COLUMNS:
                if column.split()[0] not in have:  # a version 1 file: add the SCRAM columns
                    conn.execute(f"ALTER TABLE users ADD COLUMN {column}")
            conn.execute(f"PRAGMA user_version={_SCHEMA_VERSION}")
            if not self._scram_iterations:
                conn.execute(f"UPDATE users SET {_NO_SCRAM} WHERE scram_salt IS NOT NULL")
        finally:
            conn.close()

    def _connect(self) -> sqlite3.Connection:
        # isolation_level=None: autocommit, so each SELECT sees the latest committed state.
        # check_same_thread=False only so that close() may close every thread's connection.
        conn = sqlite3.connect(self._path, isolation_level=None, check_same_thread=False)
        conn.execute(f"PRAGMA busy_timeout={_BUSY_TIMEOUT_MS}")
        return conn

    def _conn(self) -> sqlite3.Connection:
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is not None:
            return conn
        with self._lock:
            if not self._ready:
                self._prepare_file()
                self._ready = True
            conn = self._connect()
            self._connections.append(conn)
        self._local.conn = conn
        return conn

    def close(self) -> None:
        """Close every thread's connection; the store may be used again afterwards."""
        with self._lock:
            for conn in self._connections:
                conn.close()
            self._connections.clear()
            self._local = threading.local()

    def _query(self, sql: str, params: tuple[object, ...]) -> list[tuple[Any, ...]]:
        """The rows of one SELECT (the SQL is written for both backends: `?` placeholders)."""
        try:
            return self._conn().execute(sql, params).fetchall()
        except sqlite3.Error as exc:
            raise StoreError(f"{self._path}: {exc}") from None

    def _change(self, sql: str, params: tuple[object, ...]) -> int:
        """Run one INSERT/UPDATE/DELETE; the number of rows it changed."""
        try:
            return self._conn().execute(sql, params).rowcount
        except sqlite3.Error as exc:
            raise StoreError(f"{self._path}: {exc}") from None

    @property
    def cache_stamp(self) -> Path | None:
        """The file whose change invalidates a cache of `exists` (None: do not cache)."""
        return self._path

    # -- UserDirectory ---------------------------------------------------------------------

    def exists(self, address: Address) -> bool:
        return bool(self._query("SELECT 1 FROM users WHERE address = ?", (canonical_key(address),)))

    # -- administration --------------------------------------------------------------------

    def add(self, address: Address, password: str) -> None:
        """Create an account; raises UserExists if there is one."""
        hashed = self._hash(password)
        key = canonical_key(address)
        inserted = self._change(
            "INSERT INTO users (address, password_hash, scram_salt, scram_iterations,"
            " scram_stored_key, scram_server_key) VALUES (?, ?, ?, ?, ?, ?)"
            " ON CONFLICT (address) DO NOTHING",
            (key, hashed, *self._scram_row(password)),
        )
        if not inserted:
            raise UserExists(f"account already exists: {key}")

    def set_password(self, address: Address, password: str) -> None:
        """Replace an account's password; raises UnknownUser if there is no such account."""
        hashed = self._hash(password)
        key = canonical_key(address)
        changed = self._change(
            "UPDATE users SET password_hash = ?, scram_salt = ?, scram_iterations = ?,"
            " scram_stored_key = ?, scram_server_key = ? WHERE address = ?",
            (hashed, *self._scram_row(password), key),
        )
        if changed == 0:
            raise UnknownUser(f"no such account: {key}")

    def remove(self, address: Address) -> bool:
        """Delete an account; False if there was none."""
        return self._change("DELETE FROM users WHERE address = ?", (canonical_key(address),)) > 0

    def list(self) -> list[Address]:
        """Every account, sorted by canonical key."""
        rows = self._query("SELECT address FROM users ORDER BY address", ())
        return [_address_of(str(row[0])) for row in rows]

    # -- authentication --------------------------------------------------------------------

    def scram_credentials(self, address: Address) -> ScramCredentials | None:
        """The account's SCRAM-SHA-256 credentials, or None (no account, or none stored)."""
        rows = self._query(
            "SELECT scram_salt, scram_iterations, scram_stored_key, scram_server_key"
            " FROM users WHERE address = ?",
            (canonical_key(address),),
        )
        row = rows[0] if rows else None
        if row is None or row[0] is None:
            return None
        return ScramCredentials(bytes(row[0]), int(row[1]), bytes(row[2]), bytes(row[3]))

    def verify(self, address: Address, password: str) -> bool:
        """Whether `password` is the account's password.

        An unknown account costs the same hashing time as a known one, so that the answer's
        timing does not tell which accounts exist.
        """
        key = canonical_key(address)
        dummy = self._dummy()  # made before the look-up, so the first call leaks nothing either
        rows = self._query(
            "SELECT password_hash, scram_iterations FROM users WHERE address = ?", (key,)
        )
        row = rows[0] if rows else None
        if row is None:
            self._check(dummy, password)
            return False
        stored = str(row[0])
        if self._verified is not None and self._verified.verified(key, password, stored):
            return True  # verified within [auth] cache_ttl against this very hash
        if not self._check(stored, password):
            return False
        if self._hasher.check_needs_rehash(stored):
            # Only replace the hash we checked: a concurrent set_password wins.
            fresh = self._hasher.hash(password)
            self._change(
                "UPDATE users SET password_hash = ? WHERE address = ? AND password_hash = ?",
                (fresh, key, stored),
            )
            stored = fresh
        if self._scram_iterations and (row[1] or 0) < self._scram_iterations:
            self._change(
                "UPDATE users SET scram_salt = ?, scram_iterations = ?, scram_stored_key = ?,"
                " scram_server_key = ? WHERE address = ? AND password_hash = ?",
                (*self._scram_row(password), key, stored),
            )
        if self._verified is not None:
            self._verified.remember(key, password, stored)
        return True

    def _scram_row(self, password: str) -> tuple[bytes | int | None, ...]:
        """The SCRAM columns for a password: salt, iterations, stored key, server key."""
        if not self._scram_iterations:
            return (None, None, None, None)
        scram = ScramCredentials.derive(password, os.urandom(16), self._scram_iterations)
        return (scram.salt, scram.iterations, scram.stored_key, scram.server_key)

    def _check(self, stored: str, password: str) -> bool:
        try:
            return self._hasher.verify(stored, password)
        except (VerificationError, InvalidHashError):
            return False

    def _hash(self, password: str) -> str:
        if not password:
            raise ValueError("the password must not be empty")
        return self._hasher.hash(password)

    def _dummy(self) -> str:
        if self._dummy_hash is None:
            self._dummy_hash = self._hasher.hash(os.urandom(16).hex())
        return self._dummy_hash
