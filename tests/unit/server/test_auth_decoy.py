"""SCRAM's answer for names that are not accounts (server/auth.py ScramDecoy)."""

from __future__ import annotations

from hato.server.auth import ScramDecoy


def test_the_salt_is_stable_per_name_and_secret() -> None:
    decoy = ScramDecoy(b"k" * 32, 100_000)
    assert decoy.salt("nobody@example.org") == decoy.salt(" Nobody@Example.org ")
    assert len(decoy.salt("nobody@example.org")) == 16
    assert decoy.salt("nobody@example.org") != decoy.salt("other@example.org")
    assert ScramDecoy(b"j" * 32).salt("nobody@example.org") != decoy.salt("nobody@example.org")
