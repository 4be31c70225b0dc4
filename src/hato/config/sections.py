"""The sections of hato.toml as frozen pydantic models, one per table.

Every field has a `description` saying what a valid value looks like: the loader uses it in the
error message when a value has the wrong type. Validators raise ValueError with a message that
names the fix; the loader adds the key path. Relative paths are resolved against
`ParseContext.base_dir`, passed as pydantic's validation context.

Must not import anything of hato but model.
"""

from __future__ import annotations

import enum
from typing import Annotated

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PlainValidator,
    StrictBool,
    StrictInt,
    StrictStr,
    ValidationInfo,
    field_validator,
    model_validator,
)

from hato.config.acme_sections import AcmeSettings
from hato.config.authcheck_sections import AuthcheckSettings
from hato.config.directory_sections import DomainSettings, LocalSettings
from hato.config.doctor_sections import DoctorSettings
from hato.config.fields import AbsolutePath, ReadableFile, Size
from hato.config.filter_sections import MilterSettings, RspamdSettings
from hato.config.ops_sections import (
    GROUP_DESCRIPTION,
    USER_DESCRIPTION,
    MetricsSettings,
    SystemGroup,
    SystemUser,
    WkdSettings,
    check_group_has_user,
)
from hato.config.outbound_sections import DeliverySettings, SmarthostSettings, TransportSettings
from hato.config.policy_sections import AuthSettings, DnsSettings, NetworkSettings
from hato.config.reports_sections import ReportsSettings
from hato.config.screen_sections import ScreenSettings
from hato.config.store_sections import StoreSettings
from hato.config.values import ListenAddress, at_least, parse_domain_name, parse_listen_address
from hato.model import Role

_SECTION = ConfigDict(frozen=True, extra="forbid")

# RFC 5321 §4.5.3.1.8: a server MUST be able to buffer at least 100 recipients.
MIN_HOPS = 10  # Received: + Delivered-To: fields of a message that is a loop
MIN_RECIPIENTS = 100
# RFC 5321 §4.5.3.2.7: a server SHOULD wait at least 5 minutes for the next command.
# RFC 5321 §4.5.3.2.7 asks for at least 5 minutes (the default); shorter values are allowed
# for closed set-ups and tests, but never below one second.
MIN_IDLE_TIMEOUT = 1
# RFC 5321 §4.5.3.1.6: a text line is up to 1000 octets including CRLF.
MIN_TEXT_LINE = 1000
# Header fields per message: RFC 5322 §3.6 sets no maximum. Honest mail carries tens to a few
# hundred (a relay path stops at hopcount_limit, 50 Received); each field costs every check
# that reads the section, so the most is ten times the default (docs/security.md).
HEADER_FIELDS = (100, 10_000)
# RFC 5321 §4.5.4.1: the queue gives up after 5 days (queue/schedule.py max_lifetime); a
# delay warning due at or after that would never be sent.
QUEUE_LIFETIME = 5 * 86_400


class LogFormat(enum.StrEnum):
    TEXT = "text"  # key=value lines
    JSON = "json"  # one JSON object per line


class LogLevel(enum.StrEnum):
    DEBUG = "debug"
    INFO = "info"
    WARNING = "warning"
    ERROR = "error"


class ServerSettings(BaseModel):
    """[server]. The loader fills `hostname` and `data_dir` with their defaults."""

    model_config = _SECTION

    hostname: Annotated[str, PlainValidator(parse_domain_name)] = Field(
        description='a domain name, e.g. "mail.example.org"'
    )
    data_dir: AbsolutePath = Field(description='a directory path, e.g. "/var/lib/hato"')
    log_format: LogFormat = Field(LogFormat.TEXT, description='"text" or "json"')
    log_level: LogLevel = Field(
        LogLevel.INFO, description='one of "debug", "info", "warning", "error"'
    )
    workers: StrictInt = Field(
        0,
        description="server processes sharing the listening sockets: 0 for one per CPU (the "
        "default), or 1..64 (mx connections spread over all of them; submission stays in the "
        "first)",
    )

    @field_validator("workers")
    @classmethod
    def _workers(cls, value: int) -> int:
        if not 0 <= value <= 64:
            raise ValueError(f"must be 0 (one per CPU) or 1..64, got {value}")
        return value

    user: SystemUser | None = Field(None, description=USER_DESCRIPTION)
    group: SystemGroup | None = Field(None, description=GROUP_DESCRIPTION)
    submit_socket: AbsolutePath | None = Field(
        None,
        description='a unix socket path, e.g. "/run/hato/submit.sock": mode 0666, takes only '
        "submissions, so every local user (cron, PHP) can use hato-sendmail",
    )

    @field_validator("group")
    @classmethod
    def _group_has_user(cls, value: str | None, info: ValidationInfo) -> str | None:
        # A user that failed its own validation is missing from info.data: reported already.
        return check_group_has_user(value, user_missing=info.data.get("user", "") is None)


