"""[store] of hato.toml: where the shared state lives (SQLite files in the data dir, or PostgreSQL).

Same rules as sections.py: every field has a `description`; validators raise ValueError naming
the fix; the loader adds the key path. The PostgreSQL password is never a config value: it comes
from `password_file` (read when the store connects, not here, so that it is in no settings
object a log line could print) or from libpq's own PGPASSWORD / ~/.pgpass.

Must not import anything of hato but model.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PlainValidator,
    StrictInt,
    field_validator,
    model_validator,
)
from pydantic_core.core_schema import ValidationInfo

from hato.config.values import check_readable_file, parse_seconds, resolve_path, show

_SECTION = ConfigDict(frozen=True, extra="forbid")
MAX_POOL = 200
DEFAULT_LEASE_TIME = 900.0  # as the queue's DEFAULT_LEASE
MIN_LEASE, MAX_LEASE = 1.0, 86_400.0
_DSN_EXAMPLE = '"host=db.example.org port=5432 user=hato dbname=hato"'
# A password in the DSN itself (key/value "password=..." or a URI's "user:secret@"): refused, so
# that the config file, which many can read and which gets pasted into bug reports, holds none.
_NODE = re.compile(r"[A-Za-z0-9._-]{1,63}")
_DSN_PASSWORD = re.compile(r"(^|\s)password\s*=|^postgres(?:ql)?://[^/@]*:[^/@]*@", re.IGNORECASE)


def _dsn(value: object) -> str:
    if not isinstance(value, str) or not value.strip():
        raise ValueError(f"{show(value)} is not a libpq connection string, e.g. {_DSN_EXAMPLE}")
    if _DSN_PASSWORD.search(value.strip()):
        raise ValueError(
            "must not contain the password: put it in a file named by password_file (mode 0600) "
            "or in the environment as PGPASSWORD"
        )
    return value.strip()


def _password_file(value: object, info: ValidationInfo) -> Path:
    # The loader's ParseContext (not imported: sections.py imports this module).
    base_dir = getattr(info.context, "base_dir", None)
    if not isinstance(base_dir, Path):
        raise TypeError("validate hato config sections with context=ParseContext(base_dir)")
    access = bool(getattr(info.context, "check_access", True))
    return check_readable_file(resolve_path(value, base_dir), access)


class StoreSettings(BaseModel):
    """[store]: the backend of the queue, accounts, keys, limits and AUTH throttles."""

    model_config = _SECTION

    backend: Literal["sqlite", "postgresql"] = Field(
        "sqlite",
        description='"sqlite" (files in the data dir, one node) or "postgresql" (several nodes)',
    )
    dsn: Annotated[str, PlainValidator(_dsn)] | None = Field(
        None,
        description=f"the PostgreSQL connection string without the password, e.g. {_DSN_EXAMPLE}",
    )
    password_file: Annotated[Path, PlainValidator(_password_file)] | None = Field(
        None,
        description="a file holding the PostgreSQL password (its first line); "
        "default: libpq's PGPASSWORD or ~/.pgpass",
    )
    pool_size: StrictInt = Field(10, description=f"connections per process, 1..{MAX_POOL}")
    statement_timeout: Annotated[float, PlainValidator(parse_seconds)] = Field(
        30.0, description="seconds one SQL statement may take before it is cancelled, 0.1..3600"
    )

    node: str | None = Field(
        None,
        description="this node's name in the cluster's heartbeats (hato status); "
        "default: the host name",
    )
    heartbeat: Annotated[float, PlainValidator(parse_seconds)] = Field(
        5.0, description="seconds between this node's heartbeats, 0.5..60"
    )

    @field_validator("node")
    @classmethod
    def _node(cls, value: str | None) -> str | None:
        if value is not None and not _NODE.fullmatch(value):
            raise ValueError(
                f"{show(value)} is not a node name: 1..63 of letters, digits, '.', '-', '_'"
            )
        return value

    @field_validator("heartbeat")
    @classmethod
    def _heartbeat(cls, value: float) -> float:
        if not 0.5 <= value <= 60:
            raise ValueError(f"must be 0.5..60 seconds, got {value:g}")
        return value

    lease_time: Annotated[float, PlainValidator(parse_seconds)] = Field(
        DEFAULT_LEASE_TIME,
        description="seconds a node holds the queue rows it delivers; a dead node's rows go to "
        f"another node after it, {MIN_LEASE:g}..{MAX_LEASE:g}, more than delivery.attempt_timeout",
    )

    @field_validator("lease_time")
    @classmethod
    def _lease(cls, value: float) -> float:
        if not MIN_LEASE <= value <= MAX_LEASE:
            raise ValueError(f"must be {MIN_LEASE:g}..{MAX_LEASE:g} seconds, got {value:g}")
        return value

    @field_validator("pool_size")
    @classmethod
    def _pool(cls, value: int) -> int:
        if not 1 <= value <= MAX_POOL:
            raise ValueError(f"must be 1..{MAX_POOL} connections, got {value}")
        return value

    @field_validator("statement_timeout")
    @classmethod
    def _timeout(cls, value: float) -> float:
        if not 0.1 <= value <= 3600:
            raise ValueError(f"must be 0.1..3600 seconds, got {value:g}")
        return value

    @model_validator(mode="after")
    def _backend_needs(self) -> StoreSettings:
        if self.backend == "postgresql" and self.dsn is None:
            raise ValueError(f'backend = "postgresql" needs dsn = {_DSN_EXAMPLE}')
        if self.backend == "sqlite" and (
            self.dsn is not None or self.password_file is not None or self.node is not None
        ):
            raise ValueError(
                'dsn, password_file and node are for backend = "postgresql"; set it, or remove them'
            )
        return self
