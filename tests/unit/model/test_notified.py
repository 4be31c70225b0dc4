"""NotifiedCache (model/notified.py): what it keeps, when it forgets, and the read that
overlaps a notification."""

from __future__ import annotations

from hato.model.notified import NotifiedCache


def _asked(cache: NotifiedCache, value: object, calls: list[str]) -> object:
    def lookup() -> object:
        calls.append("read")
        return value

    return cache.get("k", lookup, bool)


def test_nothing_is_kept_until_listening_and_after_the_connection_is_lost() -> None:
    cache, calls = NotifiedCache(), list[str]()
    _asked(cache, True, calls)
    _asked(cache, True, calls)
    assert calls == ["read", "read"] and cache.hits == 0
    cache.on_state(True)
    _asked(cache, True, calls)
    _asked(cache, True, calls)
    assert len(calls) == 3 and cache.hits == 1
    cache.on_state(False)  # lost: the kept answer is not served, nothing new is kept
    _asked(cache, True, calls)
    _asked(cache, True, calls)
    assert len(calls) == 5 and cache.hits == 1
    cache.on_state(True)  # listening again: from a clean slate
    _asked(cache, True, calls)
    assert len(calls) == 6


def test_only_the_answers_keep_accepts_are_kept_until_a_notification() -> None:
    cache, calls = NotifiedCache(), list[str]()
    cache.on_state(True)
    assert [_asked(cache, False, calls) for _ in range(3)] == [False] * 3
    assert len(calls) == 3 and cache.hits == 0  # a "no" is asked every time
    _asked(cache, True, calls)
    _asked(cache, True, calls)
    assert len(calls) == 4 and cache.hits == 1
    cache.on_note("users")
    assert _asked(cache, False, calls) is False and len(calls) == 5


def test_a_read_overlapping_a_notification_is_not_kept() -> None:
    cache = NotifiedCache()
    cache.on_state(True)

    def lookup() -> bool:
        cache.on_note("users")  # the change committed while the read was under way
        return True

    assert cache.get("k", lookup, bool) is True
    calls: list[str] = []
    _asked(cache, True, calls)
    assert calls == ["read"] and cache.hits == 0
