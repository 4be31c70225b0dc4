"""One SMTP AUTH exchange (RFC 4954) in a session: drives a SASL mechanism from hato.smtp.sasl,
looks up SCRAM credentials, and verifies PLAIN/LOGIN passwords off the event loop with a cap on
how many argon2id checks run at once (each costs ~150 ms of CPU and 64 MiB).

The result is a value the session turns into a reply; the reply text never says whether the
account exists (RFC 4954 §6: 535 5.7.8 for any credentials problem).
"""

from __future__ import annotations

import asyncio
import os
import secrets
from dataclasses import dataclass
from typing import Protocol

from hato.model import Address, AddressError, Reply
from hato.model.auth import ScramCredentials
from hato.smtp.sasl import (
    Authenticated,
    Challenge,
    Failed,
    Mechanism,
    NeedCredentials,
    ScramSha256Mechanism,
    Step,
    VerifyPassword,
    new_mechanism,
)

BAD_CREDENTIALS = Reply(535, "5.7.8", "Authentication credentials invalid")
UNSUPPORTED = Reply(504, "5.5.4", "Unrecognized authentication type")
TEMP_AUTH_FAILURE = Reply(454, "4.7.0", "Temporary authentication failure")


class Accounts(Protocol):
    """What AUTH needs of the account store (hato.accounts.UserStore)."""

    def verify(self, address: Address, password: str) -> bool: ...

    def scram_credentials(self, address: Address) -> ScramCredentials | None: ...


@dataclass(frozen=True, slots=True)
class SendChallenge:
    data: bytes


@dataclass(frozen=True, slots=True)
class Success:
    user: Address


@dataclass(frozen=True, slots=True)
class Failure:
    reply: Reply
    reason: str  # for the log only
    username: str  # as claimed, for the log and per-account throttling


Result = SendChallenge | Success | Failure


def login_address(username: str) -> Address | None:
    """Accounts log in with their full address (RFC 4954 leaves the form to the server)."""
    try:
        return Address.parse(username.strip())
    except AddressError:
        return None


def acts_as_other(login: Address | None, authzid: str) -> bool:
    """RFC 4616 §2 / RFC 5802 §5.1: an authorization identity other than the login itself
    would mean acting as someone else, which nobody may do here. Accounts are compared as
    the account store keys them (local part and domain without regard to case)."""
    if not authzid:
        return False
    wanted = login_address(authzid)
    if login is None or wanted is None:
        return True
    return (wanted.local.lower(), wanted.domain) != (login.local.lower(), login.domain)


class AuthExchange:
    def __init__(self, accounts: Accounts, verify_slots: asyncio.Semaphore) -> None:
        self._accounts = accounts
        self._slots = verify_slots
        self._mechanism: Mechanism | None = None
        self._claimed = ""
        self._fallback_salt = os.urandom(16)

    async def start(self, mechanism: str, initial: bytes | None) -> Result:
        self._mechanism = new_mechanism(mechanism, lambda: secrets.token_urlsafe(18))
        if self._mechanism is None:
            return Failure(UNSUPPORTED, f"mechanism {mechanism} not offered", "")
        return await self._follow(self._mechanism.start(initial))

    async def respond(self, data: bytes) -> Result:
        if self._mechanism is None:
            return Failure(BAD_CREDENTIALS, "response without exchange", self._claimed)
        return await self._follow(self._mechanism.respond(data))

    def cancel(self) -> None:
        self._mechanism = None

    async def _follow(self, step: Step) -> Result:
        mechanism = self._mechanism
        assert mechanism is not None
        match step:
            case Challenge(data=data):
                return SendChallenge(data)
            case NeedCredentials(username=username, authzid=authzid):
                self._claimed = username
                user = login_address(username)
                if acts_as_other(user, authzid):
                    return Failure(BAD_CREDENTIALS, "authorization identity differs", username)
                creds = self._accounts.scram_credentials(user) if user else None
                assert isinstance(mechanism, ScramSha256Mechanism)
                return await self._follow(mechanism.credentials(creds, self._fallback_salt))
            case VerifyPassword(username=username, password=password, authzid=authzid):
                self._claimed = username
                return await self._verify(username, password, authzid)
            case Authenticated(username=username):
                user = login_address(username)
                if user is None:
                    return Failure(BAD_CREDENTIALS, "bad login name", username)
                return Success(user)
            case Failed(reason=reason):
                return Failure(BAD_CREDENTIALS, reason, self._claimed)
        raise AssertionError(f"unexpected SASL step {step!r}")

    async def _verify(self, username: str, password: str, authzid: str) -> Result:
        user = login_address(username)
        if acts_as_other(user, authzid):
            return Failure(BAD_CREDENTIALS, "authorization identity differs", username)
        async with self._slots:
            loop = asyncio.get_running_loop()
            if user is None:
                # Spend the same time as for a real account: no user enumeration by timing.
                await loop.run_in_executor(
                    None, self._accounts.verify, Address("invalid", "invalid"), password
                )
                return Failure(BAD_CREDENTIALS, "bad login name", username)
            ok = await loop.run_in_executor(None, self._accounts.verify, user, password)
        if not ok:
            return Failure(BAD_CREDENTIALS, "wrong password or unknown user", username)
        return Success(user)
