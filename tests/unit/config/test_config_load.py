"""Loading hato.toml: valid files, the default rule, relative paths, defaults."""

from __future__ import annotations

from pathlib import Path

import pytest

from hato.config import (
    EMBEDDED_SOURCE,
    ConfigError,
    LogFormat,
    LogLevel,
    load_settings,
    parse_settings,
)
from hato.model import Address, Role
from kit.config import BASE as MINIMAL

FULL = """
[server]
hostname = "Mail.Example.ORG"
data_dir = "/var/lib/hato"
log_format = "json"
log_level = "debug"

[[listener]]
role = "mx"
address = "0.0.0.0:25"
max_connections = 500
max_connections_per_ip = 10

[[listener]]
role = "submissions"
address = "[::1]:465"

[tls]
cert = "certs/fullchain.pem"
key = "certs/privkey.pem"

[limits]
max_message_size = "10M"
max_recipients = 200
max_bad_commands = 5
idle_timeout = 600
session_timeout = 7200
max_text_line = 0

[queue]
min_free_space = "1G"

[local]
recipient_delimiter = "-"
aliases_file = "aliases"

[[domain]]
name = "Example.ORG"
catch_all = "alice"
aliases = { sales = ["alice", "bob@example.net"], abuse = ["alice"] }

[[domain]]
name = "bücher.example"
accept_any = true
"""


def no_fqdn() -> str:
    raise AssertionError("the machine's name is only looked up when hostname is not set")


def write_full(directory: Path) -> Path:
    (directory / "certs").mkdir(parents=True)
    (directory / "certs" / "fullchain.pem").write_text("cert\n")
    (directory / "certs" / "privkey.pem").write_text("key\n")
    (directory / "aliases").write_text("postmaster: root\n")
    path = directory / "hato.toml"
    path.write_text(FULL)
    return path


def test_a_full_file_gives_typed_absolute_values(tmp_path: Path) -> None:
    path = write_full(tmp_path / "etc")
    loaded = load_settings(path, env={}, cwd=tmp_path, fqdn=no_fqdn)
    s = loaded.settings
    assert loaded.source == str(path)
    assert s.server.hostname == "mail.example.org"
    assert s.server.data_dir == Path("/var/lib/hato")
    assert s.server.log_format is LogFormat.JSON and s.server.log_level is LogLevel.DEBUG
    mx, subs = s.listeners
    assert (mx.role, mx.host, mx.port, mx.max_connections, mx.max_connections_per_ip) == (
        Role.MX,
        "0.0.0.0",
        25,
        500,
        10,
    )
    assert (subs.role, subs.host, subs.port, str(subs.address)) == (
        Role.SUBMISSIONS,
        "::1",
        465,
        "[::1]:465",
    )
    assert subs.max_connections == 1000 and subs.max_connections_per_ip == 50
    assert s.tls is not None
    assert s.tls.cert == tmp_path / "etc" / "certs" / "fullchain.pem"
    assert s.tls.key == tmp_path / "etc" / "certs" / "privkey.pem"
    assert s.limits.max_message_size == 10 * 1024 * 1024
    assert (s.limits.max_recipients, s.limits.max_bad_commands) == (200, 5)
    assert (s.limits.idle_timeout, s.limits.session_timeout, s.limits.max_text_line) == (
        600,
        7200,
        0,
    )
    assert s.queue.min_free_space == 1024**3
    assert s.local.recipient_delimiter == "-"
    assert s.local.aliases_file == tmp_path / "etc" / "aliases"
    example, books = s.domains
    assert example.name == "example.org"
    assert example.catch_all == Address("alice", "example.org")
    assert dict(example.aliases) == {
        "sales": (Address("alice", "example.org"), Address("bob", "example.net")),
        "abuse": (Address("alice", "example.org"),),
    }
    assert not example.accept_any
    assert books.name == "bücher.example" and books.accept_any and books.catch_all is None


def test_defaults_of_a_minimal_file(tmp_path: Path) -> None:
    s = parse_settings(MINIMAL, base_dir=tmp_path, env={}, cwd=tmp_path / "cwd")
    assert s.tls is None
    assert s.server.data_dir == tmp_path / "cwd" / "hato-data"
    assert s.server.log_format is LogFormat.TEXT and s.server.log_level is LogLevel.INFO
    assert s.limits.max_message_size == 50 * 1024 * 1024
    assert (s.limits.max_recipients, s.limits.max_bad_commands) == (100, 20)
    assert (s.limits.idle_timeout, s.limits.session_timeout, s.limits.max_text_line) == (
        300,
        3600,
        1000,
    )
    assert s.queue.min_free_space == 100 * 1024 * 1024
    assert s.local.recipient_delimiter == "+" and s.local.aliases_file is None
    assert s.domains[0].aliases == {} and s.domains[0].catch_all is None


def test_without_any_file_the_embedded_default_is_used(tmp_path: Path) -> None:
    loaded = load_settings(None, env={}, cwd=tmp_path, fqdn=no_fqdn)
    s = loaded.settings
    assert loaded.source == EMBEDDED_SOURCE
    assert s.server.hostname == "localhost"
    assert s.server.data_dir == tmp_path / "hato-data"
    assert [(lst.role, str(lst.address)) for lst in s.listeners] == [
        (Role.MX, "127.0.0.1:2525"),
        (Role.SUBMISSION, "127.0.0.1:2587"),
        (Role.SUBMISSIONS, "127.0.0.1:2465"),
    ]
    assert s.tls is None  # the server makes a self-signed certificate for these
    assert [(d.name, d.accept_any) for d in s.domains] == [("localhost", True)]
    assert s.tls is None


