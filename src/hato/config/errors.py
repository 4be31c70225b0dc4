"""ConfigError, and pydantic's validation errors translated into messages a user can act on.

Every problem starts with its key path (``listener[1].address``) and says what would be valid.
pydantic's own wording never reaches the user.

Must not import anything of hato but model.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence

from pydantic import BaseModel, ValidationError
from pydantic_core import ErrorDetails

from hato.config.values import show

_BARE_KEY = re.compile(r"[A-Za-z0-9_-]+")


class ConfigError(Exception):
    """The configuration cannot be used; `problems` lists every reason, each with its key path."""

    def __init__(self, source: str, problems: Sequence[str]) -> None:
        self.source = source
        self.problems = tuple(problems)
        super().__init__("\n".join(self.lines()))

    def lines(self) -> list[str]:
        """One line per problem, each starting with the source (the file)."""
        return [f"{self.source}: {problem}" for problem in self.problems]


def key_path(prefix: str, loc: Iterable[int | str]) -> str:
    """``listener[1]`` + ("aliases", "sales", 0) -> ``listener[1].aliases.sales[0]``."""
    path = prefix
    for part in loc:
        if isinstance(part, int):
            path += f"[{part}]"
        elif part == "[key]":
            continue  # pydantic's marker for "the key itself was invalid"; the key is in loc
        else:
            key = part if _BARE_KEY.fullmatch(part) else show(part)
            path = f"{path}.{key}" if path else key
    return path


def translate(exc: ValidationError, prefix: str, model: type[BaseModel]) -> list[str]:
    """One message per pydantic error of validating `model` at key path `prefix`."""
    return [
        f"{key_path(prefix, error['loc'])}: {_describe(error, model)}"
        for error in exc.errors(include_url=False)
    ]


def _describe(error: ErrorDetails, model: type[BaseModel]) -> str:
    kind, loc, ctx = error["type"], error["loc"], error.get("ctx") or {}
    if kind == "value_error" and "error" in ctx:
        return str(ctx["error"])
    if kind == "extra_forbidden":
        return f"unknown key (valid keys: {', '.join(model.model_fields)})"
    if not loc and kind in ("model_type", "dict_type", "model_attributes_type"):
        return f"expected a table, got {show(error['input'])}"
    field = model.model_fields.get(str(loc[0])) if loc else None
    expected = field.description if field is not None and field.description else "a valid value"
    if kind == "missing":
        return f"required key is missing: expected {expected}"
    return f"expected {expected}, got {show(error['input'])}"