class ListenerSettings(BaseModel):
    """One [[listener]]: a port and what it is for."""

    model_config = _SECTION

    role: Role = Field(description='one of "mx", "submission", "submissions"')
    address: Annotated[ListenAddress, PlainValidator(parse_listen_address)] = Field(
        description='HOST:PORT, e.g. "0.0.0.0:25" or "[::1]:25"'
    )
    max_connections: StrictInt = Field(1000, description="an integer, at least 1")
    # Postfix's smtpd_client_connection_count_limit default: 50.
    max_connections_per_ip: StrictInt = Field(50, description="an integer, at least 1")
    refuse_networks: tuple[StrictStr, ...] = Field(
        (), description='an array of [[network]] names, e.g. ["dynamic"]'
    )
    allow_networks: tuple[StrictStr, ...] = Field(
        (), description='an array of [[network]] names, e.g. ["office"]; [] = everyone'
    )

    @field_validator("max_connections", "max_connections_per_ip")
    @classmethod
    def _positive(cls, value: int) -> int:
        return at_least(1, value)

    @property
    def host(self) -> str:
        return self.address.host

    @property
    def port(self) -> int:
        return self.address.port


class TlsSettings(BaseModel):
    """[tls]: the certificate chain and private key (PEM) for STARTTLS and implicit TLS."""

    model_config = _SECTION

    cert: ReadableFile | None = Field(
        None, description="the path of a readable PEM certificate chain file"
    )
    key: ReadableFile | None = Field(
        None, description="the path of a readable PEM private key file"
    )
    acme: AcmeSettings | None = Field(
        None, description='a table: { email = "postmaster@example.org" } (docs/operations.md)'
    )

    @model_validator(mode="after")
    def _files_or_acme(self) -> TlsSettings:
        if self.acme is not None and (self.cert is not None or self.key is not None):
            raise ValueError("give either cert and key, or acme (which writes its own files)")
        if self.acme is None and (self.cert is None or self.key is None):
            raise ValueError('needs cert and key (paths of PEM files), or acme = { email = "..." }')
        return self