@pytest.mark.parametrize(
    ("home", "expected"),
    [("/srv/hato", "/srv/hato"), ("rel/home", "CWD/rel/home"), ("", "CWD/hato-data")],
)
def test_hato_home_is_the_default_data_dir(tmp_path: Path, home: str, expected: str) -> None:
    loaded = load_settings(None, env={"HATO_HOME": home}, cwd=tmp_path, fqdn=no_fqdn)
    assert loaded.settings.server.data_dir == Path(expected.replace("CWD", str(tmp_path)))


def test_hato_home_is_also_the_default_of_a_file_without_data_dir(tmp_path: Path) -> None:
    (tmp_path / "hato.toml").write_text(MINIMAL)
    loaded = load_settings(None, env={"HATO_HOME": "/srv/h"}, cwd=tmp_path, fqdn=no_fqdn)
    assert loaded.settings.server.data_dir == Path("/srv/h")


def test_dot_hato_toml_is_used_when_present(tmp_path: Path) -> None:
    (tmp_path / "hato.toml").write_text(MINIMAL)
    loaded = load_settings(None, env={}, cwd=tmp_path, fqdn=no_fqdn)
    assert loaded.source == str(tmp_path / "hato.toml")
    assert loaded.settings.domains[0].name == "example.org"


def test_config_option_wins_over_dot_hato_toml(tmp_path: Path) -> None:
    (tmp_path / "hato.toml").write_text(MINIMAL)
    (tmp_path / "other.toml").write_text(MINIMAL.replace("example.org", "other.example"))
    loaded = load_settings(Path("other.toml"), env={}, cwd=tmp_path, fqdn=no_fqdn)
    assert loaded.source == str(tmp_path / "other.toml")
    assert loaded.settings.domains[0].name == "other.example"


def test_relative_paths_are_relative_to_the_files_directory(tmp_path: Path) -> None:
    conf = tmp_path / "conf"
    conf.mkdir()
    (conf / "aliases").write_text("")
    text = MINIMAL + '[local]\naliases_file = "aliases"\n'
    text = text.replace("[server]\n", '[server]\ndata_dir = "../var/./data"\n')
    (conf / "hato.toml").write_text(text)
    cwd = tmp_path / "elsewhere"
    loaded = load_settings(Path("../conf/hato.toml"), env={}, cwd=cwd, fqdn=no_fqdn)
    assert loaded.source == str(conf / "hato.toml")
    assert loaded.settings.server.data_dir == tmp_path / "var" / "data"
    assert loaded.settings.local.aliases_file == conf / "aliases"


def test_a_file_without_hostname_uses_the_machines_name(tmp_path: Path) -> None:
    text = MINIMAL.replace('hostname = "mail.example.org"', "")
    s = parse_settings(text, base_dir=tmp_path, env={}, cwd=tmp_path, fqdn=lambda: "Host.LAN")
    assert s.server.hostname == "host.lan"


def test_a_machine_name_that_is_no_domain_is_an_error_naming_the_key(tmp_path: Path) -> None:
    text = MINIMAL.replace('hostname = "mail.example.org"', "")
    with pytest.raises(ConfigError) as caught:
        parse_settings(text, base_dir=tmp_path, env={}, cwd=tmp_path, fqdn=lambda: "bad_name!")
    assert caught.value.problems == (
        'server.hostname: not set, and this machine\'s name "bad_name!" is not a domain name; '
        'set hostname = "mail.example.org" (your MX host name)',
    )


@pytest.mark.parametrize(
    ("value", "octets"),
    [("12345", 12345), ('"10K"', 10240), ('"50m"', 50 * 1024**2), ('" 2G "', 2 * 1024**3)],
)
def test_sizes_are_octets(tmp_path: Path, value: str, octets: int) -> None:
    text = MINIMAL + f"[limits]\nmax_message_size = {value}\n"
    s = parse_settings(text, base_dir=tmp_path, env={}, cwd=tmp_path)
    assert s.limits.max_message_size == octets


def test_local_domains_match_in_any_case_and_idna_form(tmp_path: Path) -> None:
    text = MINIMAL + '[[domain]]\nname = "Bücher.Example"\n'
    s = parse_settings(text, base_dir=tmp_path, env={}, cwd=tmp_path)
    assert s.domains[1].name == "bücher.example"
    assert s.is_local_domain("EXAMPLE.org")
    assert s.domain("xn--bcher-kva.example") is s.domains[1]
    assert s.domain("BÜCHER.example") is s.domains[1]
    assert not s.is_local_domain("example.net")
    assert not s.is_local_domain("[192.0.2.1]")


@pytest.mark.parametrize(
    ("address", "host", "port"),
    [
        ("[::0001]:25", "::1", 25),
        ("LocalHost:65535", "localhost", 65535),
        ("10.0.0.1:1", "10.0.0.1", 1),
    ],
)
def test_listen_addresses(tmp_path: Path, address: str, host: str, port: int) -> None:
    text = MINIMAL.replace("127.0.0.1:2525", address)
    s = parse_settings(text, base_dir=tmp_path, env={}, cwd=tmp_path)
    assert (s.listeners[0].host, s.listeners[0].port) == (host, port)


def test_plus_addressing_can_be_turned_off(tmp_path: Path) -> None:
    text = MINIMAL + '[local]\nrecipient_delimiter = ""\n'
    s = parse_settings(text, base_dir=tmp_path, env={}, cwd=tmp_path)
    assert s.local.recipient_delimiter == ""


def test_settings_are_frozen(tmp_path: Path) -> None:
    s = parse_settings(MINIMAL, base_dir=tmp_path, env={}, cwd=tmp_path)
    with pytest.raises(ValueError, match="frozen"):
        s.limits.max_recipients = 5
    with pytest.raises(AttributeError):
        s.tls = None  # type: ignore[misc]
