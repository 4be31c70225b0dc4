"""The sections of hato.toml as frozen pydantic models, one per table.

Every field has a `description` saying what a valid value looks like: the loader uses it in the
error message when a value has the wrong type. Validators raise ValueError with a message that
names the fix; the loader adds the key path. Relative paths are resolved against
`ParseContext.base_dir`, passed as pydantic's validation context.

Must not import anything of hato but model.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated

from pydantic import (
    AfterValidator,
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
from hato.config.doctor_sections import DoctorSettings
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
from hato.config.values import (
    ListenAddress,
    at_least,
    check_readable_file,
    parse_domain_name,
    parse_listen_address,
    parse_local_part,
    parse_size,
    parse_target,
    resolve_path,
    show,
)
from hato.model import Address, Role

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
_DELIMITER_CHARS = frozenset("+-_=~#%&!$*/?^`{|}'")


@dataclass(frozen=True, slots=True)
class ParseContext:
    """What validation needs beyond the TOML: the directory relative paths start from, and
    whether files must be readable by this process (a reload after the privilege drop reads
    only what it uses, and says so when it cannot: boot.reload)."""

    base_dir: Path
    check_access: bool = True


def _base_dir(info: ValidationInfo) -> Path:
    if not isinstance(info.context, ParseContext):
        raise TypeError("validate hato config sections with context=ParseContext(base_dir)")
    return info.context.base_dir


def _path(value: object, info: ValidationInfo) -> Path:
    return resolve_path(value, _base_dir(info))


def _readable_file(value: object, info: ValidationInfo) -> Path:
    access = not isinstance(info.context, ParseContext) or info.context.check_access
    return check_readable_file(_path(value, info), access)


def _target(value: object, info: ValidationInfo) -> Address:
    # A bare local part belongs to this [[domain]]; when `name` itself is invalid the model fails
    # anyway, so any domain serves to check the target's own syntax.
    name = info.data.get("name")
    return parse_target(value, name if isinstance(name, str) else "localhost")


def _full_address(value: object) -> Address:
    if isinstance(value, str) and "@" in value:
        return parse_target(value, "localhost")
    raise ValueError(
        f'{show(value)} is not an address: write local@domain, e.g. "alice@example.org"'
    )


def _non_empty(targets: tuple[Address, ...]) -> tuple[Address, ...]:
    if not targets:
        raise ValueError('an alias needs at least one target (example: ["alice"])')
    return targets


def _non_empty_grant(targets: tuple[Address, ...]) -> tuple[Address, ...]:
    if not targets:
        raise ValueError('a grant needs at least one address (example: ["sales"])')
    return targets


AbsolutePath = Annotated[Path, PlainValidator(_path)]
ReadableFile = Annotated[Path, PlainValidator(_readable_file)]
Size = Annotated[int, PlainValidator(parse_size)]
Target = Annotated[Address, PlainValidator(_target)]
LocalPart = Annotated[str, PlainValidator(parse_local_part)]
FullAddress = Annotated[Address, PlainValidator(_full_address)]


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
        1,
        description="server processes sharing the listening sockets: 1, or 0 for one per CPU "
        "(mx connections spread over all of them; submission stays in the first)",
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

    @field_validator("max_message_size", "max_bad_commands")
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
    # 250, without a queue row; false: every message is queued first (server/direct.py).
    direct_local_delivery: bool = Field(True, description="true or false")

    @field_validator("min_free_space")
    @classmethod
    def _not_negative(cls, value: int) -> int:
        return at_least(0, value)


class LocalSettings(BaseModel):
    """[local]: how local parts are matched, the system aliases file, where the Maildirs are
    and whose they are."""

    model_config = _SECTION

    recipient_delimiter: str = Field(
        "+", description='one character such as "+" or "-", or "" to turn plus-addressing off'
    )
    aliases_file: ReadableFile | None = Field(
        None, description='the path of a readable aliases file, e.g. "/etc/aliases"'
    )
    postmaster: FullAddress | None = Field(
        None, description='the address for postmaster, root and abuse, e.g. "alice@example.org"'
    )
    send_as: Mapping[str, tuple[FullAddress, ...]] = Field(
        default_factory=dict,
        description="Unix user names and the addresses each may send as locally, e.g. "
        '{ www-data = ["noreply@example.org"] }',
    )
    mailboxes: AbsolutePath | None = Field(
        None, description='a directory path for the Maildirs, e.g. "/var/vmail"'
    )
    mailbox_owner: SystemUser | None = Field(
        None, description='the name of an existing user owning the mail files, e.g. "vmail"'
    )
    srs: StrictBool = Field(True, description="true or false")
    srs_max_age: StrictInt = Field(21, description="days as an integer, 1..1000")

    @field_validator("srs_max_age")
    @classmethod
    def _srs_age(cls, value: int) -> int:
        # The SRS timestamp counts days modulo 1024 (libsrs2): an older one would look new.
        if not 1 <= value <= 1000:
            raise ValueError(f"must be 1..1000 days (SRS timestamps wrap at 1024), got {value}")
        return value

    @field_validator("recipient_delimiter", mode="plain")
    @classmethod
    def _delimiter(cls, value: object) -> str:
        if value == "" or (isinstance(value, str) and value in _DELIMITER_CHARS):
            return value
        raise ValueError(
            f'{show(value)} is not a delimiter: use one character such as "+" or "-", '
            'or "" to turn plus-addressing off'
        )


_SELECTOR = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?")


def _selector(value: object) -> str:
    # RFC 6376 §3.1: a selector is a sequence of sub-domain labels; we keep to one label so
    # it is also a safe file name.
    if isinstance(value, str) and _SELECTOR.fullmatch(value):
        return value.lower()
    raise ValueError(f"{show(value)} is not a selector (letters, digits, '-'; e.g. \"s2026\")")


class StsMode(enum.StrEnum):
    """RFC 8461 §5: what senders do when our MX fails the policy."""

    ENFORCE = "enforce"
    TESTING = "testing"
    NONE = "none"


class DomainSettings(BaseModel):
    """One [[domain]]: a domain we receive mail for."""

    model_config = _SECTION

    name: Annotated[str, PlainValidator(parse_domain_name)] = Field(
        description='a domain name, e.g. "example.org"'
    )
    catch_all: Target | None = Field(
        None, description='a local part or an address, e.g. "alice" or "alice@example.org"'
    )
    accept_any: StrictBool = Field(False, description="true or false")
    aliases: Mapping[LocalPart, Annotated[tuple[Target, ...], AfterValidator(_non_empty)]] = Field(
        default_factory=dict,
        description='a table of arrays, e.g. { sales = ["alice", "bob@example.org"] }',
    )
    dkim_selector: Annotated[str, PlainValidator(_selector)] = Field(
        "hato",
        description="the DKIM selector whose key (DATA_DIR/dkim/DOMAIN/SELECTOR.key, made by "
        '"hato dkim keygen DOMAIN") signs this domain\'s mail, e.g. "s2026"',
    )
    send_as: Mapping[LocalPart, Annotated[tuple[Target, ...], AfterValidator(_non_empty_grant)]] = (
        Field(
            default_factory=dict,
            description='a table of arrays, e.g. { alice = ["sales", "info@example.net"] }',
        )
    )
    mta_sts_mode: StsMode = Field(
        StsMode.TESTING,
        description='the MTA-STS policy mode served at mta-sts.DOMAIN: "testing" (senders '
        'report failures but deliver), "enforce" (senders refuse our MX without valid TLS) or '
        '"none" (withdraw the policy)',
    )
    # RFC 8461 §3.2: max_age is at most 31557600 seconds (about a year); one week by default.
    mta_sts_max_age: StrictInt = Field(
        604800, description="seconds senders may cache the MTA-STS policy, 86400..31557600"
    )

    @field_validator("mta_sts_max_age")
    @classmethod
    def _sts_max_age(cls, value: int) -> int:
        # RFC 8461 §3.2: at most 31557600; below a day senders would refetch all the time.
        if not 86400 <= value <= 31557600:
            raise ValueError(f"must be 86400 (a day) to 31557600 (a year) seconds, got {value}")
        return value

    @field_validator("accept_any")
    @classmethod
    def _catch_all_or_any(cls, value: bool, info: ValidationInfo) -> bool:
        if value and info.data.get("catch_all") is not None:
            raise ValueError(
                "true excludes catch_all: accept_any gives every local part its own mailbox, "
                "so nothing is left for catch_all; keep one of them"
            )
        return value


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
