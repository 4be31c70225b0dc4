"""The address-book sections of hato.toml: [local] and [[domain]] (what the directory room is
built from: local parts, aliases, catch-all, SRS, the Maildirs and whose they are).

Must not import anything of hato but model.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Mapping
from typing import Annotated

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    PlainValidator,
    StrictBool,
    StrictInt,
    ValidationInfo,
    field_validator,
)

from hato.config.fields import AbsolutePath, FullAddress, LocalPart, ReadableFile, Target
from hato.config.ops_sections import SystemUser
from hato.config.values import parse_domain_name, show
from hato.model import Address

_SECTION = ConfigDict(frozen=True, extra="forbid")
_DELIMITER_CHARS = frozenset("+-_=~#%&!$*/?^`{|}'")


def _non_empty(targets: tuple[Address, ...]) -> tuple[Address, ...]:
    if not targets:
        raise ValueError('an alias needs at least one target (example: ["alice"])')
    return targets


def _non_empty_grant(targets: tuple[Address, ...]) -> tuple[Address, ...]:
    if not targets:
        raise ValueError('a grant needs at least one address (example: ["sales"])')
    return targets


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
