"""One AUTH exchange (server/auth.py): who a login may act as (RFC 4616 §2, RFC 5802 §5.1)."""

import asyncio

import pytest

from hato.model import Address
from hato.model.auth import ScramCredentials
from hato.model.storeerror import StoreUnavailable
from hato.server.auth import (
    AuthExchange,
    Failure,
    ScramDecoy,
    SendChallenge,
    Success,
    VerifySlots,
    acts_as_other,
    login_address,
)

PASSWORD = "pencil"
SALT = b"s" * 16


class _Accounts:
    def verify(self, address: Address, password: str) -> bool:
        return address == Address("alice", "users.test") and password == PASSWORD

    def scram_credentials(self, address: Address) -> ScramCredentials | None:
        return ScramCredentials.derive(PASSWORD, SALT)


def _exchange() -> AuthExchange:
    return AuthExchange(_Accounts(), VerifySlots(1), ScramDecoy(b"k" * 32))


@pytest.mark.parametrize(
    ("login", "authzid", "other"),
    [
        ("alice@users.test", "", False),
        ("alice@users.test", "alice@users.test", False),
        ("alice@users.test", "Alice@USERS.test", False),  # the same account in another case
        ("alice@users.test", "bob@users.test", True),
        ("alice@users.test", "not an address", True),
    ],
)
def test_acts_as_other(login: str, authzid: str, other: bool) -> None:
    assert acts_as_other(login_address(login), authzid) is other


def test_plain_with_the_login_as_authzid_in_another_case_succeeds() -> None:
    exchange = _exchange()
    result = asyncio.run(
        exchange.start("PLAIN", f"ALICE@users.test\0alice@users.test\0{PASSWORD}".encode())
    )
    assert isinstance(result, Success)


def test_plain_with_another_users_authzid_fails() -> None:
    result = asyncio.run(
        _exchange().start("PLAIN", f"bob@users.test\0alice@users.test\0{PASSWORD}".encode())
    )
    assert isinstance(result, Failure) and result.reply.code == 535


def test_scram_with_another_users_authzid_fails_before_any_challenge() -> None:
    first = b"n,a=bob@users.test,n=alice@users.test,r=abcdef"
    result = asyncio.run(_exchange().start("SCRAM-SHA-256", first))
    assert isinstance(result, Failure) and result.reply.code == 535
    own = b"n,a=Alice@users.test,n=alice@users.test,r=abcdef"
    assert isinstance(asyncio.run(_exchange().start("SCRAM-SHA-256", own)), SendChallenge)


class _DownAccounts:
    """The shared account store cannot be reached ([store] postgresql down)."""

    def verify(self, address: Address, password: str) -> bool:
        raise StoreUnavailable("connection refused")

    def scram_credentials(self, address: Address) -> ScramCredentials | None:
        raise StoreUnavailable("connection refused")


@pytest.mark.parametrize(
    ("mechanism", "initial"),
    [
        ("PLAIN", f"\0alice@users.test\0{PASSWORD}".encode()),
        ("SCRAM-SHA-256", b"n,,n=alice@users.test,r=abcdef"),
    ],
)
def test_an_unreachable_account_store_is_a_temporary_failure(
    mechanism: str, initial: bytes
) -> None:
    exchange = AuthExchange(_DownAccounts(), VerifySlots(1), ScramDecoy(b"k" * 32))
    result = asyncio.run(exchange.start(mechanism, initial))
    # RFC 4954 §6: 454 4.7.0 Temporary authentication failure (not 535: no wrong password).
    assert isinstance(result, Failure)
    assert (result.reply.code, result.reply.enhanced) == (454, "4.7.0")