class LimitsSettings(BaseModel):
    """[limits]: what one SMTP session may use."""

    model_config = _SECTION

    max_message_size: Size = Field(
        50 * 1024**2, description='octets as an integer, or a string like "10K", "50M", "1G"'
    )
    max_recipients: StrictInt = Field(100, description=f"an integer, at least {MIN_RECIPIENTS}")
    max_bad_commands: StrictInt = Field(20, description="an integer, at least 1")
    max_refused_recipients: StrictInt = Field(100, description="an integer, at least 1")
    max_junk_commands: StrictInt = Field(100, description="an integer, at least 1")
    idle_timeout: StrictInt = Field(
        300, description=f"seconds as an integer, at least {MIN_IDLE_TIMEOUT}"
    )
    session_timeout: StrictInt = Field(3600, description="seconds as an integer")
    tls_handshake_timeout: StrictInt = Field(30, description="seconds as an integer, 1..300")
    max_text_line: StrictInt = Field(
        1000, description=f"octets as an integer: 0 (no limit) or at least {MIN_TEXT_LINE}"
    )
    messages_per_hour: StrictInt = Field(200, description="an integer: 0 (no limit) or more")
    recipients_per_hour: StrictInt = Field(1000, description="an integer: 0 (no limit) or more")
    spike_recipients: StrictInt = Field(300, description="an integer: 0 (off) or more")
    spike_window: StrictInt = Field(300, description="seconds as an integer, 60..3600")
    spike_hold: StrictBool = Field(True, description="true or false")
    hold_time: StrictInt = Field(
        86_400, description="seconds as an integer: 0 (until released) or more"
    )
    hopcount_limit: StrictInt = Field(50, description=f"an integer, at least {MIN_HOPS}")
    max_header_fields: StrictInt = Field(
        1000, description="an integer, {}..{}".format(*HEADER_FIELDS)
    )

    @field_validator("max_header_fields")
    @classmethod
    def _header_fields(cls, value: int) -> int:
        low, high = HEADER_FIELDS
        if not low <= value <= high:
            raise ValueError(f"must be {low}..{high} header fields, got {value}")
        return value

    @field_validator("hopcount_limit")
    @classmethod
    def _hops(cls, value: int) -> int:
        # RFC 5321 §6.3: loops MUST be stopped, and a count too small bounces honest mail.
        return at_least(MIN_HOPS, value)

    @field_validator("messages_per_hour", "recipients_per_hour", "spike_recipients", "hold_time")
    @classmethod
    def _zero_or_more(cls, value: int) -> int:
        return at_least(0, value)

    @field_validator("spike_window")
    @classmethod
    def _spike_window(cls, value: int) -> int:
        # Counted in one-minute buckets over at most the hour the limits use.
        if not 60 <= value <= 3600:
            raise ValueError(f"must be 60..3600 seconds (whole minutes are counted), got {value}")
        return value

    @field_validator(
        "max_message_size", "max_bad_commands", "max_refused_recipients", "max_junk_commands"
    )
    @classmethod
    def _positive(cls, value: int) -> int:
        # RFC 1870 §4: SIZE 0 would mean "no fixed limit"; a limit of 0 octets accepts nothing.
        return at_least(1, value)

    @field_validator("max_recipients")
    @classmethod
    def _recipients(cls, value: int) -> int:
        # RFC 5321 §4.5.3.1.8: the minimum number of recipients that MUST be buffered is 100.
        return at_least(MIN_RECIPIENTS, value, " (RFC 5321 §4.5.3.1.8)")

    @field_validator("idle_timeout")
    @classmethod
    def _idle(cls, value: int) -> int:
        # RFC 5321 §4.5.3.2.7: the server timeout SHOULD be at least 5 minutes.
        return at_least(MIN_IDLE_TIMEOUT, value, " second")

    @field_validator("max_text_line")
    @classmethod
    def _text_line(cls, value: int) -> int:
        # RFC 5321 §4.5.3.1.6: text lines of 1000 octets (with CRLF) must be accepted.
        if value != 0 and value < MIN_TEXT_LINE:
            raise ValueError(
                f"must be 0 (no limit) or at least {MIN_TEXT_LINE} (RFC 5321 §4.5.3.1.6), "
                f"got {value}"
            )
        return value

    @field_validator("session_timeout")
    @classmethod
    def _session_covers_idle(cls, value: int, info: ValidationInfo) -> int:
        idle = info.data.get("idle_timeout", MIN_IDLE_TIMEOUT)
        return at_least(idle, value, " seconds (limits.idle_timeout)")

    @field_validator("tls_handshake_timeout")
    @classmethod
    def _handshake(cls, value: int) -> int:
        if not 1 <= value <= 300:
            raise ValueError(f"must be 1 to 300 seconds, got {value}")
        return value


class QueueSettings(BaseModel):
    """[queue]."""

    model_config = _SECTION

    min_free_space: Size = Field(
        100 * 1024**2, description='octets as an integer, or a string like "100M", "1G"'
    )
    # Mail for local mailboxes goes into the Maildir during the SMTP transaction, before the
    # 250, without a queue row; false: every message is queued first (intake/direct.py).
    direct_local_delivery: bool = Field(True, description="true or false")
    # RFC 3464 action=delayed (RFC 3461 §4.1 NOTIFY=DELAY): one notice to the sender of a
    # message still queued this long after it came (Postfix's delay_warning_time).
    delay_warning_time: StrictInt = Field(
        4 * 3600,
        description=f"seconds as an integer: 0 (no warning) or 1..{QUEUE_LIFETIME - 1}",
    )

    @field_validator("delay_warning_time")
    @classmethod
    def _delay_warning(cls, value: int) -> int:
        if not 0 <= value < QUEUE_LIFETIME:
            raise ValueError(
                f"must be 0 (no warning) or 1..{QUEUE_LIFETIME - 1} seconds (under the 5-day "
                f"queue lifetime, after which the message is returned), got {value}"
            )
        return value

    @field_validator("min_free_space")
    @classmethod
    def _not_negative(cls, value: int) -> int:
        return at_least(0, value)


SECTIONS: dict[str, type[BaseModel]] = {
    "server": ServerSettings,
    "listener": ListenerSettings,
    "tls": TlsSettings,
    "limits": LimitsSettings,
    "queue": QueueSettings,
    "local": LocalSettings,
    "domain": DomainSettings,
    "auth": AuthSettings,
    "network": NetworkSettings,
    "dns": DnsSettings,
    "authcheck": AuthcheckSettings,
    "delivery": DeliverySettings,
    "transport": TransportSettings,
    "smarthost": SmarthostSettings,
    "metrics": MetricsSettings,
    "wkd": WkdSettings,
    "rspamd": RspamdSettings,
    "screen": ScreenSettings,
    "milter": MilterSettings,
    "doctor": DoctorSettings,
    "reports": ReportsSettings,
    "store": StoreSettings,
}
"""The top-level TOML keys, in the order the documentation lists them."""
