"""[rspamd] of hato.toml: asking a running rspamd about each message, and what to do with its
answer.

Same rules as sections.py: every field has a `description`; validators raise ValueError naming
the fix; the loader adds the key path.

Must not import anything of hato but model.
"""

from __future__ import annotations

import enum
from typing import Annotated
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, PlainValidator

from hato.config.values import parse_seconds, parse_size, show
from hato.model import Role

_SECTION = ConfigDict(frozen=True, extra="forbid")
Seconds = Annotated[float, PlainValidator(parse_seconds)]
Size = Annotated[int, PlainValidator(parse_size)]


class SpamResponse(enum.StrEnum):
    """What Hato does for one of rspamd's actions (hato.intake.spamcheck.Response)."""

    INBOX = "inbox"
    JUNK = "junk"
    SUBJECT = "subject"
    TEMPFAIL = "tempfail"
    REJECT = "reject"


class RspamdFailure(enum.StrEnum):
    TEMPFAIL = "tempfail"
    ACCEPT = "accept"


def parse_http_url(value: object) -> str:
    """An http:// URL of a host and port (rspamd's workers speak plain HTTP)."""
    if not isinstance(value, str):
        raise ValueError(f'{show(value)} is not a URL (e.g. "http://127.0.0.1:11333")')
    parts = urlsplit(value)
    try:
        port = parts.port
    except ValueError:
        port = None
    if parts.scheme != "http" or not parts.hostname or port is None or parts.query:
        raise ValueError(
            f'{show(value)} is not an http://HOST:PORT URL (e.g. "http://127.0.0.1:11333")'
        )
    return value.rstrip("/")


def parse_worker_url(value: object) -> str:
    """rspamd's normal worker: an http://HOST:PORT URL, or "unix:/PATH" for a unix socket it
    binds (`bind_socket = "/run/rspamd/normal.sock mode=0660"`; Postfix's address form)."""
    if isinstance(value, str) and value.startswith("unix:"):
        if not value.removeprefix("unix:").startswith("/"):
            raise ValueError(
                f"{show(value)}: a unix socket needs an absolute path, "
                'e.g. "unix:/run/rspamd/normal.sock"'
            )
        return value
    return parse_http_url(value)


def parse_roles(value: object) -> tuple[Role, ...]:
    """A list of listener roles."""
    names = [r.value for r in Role]
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ValueError(f'{show(value)} is not a list of roles (e.g. ["mx"])')
    roles = []
    for item in value:
        if item not in names:
            raise ValueError(f"{show(item)} is not a role; use some of {', '.join(names)}")
        roles.append(Role(item))
    return tuple(roles)


HttpUrl = Annotated[str, PlainValidator(parse_http_url)]
_RESPONSES = '"inbox", "junk", "subject", "tempfail" or "reject"'


class RspamdSettings(BaseModel):
    """[rspamd]: no section, no check."""

    model_config = _SECTION

    url: Annotated[str, PlainValidator(parse_worker_url)] = Field(
        "http://127.0.0.1:11333",
        description='rspamd\'s normal worker (POST /checkv2), e.g. "http://127.0.0.1:11333", '
        'or a unix socket it binds, e.g. "unix:/run/rspamd/normal.sock"',
    )
    controller_url: HttpUrl = Field(
        "http://127.0.0.1:11334",
        description="rspamd's controller, for hato spam learn (POST /learnspam, /learnham)",
    )
    password: str | None = Field(
        None, description="the controller's password (rspamd's worker-controller password)"
    )
    roles: Annotated[tuple[Role, ...], PlainValidator(parse_roles)] = Field(
        (Role.MX,),
        description='listener roles whose mail is checked, e.g. ["mx"] or '
        '["mx", "submission", "submissions"] (a compromised account\'s spam is refused too)',
    )
    timeout: Seconds = Field(
        15.0, description="seconds one check may take, sending the message included"
    )
    on_failure: RspamdFailure = Field(
        RspamdFailure.TEMPFAIL,
        description='"tempfail" (451, the client tries again) or "accept" (deliver unchecked) '
        "when rspamd is down, too slow or answers nonsense",
    )
    max_size: Size = Field(
        20 * 1024 * 1024, description='larger messages are not checked, e.g. "20M"'
    )
    trust_our_checks: bool = Field(
        False,
        description="tell rspamd our SPF/DKIM/DMARC/ARC results (a Settings header: its own "
        "checks off, our results as its symbols) instead of having it check again; its "
        "settings rules of low priority then do not apply to the scan",
    )
    reject: SpamResponse = Field(
        SpamResponse.REJECT, description=f"for rspamd's reject: {_RESPONSES}"
    )
    soft_reject: SpamResponse = Field(
        SpamResponse.TEMPFAIL, description=f"for rspamd's soft reject: {_RESPONSES}"
    )
    greylist: SpamResponse = Field(
        SpamResponse.TEMPFAIL, description=f"for rspamd's greylist: {_RESPONSES}"
    )
    rewrite_subject: SpamResponse = Field(
        SpamResponse.SUBJECT, description=f"for rspamd's rewrite subject: {_RESPONSES}"
    )
    add_header: SpamResponse = Field(
        SpamResponse.JUNK, description=f"for rspamd's add header: {_RESPONSES}"
    )


class MilterDefault(enum.StrEnum):
    TEMPFAIL = "tempfail"
    ACCEPT = "accept"


def parse_milter_address(value: object) -> str:
    """Postfix's milter address forms: "inet:HOST:PORT" ("inet:[::1]:PORT") or "unix:/PATH"."""
    example = '(e.g. "inet:127.0.0.1:8891" or "unix:/run/opendkim/opendkim.sock")'
    if not isinstance(value, str):
        raise ValueError(f"{show(value)} is not a milter address {example}")
    kind, _, rest = value.partition(":")
    if kind == "unix" and rest.startswith("/"):
        return value
    host, _, port = rest.rpartition(":")
    if kind in ("inet", "inet6") and host and port.isdigit() and 0 < int(port) < 65536:
        return value
    raise ValueError(f"{show(value)} is not a milter address {example}")


class MilterSettings(BaseModel):
    """[[milter]]: one milter, asked at the end of DATA, in the order of the list."""

    model_config = _SECTION

    address: Annotated[str, PlainValidator(parse_milter_address)] = Field(
        description='where the milter listens: "inet:127.0.0.1:8891" or "unix:/path/to/socket"'
    )
    roles: Annotated[tuple[Role, ...], PlainValidator(parse_roles)] = Field(
        (Role.MX,),
        description='listener roles whose mail the milter sees, e.g. ["mx"] or '
        '["submission", "submissions"] (OpenDKIM signing)',
    )
    connect_timeout: Seconds = Field(30.0, description="seconds to connect and negotiate")
    command_timeout: Seconds = Field(30.0, description="seconds for each reply of the milter")
    eom_timeout: Seconds = Field(
        300.0, description="seconds for its answer at the end of the message (progress restarts)"
    )
    default_action: MilterDefault = Field(
        MilterDefault.TEMPFAIL,
        description='"tempfail" (451, the client tries again) or "accept" (go on without '
        "this milter) when the milter is down, too slow or answers nonsense",
    )
