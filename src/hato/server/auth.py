"""One SMTP AUTH exchange (RFC 4954) in a session: drives a SASL mechanism from hato.smtp.sasl,
looks up SCRAM credentials, and verifies PLAIN/LOGIN passwords off the event loop with a cap on
how many argon2id checks run at once (each costs ~150 ms of CPU and 64 MiB). `VerifySlots` is
that cap, and it lets one verification per account run at a time: ten sessions of one relay
logging in together then cost one argon2id run, the other nine find it in the account store's
cache of verified passwords ([auth] cache_ttl) when their turn comes, where each used to run
its own (a wrong password is never cached: each still costs its full run).

The result is a value the session turns into a reply; the reply text never says whether the
account exists (RFC 4954 §6: 535 5.7.8 for any credentials problem). Neither does SCRAM's
server-first message: an unknown user gets a salt and iteration count that look like an
account's and stay the same at every try (`ScramDecoy`, keyed by the server's secret), where a
fresh random salt each time would tell a probe that no such account exists.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import secrets
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Protocol

from hato.model import Address, AddressError, Reply
from hato.model.auth import SCRAM_ITERATIONS, ScramCredentials
from hato.model.storeerror import StoreUnavailable
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
# RFC 4954 §6: 454 4.7.0 when the server cannot check the credentials now (the account store
# cannot be reached): no failed login, the client tries again later.
TEMP_AUTH_FAILURE = Reply(454, "4.7.0", "Temporary authentication failure")


class Accounts(Protocol):
    """What AUTH needs of the account store (hato.accounts.UserStore)."""

    def verify(self, address: Address, password: str) -> bool: ...

    def scram_credentials(self, address: Address) -> ScramCredentials | None: ...


@dataclass(frozen=True, slots=True)
class ScramDecoy:
    """The SCRAM salt and iteration count shown for a user name that is not an account.

    RFC 5802 §5.1 has the server send the user's salt and iteration count before any proof,
    so they must not differ in kind between accounts and non-accounts: the salt is an HMAC of
    the name under the server's secret (`DATA_DIR/secret`), the count the one new accounts get.
    """

    secret: bytes
    iterations: int = SCRAM_ITERATIONS

    def salt(self, username: str) -> bytes:
        name = username.strip().lower().encode("utf-8", "surrogatepass")
        return hmac.digest(self.secret, b"hato-scram-salt\0" + name, "sha256")[:16]


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


class VerifySlots(asyncio.Semaphore):
    """How many password verifications run at once (the semaphore), and one per account."""

    def __init__(self, value: int = 2) -> None:
        super().__init__(value)
        self._accounts: dict[str, tuple[asyncio.Lock, int]] = {}  # lock, tasks using it

    def using(self, key: str) -> int:
        """How many logins of `key` are verifying or waiting to."""
        return self._accounts.get(key, (None, 0))[1]

    @contextlib.asynccontextmanager
    async def account(self, key: str) -> AsyncIterator[None]:
        """One verification of `key` at a time; the entry goes when nobody waits."""
        lock, users = self._accounts.get(key, (asyncio.Lock(), 0))
        self._accounts[key] = (lock, users + 1)
        try:
            async with lock:
                yield
        finally:
            lock, users = self._accounts[key]
            if users == 1:
                del self._accounts[key]
            else:
                self._accounts[key] = (lock, users - 1)


class AuthExchange:
    def __init__(self, accounts: Accounts, verify_slots: VerifySlots, decoy: ScramDecoy) -> None:
        self._accounts = accounts
        self._slots = verify_slots
        self._decoy = decoy
        self._mechanism: Mechanism | None = None
        self._claimed = ""

    @property
    def claimed(self) -> str:
        """The user name the client gave so far ("" before it gave one)."""
        return self._claimed

    async def start(self, mechanism: str, initial: bytes | None) -> Result:
        self._mechanism = new_mechanism(mechanism, lambda: secrets.token_urlsafe(18))
        if self._mechanism is None:
            return Failure(UNSUPPORTED, f"mechanism {mechanism} not offered", "")
        return await self._follow(self._mechanism.start(initial))

    async def respond(self, data: bytes) -> Result:
        if self._mechanism is None:
            return Failure(BAD_CREDENTIALS, "response without exchange", self._claimed)
        return await self._follow(self._mechanism.respond(data))

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
                try:
                    creds = self._accounts.scram_credentials(user) if user else None
                except StoreUnavailable as exc:
                    return Failure(TEMP_AUTH_FAILURE, str(exc), username)
                assert isinstance(mechanism, ScramSha256Mechanism)
                decoy = self._decoy  # shown when there is no such account
                step = mechanism.credentials(creds, decoy.salt(username), decoy.iterations)
                return await self._follow(step)
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
        try:
            return await self._check(username, password, authzid)
        except StoreUnavailable as exc:
            return Failure(TEMP_AUTH_FAILURE, str(exc), username)

    async def _check(self, username: str, password: str, authzid: str) -> Result:
        user = login_address(username)
        if acts_as_other(user, authzid):
            return Failure(BAD_CREDENTIALS, "authorization identity differs", username)
        loop = asyncio.get_running_loop()
        if user is None:
            async with self._slots:
                # Spend the same time as for a real account: no user enumeration by timing.
                await loop.run_in_executor(
                    None, self._accounts.verify, Address("invalid", "invalid"), password
                )
            return Failure(BAD_CREDENTIALS, "bad login name", username)
        # Accounts are keyed without regard to case (as acts_as_other compares them).
        async with self._slots.account(f"{user.local.lower()}@{user.domain}"), self._slots:
            ok = await loop.run_in_executor(None, self._accounts.verify, user, password)
        if not ok:
            return Failure(BAD_CREDENTIALS, "wrong password or unknown user", username)
        return Success(user)
