"""Users' public keys and key policies on a real PostgreSQL: the KeyStore behaviour the SQLite
store has (put replaces, get, WKD look-up, remove, list, policies), seen from a second store
on the same database as another node would."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from peers.postgres import PASSWORD, PostgresServer
from psycopg_pool import ConnectionPool

from hato.crypto import FailurePolicy, KeyStore
from hato.crypto.keys import KeyKind, PublicKey
from hato.crypto.keystore_pg import PgKeyStore
from hato.crypto.wkdhash import wkd_hash
from hato.model import Address
from hato.pgstore import PgSettings, migrate, open_pool

NOW = dt.datetime(2026, 1, 2, tzinfo=dt.UTC)
ALICE = Address("Alice", "Users.test")


def _key(data: bytes, kind: KeyKind = KeyKind.OPENPGP) -> PublicKey:
    return PublicKey(kind, ALICE, data, data.hex(), None, "ed25519")


@pytest.fixture
def pool(pg_dsn: str, postgres: PostgresServer) -> Iterator[ConnectionPool[psycopg.Connection]]:
    with psycopg.connect(pg_dsn, password=PASSWORD, autocommit=True) as conn:
        migrate(conn)
    pool = open_pool(PgSettings(pg_dsn, postgres.password_file, pool_size=2))
    yield pool
    pool.close()


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_keys_and_policies_behave_alike(
    backend: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    if backend == "sqlite":
        one: KeyStore = KeyStore(tmp_path / "keys.db")
        other: KeyStore = KeyStore(tmp_path / "keys.db")
    else:
        shared = request.getfixturevalue("pool")
        one, other = PgKeyStore(shared), PgKeyStore(shared)
    assert other.get(ALICE) is None and other.policy(ALICE) is FailurePolicy.DEFER
    one.put(_key(b"\x01\x02"), NOW)
    one.put(_key(b"\x03\x04"), NOW)  # a new key replaces the old one
    found = other.get(Address("alice", "users.test"))
    assert found is not None and found.data == b"\x03\x04"
    assert found.address == Address("Alice", "users.test")  # the domain in lower case
    wkd = other.find_wkd("USERS.test", wkd_hash("alice"))
    assert wkd is not None and wkd.fingerprint == "0304"
    assert [k.fingerprint for k in other.list()] == ["0304"]
    one.set_policy(ALICE, FailurePolicy.PLAINTEXT)
    one.set_policy(ALICE, FailurePolicy.DEFER)
    one.set_policy(ALICE, FailurePolicy.PLAINTEXT)
    assert other.policy(ALICE) is FailurePolicy.PLAINTEXT
    bob = Address("bob", "users.test")
    assert other.with_keys([ALICE, Address("ALICE", "Users.Test"), bob]) == {
        ALICE,
        Address("ALICE", "Users.Test"),
    }  # one read; the address as asked
    assert one.remove(ALICE) and not one.remove(ALICE)
    assert other.get(ALICE) is None and other.list() == []
    assert other.with_keys([ALICE, bob]) == set() and other.with_keys([]) == set()
    assert other.cache_stamp == (tmp_path / "keys.db" if backend == "sqlite" else None)
