"""docs/configuration.md documents every key: each field of each settings model (the pydantic
sections of src/hato/config/) has a row in the table under its own section's heading
(`## [name]` or `## [[name]]`). A key added without its documentation fails here, and so does
a documented key no model has (a docs claim without the code)."""

from __future__ import annotations

import dataclasses
import re
import typing
from pathlib import Path

import pytest
from pydantic import BaseModel

from hato.config.settings import Settings

DOCS = Path(__file__).resolve().parents[3] / "docs" / "configuration.md"
# Settings' attribute -> the TOML table name ([[listener]] for the listeners, ...).
ARRAYS = {"listeners": "listener", "domains": "domain", "networks": "network"}
ARRAYS |= {"transports": "transport", "milters": "milter"}
_HEADING = re.compile(r"^## `(\[\[?)([a-z_]+)\]\]?`", re.MULTILINE)


def _models(hint: object) -> list[type[BaseModel]]:
    if isinstance(hint, type) and issubclass(hint, BaseModel):
        return [hint]
    return [m for arg in typing.get_args(hint) for m in _models(arg)]


def _sections() -> list[tuple[str, type[BaseModel]]]:
    hints = typing.get_type_hints(Settings)
    found = []
    for attr in dataclasses.fields(Settings):
        for model in _models(hints[attr.name]):
            found.append((ARRAYS.get(attr.name, attr.name), model))
    return found


def _documented() -> dict[str, set[str]]:
    """Section name -> the keys named in the first column of its tables."""
    text = DOCS.read_text(encoding="utf-8")
    headings = list(_HEADING.finditer(text))
    keys: dict[str, set[str]] = {}
    for here, after in zip(headings, [*headings[1:], None], strict=True):
        end = after.start() if after else len(text)
        section = text[here.end() : end].split("\n## ", 1)[0]
        names = keys.setdefault(here.group(2), set())
        for line in section.splitlines():
            if line.startswith("| "):
                names.update(re.findall(r"`([a-z_0-9]+)`", line.split("|")[1]))
    return keys


SECTIONS = _sections()


def test_every_settings_model_is_found() -> None:
    names = {name for name, _ in SECTIONS}
    assert {"server", "listener", "authcheck", "delivery", "smarthost", "wkd"} <= names


@pytest.mark.parametrize(("section", "model"), SECTIONS, ids=[f"{name}" for name, _ in SECTIONS])
def test_every_key_is_documented_under_its_section(section: str, model: type[BaseModel]) -> None:
    documented = _documented()
    assert section in documented, f"docs/configuration.md has no '## `[{section}]`' section"
    missing = sorted(set(model.model_fields) - documented[section])
    assert not missing, f"[{section}] keys missing from docs/configuration.md: {missing}"


def test_every_documented_key_exists() -> None:
    """The other way round: a row naming a key no settings model has is a claim without code."""
    fields: dict[str, set[str]] = {}
    for name, model in SECTIONS:
        fields.setdefault(name, set()).update(model.model_fields)
    claimed = {
        f"[{section}] {key}"
        for section, keys in _documented().items()
        for key in keys - fields.get(section, set())
    }
    assert not claimed, f"docs/configuration.md documents keys hato.toml does not have: {claimed}"
