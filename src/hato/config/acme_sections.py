"""[tls] acme: automatic certificates from an ACME server (RFC 8555), e.g. Let's Encrypt.

Same rules as sections.py: every field has a `description`; validators raise ValueError naming
the fix; the loader adds the key path.

Must not import anything of hato but model.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, PlainValidator, ValidationInfo

from hato.config.values import (
    ListenAddress,
    check_readable_file,
    parse_listen_address,
    resolve_path,
    show,
)

_SECTION = ConfigDict(frozen=True, extra="forbid")
LETS_ENCRYPT = "https://acme-v02.api.letsencrypt.org/directory"


def _readable_file(value: object, info: ValidationInfo) -> Path:
    base = getattr(info.context, "base_dir", None)
    if not isinstance(base, Path):
        raise TypeError("validate hato config sections with context=ParseContext(base_dir)")
    access = getattr(info.context, "check_access", True)
    return check_readable_file(resolve_path(value, base), access)


def _directory(value: object) -> str:
    # RFC 8555 §7.1.1: the client starts from the directory URL; §6.1: HTTPS only.
    if isinstance(value, str) and urlsplit(value).scheme == "https" and urlsplit(value).hostname:
        return value
    raise ValueError(f'{show(value)} is not an https URL (e.g. "{LETS_ENCRYPT}")')


def _email(value: object) -> str:
    if isinstance(value, str) and "@" in value.strip("@") and " " not in value:
        return value
    raise ValueError(f'{show(value)} is not an email address (e.g. "postmaster@example.org")')


class AcmeSettings(BaseModel):
    """[tls] acme = { email = ..., directory = ... }: obtain and renew the certificate."""

    model_config = _SECTION

    email: Annotated[str, PlainValidator(_email)] = Field(
        description='the account\'s contact address, e.g. "postmaster@example.org"'
    )
    directory: Annotated[str, PlainValidator(_directory)] = Field(
        LETS_ENCRYPT, description="the https URL of the ACME server's directory"
    )
    ca_file: Annotated[Path, PlainValidator(_readable_file)] | None = Field(
        None, description="the path of a readable PEM file of CAs to trust for the directory"
    )
    http_address: Annotated[ListenAddress, PlainValidator(parse_listen_address)] = Field(
        ListenAddress("0.0.0.0", 80),
        description='HOST:PORT where HTTP-01 challenges are answered, e.g. "0.0.0.0:80"',
    )
    challenge: Literal["http-01", "tls-alpn-01"] = Field(
        "http-01", description='"http-01" (port 80) or "tls-alpn-01" (port 443, RFC 8737)'
    )
    tls_address: Annotated[ListenAddress, PlainValidator(parse_listen_address)] = Field(
        ListenAddress("0.0.0.0", 443),
        description='HOST:PORT where TLS-ALPN-01 challenges are answered, e.g. "0.0.0.0:443"',
    )
