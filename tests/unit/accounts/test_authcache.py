"""The verified-credential cache ([auth] cache_ttl): a password that verified a moment ago is
not run through argon2id again; a change of password, the TTL, and a wrong password all go
back to the full verification. Time is a fake clock; nothing here is timed."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from argon2 import Parameters
from argon2.low_level import Type

from hato.accounts import UserStore
from hato.accounts.authcache import VerifiedCache
from hato.model import Address
from kit.clock import FakeClock

FAST = Parameters(
    type=Type.ID, version=19, salt_len=16, hash_len=32, time_cost=1, memory_cost=8, parallelism=1
)
ALICE = Address("alice", "example.org")
BOB = Address("bob", "example.org")
CAROL = Address("carol", "example.org")


class Counted:
    """The store's argon2id verification (`UserStore._check`), counting its calls."""

    def __init__(self, store: UserStore) -> None:
        self.calls = 0
        original = store._check

        def check(stored: str, password: str) -> bool:
            self.calls += 1
            return original(stored, password)

        store._check = check  # type: ignore[method-assign]


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


def _store(path: Path, cache: VerifiedCache | None) -> UserStore:
    return UserStore(path, parameters=FAST, scram_iterations=0, verified_cache=cache)


@pytest.fixture
def store(tmp_path: Path, clock: FakeClock) -> Iterator[UserStore]:
    store = _store(tmp_path / "users.db", VerifiedCache(300, 100, now=clock.monotonic))
    store.add(ALICE, "correct horse")
    yield store
    store.close()


def test_the_second_login_does_not_run_argon2id(store: UserStore) -> None:
    argon2 = Counted(store)
    assert store.verify(ALICE, "correct horse") and argon2.calls == 1
    assert store.verify(Address("Alice", "EXAMPLE.org"), "correct horse")  # same account
    assert argon2.calls == 1


def test_a_wrong_password_after_a_cached_success_fails_in_full(store: UserStore) -> None:
    argon2 = Counted(store)
    assert store.verify(ALICE, "correct horse")
    assert not store.verify(ALICE, "correct horse ")
    assert not store.verify(ALICE, "")
    assert argon2.calls == 3  # every failure costs the full verification: no negative cache
    assert store.verify(ALICE, "correct horse") and argon2.calls == 3  # still remembered


def test_a_password_change_invalidates(tmp_path: Path, store: UserStore) -> None:
    argon2 = Counted(store)
    assert store.verify(ALICE, "correct horse")
    other = _store(tmp_path / "users.db", None)  # `hato user passwd`, another process
    try:
        other.set_password(ALICE, "battery staple")
    finally:
        other.close()
    assert not store.verify(ALICE, "correct horse") and argon2.calls == 2
    assert store.verify(ALICE, "battery staple") and argon2.calls == 3
    assert store.verify(ALICE, "battery staple") and argon2.calls == 3


def test_a_removed_account_fails_at_once(store: UserStore) -> None:
    assert store.verify(ALICE, "correct horse")
    assert store.remove(ALICE)
    assert not store.verify(ALICE, "correct horse")


def test_the_ttl_expires(store: UserStore, clock: FakeClock) -> None:
    argon2 = Counted(store)
    assert store.verify(ALICE, "correct horse") and argon2.calls == 1
    clock.advance(299)
    assert store.verify(ALICE, "correct horse") and argon2.calls == 1
    clock.advance(1)
    assert store.verify(ALICE, "correct horse") and argon2.calls == 2  # verified anew
    clock.advance(299)
    assert store.verify(ALICE, "correct horse") and argon2.calls == 2  # from the new success


def test_ttl_zero_turns_the_cache_off(tmp_path: Path) -> None:
    store = _store(tmp_path / "users.db", VerifiedCache(0, 100))
    try:
        store.add(ALICE, "correct horse")
        argon2 = Counted(store)
        assert store.verify(ALICE, "correct horse") and store.verify(ALICE, "correct horse")
        assert argon2.calls == 2
    finally:
        store.close()


def test_the_cache_is_bounded_least_recently_used_out(clock: FakeClock) -> None:
    cache = VerifiedCache(300, 2, now=clock.monotonic)
    cache.remember("alice@example.org", "a", "hash-a")
    cache.remember("bob@example.org", "b", "hash-b")
    assert cache.verified("alice@example.org", "a", "hash-a")  # alice is now the most recent
    cache.remember("carol@example.org", "c", "hash-c")
    assert len(cache) == 2
    assert not cache.verified("bob@example.org", "b", "hash-b")
    assert cache.verified("alice@example.org", "a", "hash-a")
    assert cache.verified("carol@example.org", "c", "hash-c")


def test_memory_holds_keyed_hashes_not_passwords(clock: FakeClock) -> None:
    cache = VerifiedCache(300, 10, now=clock.monotonic)
    cache.remember("alice@example.org", "correct horse", "$argon2id$stored")
    held = repr(cache._entries).encode() + b"".join(v[0] for v in cache._entries.values())
    assert b"correct horse" not in held and b"argon2id" not in held
    # Another process's key: the same password gives another digest.
    again = VerifiedCache(300, 10, now=clock.monotonic)
    again.remember("alice@example.org", "correct horse", "$argon2id$stored")
    assert again._entries["alice@example.org"][0] != cache._entries["alice@example.org"][0]
    # The parts are length-prefixed: moving a character from one to the next does not match.
    assert not cache.verified("alice@example.org", "correct horse$", "argon2id$stored")


def test_a_cached_success_is_the_account_s_alone(store: UserStore) -> None:
    """Alice's remembered password opens neither bob's account nor a name that is none."""
    store.add(BOB, "bob's own phrase")
    argon2 = Counted(store)
    assert store.verify(ALICE, "correct horse")
    assert not store.verify(BOB, "correct horse")
    assert not store.verify(CAROL, "correct horse")  # no account: the dummy verification
    assert argon2.calls == 3
    assert store.verify(BOB, "bob's own phrase")
