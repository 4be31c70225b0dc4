"""Config fixtures shared by the tests: the smallest valid hato.toml, and a parser that takes
nothing from the machine (no environment, "h.example" as the machine's name).

    settings = parse('[limits]\\nmessages_per_hour = 5\\n', tmp_path)  # BASE, then the text
    parse("", tmp_path, server='data_dir = "data"')                     # lines in [server]
    parse(whole_file, tmp_path, base="")                                # a file of its own
    assert problems('[limits]\\nbogus = 1\\n', tmp_path) == ("limits.bogus: ...",)
"""

from __future__ import annotations

from pathlib import Path

import pytest

from hato.config import ConfigError, Settings, parse_settings

BASE = """
[server]
hostname = "mail.example.org"

[[listener]]
role = "mx"
address = "127.0.0.1:2525"

[[domain]]
name = "example.org"
"""
_HOSTNAME = 'hostname = "mail.example.org"\n'


def config_text(text: str = "", *, base: str = BASE, server: str = "") -> str:
    """`base` with `server` lines added to its [server] table, then `text`."""
    if server:
        assert _HOSTNAME in base, "server= needs a base with BASE's [server] table"
        base = base.replace(_HOSTNAME, _HOSTNAME + server.rstrip("\n") + "\n", 1)
    return base + text


def parse(text: str, base_dir: Path, *, base: str = BASE, server: str = "") -> Settings:
    """The settings of `config_text(...)`, read as a file in `base_dir`."""
    return parse_settings(
        config_text(text, base=base, server=server),
        base_dir=base_dir,
        env={},
        cwd=base_dir,
        fqdn=lambda: "h.example",
    )


def problems(text: str, base_dir: Path, *, base: str = BASE, server: str = "") -> tuple[str, ...]:
    """The problems `parse` reports; each is one line in our own words."""
    with pytest.raises(ConfigError) as caught:
        parse(text, base_dir, base=base, server=server)
    for problem in caught.value.problems:
        # pydantic's own wording never reaches the user.
        assert "Input should" not in problem and "pydantic" not in problem, problem
        assert "\n" not in problem
    return caught.value.problems


# BASE with its data in ./data: the file a `hato` command finds as ./hato.toml.
CLI = BASE.replace(_HOSTNAME, _HOSTNAME + 'data_dir = "data"\n', 1)


def command_workdir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, text: str = CLI) -> Path:
    """`tmp_path` as the current directory, holding `text` as ./hato.toml, with no HATO_HOME
    from the environment: where a test runs `hato.cli.main([...])`."""
    (tmp_path / "hato.toml").write_text(text)
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("HATO_HOME", raising=False)
    return tmp_path
