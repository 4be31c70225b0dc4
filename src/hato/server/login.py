"""The session's side of SMTP AUTH (RFC 4954): one exchange at a time, the throttle, the log.

Theory of operation: the session hands every AUTH event here and awaits the answer (reading is
paused meanwhile, so nothing overtakes it). Before any step of an exchange the client's block
is checked again: a block set while a session was already open (by the same client's other
connections) must stop that session's guessing too, not only new connections. Every way an
exchange can end without success costs the same: a 535 after the throttle's delay, a cancel
("*", RFC 4954 §4) or a garbled response (501 from the core) alike are counted as failures,
delayed and logged as one `event=auth-failed` line, so that neither reveals anything for free
(a SCRAM exchange abandoned after the server-first message would otherwise be a silent probe).

The log line names the client the server saw (never anything the client typed before it), so
the fail2ban filter in contrib/fail2ban matches only a client's own failures.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING

from hato.model import Address, Reply, logfmt
from hato.policy import AUTH_BLOCKED
from hato.server.auth import AuthExchange, Failure, Result, SendChallenge, Success

if TYPE_CHECKING:
    from hato.server.context import SessionContext
    from hato.smtp import ServerConnection

log = logging.getLogger("hato.smtpd")


class Login:
    """AUTH for one session: `start`, `respond` and `abandoned` answer on the connection."""

    def __init__(self, ctx: SessionContext, client_ip: str, session_id: str) -> None:
        self._ctx = ctx
        self._client_ip = client_ip
        self._session_id = session_id
        self._exchange: AuthExchange | None = None
        self._mechanism = ""

    @property
    def active(self) -> bool:
        """An exchange is waiting for the client's next response."""
        return self._exchange is not None

    async def start(
        self, conn: ServerConnection, mechanism: str, initial: bytes | None
    ) -> Address | None:
        """AUTH MECHANISM [initial]: the authenticated user once it succeeds, else None."""
        self._mechanism = mechanism
        if self._refuse_blocked(conn):
            return None
        ctx = self._ctx
        self._exchange = AuthExchange(ctx.accounts or _NO_ACCOUNTS, ctx.verify_slots, ctx.scram)
        return await self._answer(conn, await self._exchange.start(mechanism, initial))

    async def respond(self, conn: ServerConnection, data: bytes) -> Address | None:
        """The client's response to a 334 challenge."""
        if self._refuse_blocked(conn):
            return None
        exchange = self._exchange
        if exchange is None:  # the core sends responses only inside an exchange
            raise AssertionError("AUTH response without an exchange")
        return await self._answer(conn, await exchange.respond(data))

    async def abandoned(self, reason: str) -> Reply | None:
        """The exchange ended with a 501 the core already sent ("*" or a bad response): count
        and log it like a wrong password; the reply to close with when that blocks the client."""
        exchange, self._exchange = self._exchange, None
        username = exchange.claimed if exchange is not None else ""
        blocked = await self._failed(username, reason)
        return AUTH_BLOCKED if blocked else None

    def _refuse_blocked(self, conn: ServerConnection) -> bool:
        throttle = self._ctx.throttle
        if throttle is None or not throttle.blocked(self._client_ip):
            return False
        self._exchange = None
        self._log_failure("", "client blocked", blocked=True)
        conn.reply(AUTH_BLOCKED)  # RFC 5321 §3.8: 421 closes the connection
        return True

    async def _answer(self, conn: ServerConnection, result: Result) -> Address | None:
        match result:
            case SendChallenge(data=data):
                conn.auth_challenge(data)
                return None
            case Success(user=user):
                self._exchange = None
                if self._ctx.throttle is not None:
                    self._ctx.throttle.record_success(self._client_ip, str(user))
                log.info(
                    logfmt(
                        "auth",
                        session=self._session_id,
                        client=self._client_ip,
                        user=user,
                        result="ok",
                    )
                )
                conn.accept()
                return user
            case Failure(reply=reply, reason=reason, username=username):
                self._exchange = None
                if reply.code == 454:  # the account store is down: no guess, not counted
                    log.warning(logfmt("store-unavailable", session=self._session_id,
                                       user=username or None, error=reason))  # fmt: skip
                    conn.reply(reply)
                    return None
                if reply.code != 535:  # 504: a mechanism we do not offer is no guess
                    self._log_failure(username, reason, blocked=False)
                    conn.reply(reply)
                    return None
                blocked = await self._failed(username, reason)
                conn.reply(AUTH_BLOCKED if blocked else reply)
                return None

    async def _failed(self, username: str, reason: str) -> bool:
        """Count one failure, wait the throttle's delay, log it; whether the client is now
        blocked. RFC 4954 §4 leaves the pace to us: each failure waits longer, and too many
        from one client block that client for a while."""
        self._ctx.metrics.auth_failed(self._mechanism or None)
        throttle = self._ctx.throttle
        blocked = False
        if throttle is not None:
            failure = throttle.record_failure(self._client_ip, username or None)
            blocked = failure.blocked
            if failure.account_alert:
                # Many clients guessing one account: for the operator, not for fail2ban (no
                # single client did it).
                log.warning(
                    logfmt(
                        "auth-account-attacked",
                        user=username,
                        failures=failure.account_failures,
                    )
                )
            await asyncio.sleep(failure.delay)
        self._log_failure(username, reason, blocked=blocked)
        return blocked

    def _log_failure(self, username: str, reason: str, *, blocked: bool) -> None:
        # One line a fail2ban filter can match (contrib/fail2ban); never the password.
        log.warning(
            logfmt(
                "auth-failed",
                session=self._session_id,
                client=self._client_ip,
                user=username or None,
                mechanism=self._mechanism,
                reason=reason,
                blocked="yes" if blocked else None,
            )
        )


class _NoAccounts:
    """AUTH where no account store is wired (never offered then; refuse safely)."""

    def verify(self, address: Address, password: str) -> bool:
        return False

    def scram_credentials(self, address: Address) -> None:
        return None


_NO_ACCOUNTS = _NoAccounts()
