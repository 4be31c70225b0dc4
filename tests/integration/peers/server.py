"""What every server under test offers the tests: one shape for Hato and a private Postfix."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol


@dataclass(frozen=True, slots=True)
class DomainSetup:
    """A local domain: either every local part is accepted, or only `users` exist."""

    name: str
    accept_any: bool = False
    users: tuple[str, ...] = ()
    # Aliases of this domain: (local part, (target, ...)); a target without "@" is local.
    aliases: tuple[tuple[str, tuple[str, ...]], ...] = ()


# Every account the harness creates (`hato user add`) gets this password.
USER_PASSWORD = "integration-test-password"


@dataclass(frozen=True, slots=True)
class TlsFiles:
    """A PEM certificate chain and its key, given to the server as its [tls] section."""

    cert: Path
    key: Path


@dataclass(frozen=True, slots=True)
class AcmeSetup:
    """[tls] acme = {...}: certificates from an ACME server (e.g. Pebble) instead of files."""

    email: str
    directory: str
    ca_file: Path
    http_address: str
    challenge: str = "http-01"
    tls_address: str = "127.0.0.1:443"


@dataclass(frozen=True, slots=True)
class AuthSetup:
    """The [auth] throttle settings a test sets (None: the server's default)."""

    failure_delay: float | None = None
    max_failure_delay: float | None = None
    max_failures: int | None = None
    max_account_failures: int | None = None
    failure_window: float | None = None
    block_time: float | None = None


@dataclass(frozen=True, slots=True)
class MailSetup:
    """The part of the configuration a test cares about."""

    domains: tuple[DomainSetup, ...] = field(
        default_factory=lambda: (
            DomainSetup("example.org", accept_any=True),
            DomainSetup("users.test", users=("alice", "load")),
        )
    )
    max_message_size: int = 1024 * 1024
    max_recipients: int = 100
    min_free_space: int = 1024 * 1024
    # Simultaneous connections from one client IP (None: the server's default; Hato's is 20).
    max_connections_per_ip: int | None = None
    # Also listen with the roles "submission" (STARTTLS, RFC 3207) and "submissions" (implicit
    # TLS, RFC 8314) on `submission_port` / `submissions_port` of the server (Hato only).
    submission: bool = False
    # The [tls] section; None: no [tls] (Hato then makes a self-signed certificate itself).
    tls: TlsFiles | None = None
    acme: AcmeSetup | None = None  # with tls None
    auth: AuthSetup | None = None
    # [store] backend = "postgresql": the DSN (no password) and the password file; None: SQLite.
    store: tuple[str, Path] | None = None
    # [store] node and heartbeat (seconds) of a node on PostgreSQL (None: the defaults).
    node: str | None = None
    heartbeat: float | None = None
    # [store] lease_time (with store; [delivery] attempt_timeout is set to half of it).
    lease_time: float | None = None
    # [local] mailboxes: a Maildir tree several servers share (None: DATA_DIR/mailboxes).
    mailboxes: Path | None = None
    # [queue] direct_local_delivery: false sends local mail through the queue too.
    direct_local_delivery: bool = True
    # [limits] messages_per_hour of authenticated senders (None: the server's default).
    messages_per_hour: int | None = None
    # [limits] max_junk_commands (None: the server's default, 100): a test whose session
    # probes the server with NOOP in a loop sets it out of the way.
    max_junk_commands: int | None = None
    # [limits] max_header_fields (None: the server's default, 1000).
    max_header_fields: int | None = None
    # [queue] delay_warning_time in seconds (None: the server's default, 4 h).
    delay_warning_time: int | None = None


def submission_setup(tls: TlsFiles, auth: AuthSetup | None = None) -> MailSetup:
    """mx + submission + submissions with the given certificate.

    users.test has the accounts alice, bob and carol; `sales` is an alias that delivers to
    alice, `team` to alice and bob; example.org accepts any local part (no accounts).
    """
    return MailSetup(
        domains=(
            DomainSetup("example.org", accept_any=True),
            DomainSetup(
                "users.test",
                users=("alice", "bob", "carol"),
                aliases=(("sales", ("alice",)), ("team", ("alice", "bob"))),
            ),
        ),
        submission=True,
        tls=tls,
        auth=auth,
    )


class MailServer(Protocol):
    """A running (or stoppable) SMTP server that delivers into Maildirs on this machine."""

    name: str
    host: str
    port: int
    data_dir: Path
    # True when the server stores messages with CRLF line ends (Hato), False for LF (Postfix).
    stores_crlf: bool

    def start(self) -> None: ...

    def stop(self) -> None:
        """Graceful stop (SIGTERM or the server's own stop command)."""

    def kill(self) -> None:
        """Stop without warning (SIGKILL to every process of the server)."""

    def alive(self) -> bool: ...

    def mailbox(self, user: str, domain: str) -> Path:
        """The Maildir root a message for user@domain lands in."""

    def mailboxes(self) -> Path:
        """The directory holding every Maildir of this server."""

    def log_text(self) -> str: ...

    def peak_rss_kib(self) -> int | None:
        """Peak resident memory of the main process (VmHWM), while it runs."""


def format_size(size: int) -> str:
    """A size as the config files write it: "1M", "64K" or plain bytes."""
    for unit, factor in (("M", 1024 * 1024), ("K", 1024)):
        if size % factor == 0:
            return f"{size // factor}{unit}"
    return str(size)


class MakeServer(Protocol):
    """The `make_server` fixture: start a server (Hato, or Postfix to prove the harness)."""

    def __call__(
        self, setup: MailSetup | None = None, data_dir: Path | None = None
    ) -> MailServer: ...
