"""UserStore: accounts on SQLite with argon2id hashes."""

from __future__ import annotations

import sqlite3
import stat
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from argon2 import Parameters, PasswordHasher
from argon2.low_level import Type

from hato.accounts import UnknownUser, UserExists, UserStore, canonical_key, read_account_keys
from hato.model import Address, UserDirectory
from hato.model.auth import ScramCredentials
from hato.model.storeerror import StoreError

# Cheap argon2id parameters so the tests stay fast; production uses the RFC 9106 defaults.
FAST = Parameters(
    type=Type.ID, version=19, salt_len=16, hash_len=32, time_cost=1, memory_cost=8, parallelism=1
)
ALICE = Address("alice", "example.org")


@pytest.fixture
def db(tmp_path: Path) -> Path:
    return tmp_path / "users.sqlite"


@pytest.fixture
def store(db: Path) -> Iterator[UserStore]:
    s = UserStore(db, parameters=FAST)
    yield s
    s.close()


def test_is_a_user_directory(store: UserStore) -> None:
    directory: UserDirectory = store
    assert directory.exists(ALICE) is False


def test_file_created_on_first_use_mode_0600(db: Path) -> None:
    s = UserStore(db, parameters=FAST)
    assert not db.exists()
    assert s.list() == []
    assert stat.S_IMODE(db.stat().st_mode) == 0o600
    s.close()


def test_wal_mode(store: UserStore, db: Path) -> None:
    store.add(ALICE, "pw")
    mode = sqlite3.connect(db).execute("PRAGMA journal_mode").fetchone()[0]
    assert mode == "wal"


def test_add_list_exists_remove(store: UserStore) -> None:
    bob = Address("bob", "example.net")
    store.add(ALICE, "secret-a")
    store.add(bob, "secret-b")
    assert store.list() == [ALICE, bob]
    assert store.exists(ALICE)
    assert store.remove(ALICE) is True
    assert store.remove(ALICE) is False
    assert not store.exists(ALICE)
    assert store.list() == [bob]


def test_canonical_key_is_lower_case(store: UserStore) -> None:
    store.add(Address("Alice", "Example.ORG"), "pw")
    assert store.list() == [ALICE]
    assert store.exists(Address("ALICE", "example.org"))
    assert store.verify(Address("aLiCe", "EXAMPLE.org"), "pw")
    assert canonical_key(Address("A.B", "X.Y")) == "a.b@x.y"


def test_add_twice_raises_user_exists(store: UserStore) -> None:
    store.add(ALICE, "pw")
    with pytest.raises(UserExists):
        store.add(Address("ALICE", "example.org"), "other")
    assert store.verify(ALICE, "pw")


def test_empty_password_refused(store: UserStore) -> None:
    with pytest.raises(ValueError):
        store.add(ALICE, "")
    assert not store.exists(ALICE)


def test_verify(store: UserStore) -> None:
    store.add(ALICE, "correct horse")
    assert store.verify(ALICE, "correct horse")
    assert not store.verify(ALICE, "correct horse ")
    assert not store.verify(ALICE, "")
    assert not store.verify(Address("nobody", "example.org"), "correct horse")


def test_stored_hash_is_argon2id_not_the_password(store: UserStore, db: Path) -> None:
    store.add(ALICE, "hunter2")
    stored = sqlite3.connect(db).execute("SELECT password_hash FROM users").fetchone()[0]
    assert stored.startswith("$argon2id$")
    assert "hunter2" not in stored


def test_unknown_user_spends_hashing_time(
    store: UserStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[str] = []
    real = PasswordHasher.verify

    def counting(self: PasswordHasher, stored: str | bytes, password: str | bytes) -> bool:
        calls.append("verify")
        return real(self, stored, password)

    monkeypatch.setattr(PasswordHasher, "verify", counting)
    assert not store.verify(Address("ghost", "example.org"), "pw")
    assert calls == ["verify"]


def test_set_password(store: UserStore) -> None:
    store.add(ALICE, "old")
    store.set_password(ALICE, "new")
    assert store.verify(ALICE, "new")
    assert not store.verify(ALICE, "old")
    with pytest.raises(UnknownUser):
        store.set_password(Address("ghost", "example.org"), "x")


def test_weak_hash_upgraded_on_verify(db: Path) -> None:
    weak = UserStore(db, parameters=FAST)
    weak.add(ALICE, "pw")
    stronger = Parameters(
        type=Type.ID,
        version=19,
        salt_len=16,
        hash_len=32,
        time_cost=2,
        memory_cost=16,
        parallelism=1,
    )
    strong = UserStore(db, parameters=stronger)
    assert strong.verify(ALICE, "pw")
    stored = sqlite3.connect(db).execute("SELECT password_hash FROM users").fetchone()[0]
    assert "m=16,t=2,p=1" in stored
    assert weak.verify(ALICE, "pw")
    weak.close()
    strong.close()


def test_two_instances_see_each_other_at_once(db: Path) -> None:
    server = UserStore(db, parameters=FAST)
    cli = UserStore(db, parameters=FAST)
    assert not server.exists(ALICE)  # the server's connection is open before the CLI writes
    cli.add(ALICE, "pw")
    assert server.exists(ALICE)
    assert server.verify(ALICE, "pw")
    cli.set_password(ALICE, "pw2")
    assert server.verify(ALICE, "pw2")
    assert cli.remove(ALICE)
    assert not server.exists(ALICE)
    assert server.list() == []
    server.close()
    cli.close()


def test_usable_from_several_threads(store: UserStore) -> None:
    errors: list[BaseException] = []

    def work(n: int) -> None:
        try:
            address = Address(f"user{n}", "example.org")
            store.add(address, f"pw{n}")
            assert store.exists(address)
            assert store.verify(address, f"pw{n}")
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(n,)) for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert len(store.list()) == 8


