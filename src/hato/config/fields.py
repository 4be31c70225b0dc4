"""Field types shared by the sections of hato.toml, and the context their validation needs.

`ParseContext` carries the directory relative paths start from (pydantic's validation
context); `AbsolutePath` and `ReadableFile` resolve against it. `Target` is a local part of the
[[domain]] being read or an address, `FullAddress` an address, `LocalPart` a local part.

Must not import anything of hato but model.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Annotated

from pydantic import PlainValidator, ValidationInfo

from hato.config.values import (
    check_readable_file,
    parse_local_part,
    parse_size,
    parse_target,
    resolve_path,
    show,
)
from hato.model import Address


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


AbsolutePath = Annotated[Path, PlainValidator(_path)]
ReadableFile = Annotated[Path, PlainValidator(_readable_file)]
Size = Annotated[int, PlainValidator(parse_size)]
Target = Annotated[Address, PlainValidator(_target)]
LocalPart = Annotated[str, PlainValidator(parse_local_part)]
FullAddress = Annotated[Address, PlainValidator(_full_address)]