def test_reusable_after_close(store: UserStore) -> None:
    store.add(ALICE, "pw")
    store.close()
    assert store.exists(ALICE)


def test_scram_credentials_follow_the_password(store: UserStore) -> None:
    alice = Address("alice", "example.org")
    assert store.scram_credentials(alice) is None
    store.add(alice, "pencil")
    creds = store.scram_credentials(Address("ALICE", "example.org"))
    assert creds is not None and creds.iterations >= 4096
    assert creds == ScramCredentials.derive("pencil", creds.salt, creds.iterations)
    store.set_password(alice, "crayon")
    again = store.scram_credentials(alice)
    assert again is not None and again.salt != creds.salt
    assert again == ScramCredentials.derive("crayon", again.salt, again.iterations)


def test_version_1_file_gains_scram_columns(db: Path) -> None:
    conn = sqlite3.connect(db)
    conn.execute("CREATE TABLE users (address TEXT PRIMARY KEY, password_hash TEXT NOT NULL)")
    conn.execute("INSERT INTO users VALUES ('old@example.org', 'x')")
    conn.commit()
    conn.close()
    store = UserStore(db, parameters=FAST)
    assert store.exists(Address("old", "example.org"))
    assert store.scram_credentials(Address("old", "example.org")) is None
    store.add(Address("new", "example.org"), "pw")
    assert store.scram_credentials(Address("new", "example.org")) is not None


def test_scram_iterations_are_the_stores_and_old_keys_are_remade_at_login(db: Path) -> None:
    old = UserStore(db, parameters=FAST, scram_iterations=4096)
    old.add(ALICE, "pencil")
    old.close()
    store = UserStore(db, parameters=FAST, scram_iterations=20_000)
    before = store.scram_credentials(ALICE)
    assert before is not None and before.iterations == 4096
    assert not store.verify(ALICE, "wrong")
    assert store.scram_credentials(ALICE) == before  # only a right password re-makes them
    assert store.verify(ALICE, "pencil")
    after = store.scram_credentials(ALICE)
    assert after is not None and after.iterations == 20_000 and after.salt != before.salt
    assert after == ScramCredentials.derive("pencil", after.salt, 20_000)
    store.add(Address("bob", "example.org"), "crayon")
    bob = store.scram_credentials(Address("bob", "example.org"))
    assert bob is not None and bob.iterations == 20_000
    store.close()


def test_without_scram_no_keys_are_stored_and_old_ones_are_removed(db: Path) -> None:
    with_scram = UserStore(db, parameters=FAST)
    with_scram.add(ALICE, "pencil")
    with_scram.close()
    store = UserStore(db, parameters=FAST, scram_iterations=0)
    assert store.scram_credentials(ALICE) is None  # removed when the store was opened
    store.add(Address("bob", "example.org"), "crayon")
    assert store.scram_credentials(Address("bob", "example.org")) is None
    assert store.verify(ALICE, "pencil") and store.scram_credentials(ALICE) is None
    conn = sqlite3.connect(db)
    assert (
        conn.execute("SELECT COUNT(*) FROM users WHERE scram_stored_key IS NOT NULL").fetchone()[0]
        == 0
    )
    conn.close()
    store.close()


def test_a_broken_file_raises_store_error_not_sqlites(db: Path) -> None:
    """The rooms above see model.storeerror's errors, whatever the backend (issue 11)."""
    db.write_bytes(b"not a database, " * 512)
    store = UserStore(db, parameters=FAST)
    try:
        with pytest.raises(StoreError, match="file is not a database") as raised:
            store.exists(ALICE)
        assert not isinstance(raised.value, sqlite3.Error)
        with pytest.raises(StoreError):
            store.add(ALICE, "a password")
    finally:
        store.close()
    with pytest.raises(StoreError, match="file is not a database"):
        read_account_keys(db)


def test_read_account_keys_reads_and_never_makes_the_file(db: Path) -> None:
    assert read_account_keys(db) == frozenset() and not db.exists()
    sqlite3.connect(db).close()  # a file with no table yet
    assert read_account_keys(db) == frozenset()
    store = UserStore(db, parameters=FAST)
    try:
        store.add(Address("Alice", "Example.ORG"), "a password")
    finally:
        store.close()
    assert read_account_keys(db) == {"alice@example.org"}
