"""Every problem names its key path and what would be valid; all problems are reported."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from pydantic import BaseModel

from hato.config import ConfigError, load_settings
from hato.config.sections import SECTIONS
from kit import config
from kit.config import BASE as VALID


def problems_of(text: str, base_dir: Path) -> tuple[str, ...]:
    return config.problems(text, base_dir, base="")  # `text` is the whole file


@pytest.mark.parametrize(
    ("replace", "by", "expected"),
    [
        (
            'address = "127.0.0.1:2525"',
            'address = "foo"',
            'listener[0].address: "foo" is not HOST:PORT (example: "0.0.0.0:25", "[::1]:25")',
        ),
        (
            'address = "127.0.0.1:2525"',
            'address = "127.0.0.1:0"',
            'listener[0].address: "127.0.0.1:0": port must be 1..65535, got 0',
        ),
        (
            'address = "127.0.0.1:2525"',
            'address = "::1:25"',
            'listener[0].address: "::1:25": an IPv6 address goes in brackets, like "[::1]:25"',
        ),
        (
            'role = "mx"',
            'role = "smtp"',
            'listener[0].role: expected one of "mx", "submission", "submissions", got "smtp"',
        ),
        (
            'role = "mx"',
            "",
            'listener[0].role: required key is missing: expected one of "mx", "submission", '
            '"submissions"',
        ),
        (
            'role = "mx"',
            'role = "mx"\nmax_connections = "10"',
            'listener[0].max_connections: expected an integer, at least 1, got "10"',
        ),
        (
            'role = "mx"',
            'role = "mx"\nmax_connections_per_ip = 0',
            "listener[0].max_connections_per_ip: must be at least 1, got 0",
        ),
        (
            'hostname = "mail.example.org"',
            'hostnme = "mail.example.org"',
            "server.hostnme: unknown key "
            "(valid keys: hostname, data_dir, log_format, log_level, workers, user, group, "
            "submit_socket)",
        ),
        (
            'hostname = "mail.example.org"',
            'hostname = "mail.example.org"\nlog_level = "verbose"',
            'server.log_level: expected one of "debug", "info", "warning", "error", got "verbose"',
        ),
        (
            'hostname = "mail.example.org"',
            'hostname = "mail.example.org"\nlog_format = 1',
            'server.log_format: expected "text" or "json", got 1',
        ),
        (
            'hostname = "mail.example.org"',
            'hostname = "mail_example"',
            'server.hostname: "mail_example" is not a domain name',
        ),
        (
            'name = "example.org"',
            'name = "example.org"\naccept_any = "yes"',
            'domain[0].accept_any: expected true or false, got "yes"',
        ),
        (
            'name = "example.org"',
            'name = "example.org."',
            'domain[0].name: "example.org." is not a domain name',
        ),
        (
            'name = "example.org"',
            'name = "example.org"\ncatch_all = "a b"',
            'domain[0].catch_all: "a b" is not a local part (example: "alice")',
        ),
        (
            'name = "example.org"',
            'name = "example.org"\ncatch_all = "alice"\naccept_any = true',
            "domain[0].accept_any: true excludes catch_all",
        ),
        (
            'name = "example.org"',
            'name = "example.org"\naliases = { sales = ["alice", "bob@"] }',
            'domain[0].aliases.sales[1]: "bob@" is not an address',
        ),
        (
            'name = "example.org"',
            'name = "example.org"\naliases = { "a b" = ["alice"] }',
            'domain[0].aliases."a b": "a b" is not a local part',
        ),
        (
            'name = "example.org"',
            'name = "example.org"\naliases = { sales = [] }',
            "domain[0].aliases.sales: an alias needs at least one target",
        ),
        (
            'name = "example.org"',
            'name = "example.org"\naliases = { sales = "alice" }',
            'domain[0].aliases.sales: expected a table of arrays, e.g. { sales = ["alice", '
            '"bob@example.org"] }, got "alice"',
        ),
    ],
)
def test_a_bad_value_is_named_with_its_key_path(
    tmp_path: Path, replace: str, by: str, expected: str
) -> None:
    assert replace in VALID
    problems = problems_of(VALID.replace(replace, by, 1), tmp_path)
    assert len(problems) == 1 and problems[0].startswith(expected), problems


@pytest.mark.parametrize(
    ("section", "expected"),
    [
        (
            "[limits]\nmax_recipients = 10",
            "limits.max_recipients: must be at least 100 (RFC 5321 §4.5.3.1.8), got 10",
        ),
        (
            "[limits]\nidle_timeout = 0",
            "limits.idle_timeout: must be at least 1 second, got 0",
        ),
        (
            "[limits]\nsession_timeout = 299",
            "limits.session_timeout: must be at least 300 seconds (limits.idle_timeout), got 299",
        ),
        (
            "[limits]\nmax_text_line = 512",
            "limits.max_text_line: must be 0 (no limit) or at least 1000 (RFC 5321 §4.5.3.1.6), "
            "got 512",
        ),
        (
            '[limits]\nmax_message_size = "50MB"',
            'limits.max_message_size: "50MB" is not a size (octets as an integer, or a string '
            'like "10K", "50M", "1G")',
        ),
        ("[limits]\nmax_message_size = 0", "limits.max_message_size: must be at least 1, got 0"),
        ("[limits]\nmax_bad_commands = 1.5", "limits.max_bad_commands: expected an integer"),
        ("[queue]\nmin_free_space = -1", "queue.min_free_space: must be at least 0, got -1"),
        ("[limits]\nhopcount_limit = 5", "limits.hopcount_limit: must be at least 10, got 5"),
        (
            "[limits]\nmax_header_fields = 20000",
            "limits.max_header_fields: must be 100..10000 header fields, got 20000",
        ),
        ("[limits]\nmax_header_fields = '1k'", "limits.max_header_fields: expected an integer"),
        (
            "[queue]\ndelay_warning_time = 432000",
            "queue.delay_warning_time: must be 0 (no warning) or 1..431999 seconds (under the "
            "5-day queue lifetime, after which the message is returned), got 432000",
        ),
        ("[queue]\ndelay_warning_time = '4h'", "queue.delay_warning_time: expected seconds as an"),
        ("[local]\nsrs = 1", "local.srs: expected true or false"),
        (
            "[local]\nsrs_max_age = 2000",
            "local.srs_max_age: must be 1..1000 days (SRS timestamps wrap at 1024), got 2000",
        ),
        ('[local]\nrecipient_delimiter = "++"', 'local.recipient_delimiter: "++" is not a'),
        ("[local]\nrecipient_delimiter = '.'", 'local.recipient_delimiter: "." is not a'),
        ("[local]\nfoo = 1", "local.foo: unknown key (valid keys: recipient_delimiter, aliases"),
        ("[tls]\ncert = 'c.pem'\nkey = 'k.pem'", "tls.cert: file TMP/c.pem does not exist"),
        ("[tls]", 'tls: needs cert and key (paths of PEM files), or acme = { email = "..." }'),
        ("tls = 5", "tls: expected a table, got 5"),
        ("[extra]\nx = 1", "extra: unknown key (valid keys: server, listener, tls, limits,"),
        ("[[queue]]", "queue: expected a table, got an array"),
    ],
)
def test_section_problems(tmp_path: Path, section: str, expected: str) -> None:
    problems = problems_of(f"{section}\n{VALID}", tmp_path)
    assert [p for p in problems if p.startswith(expected.replace("TMP", str(tmp_path)))], problems


def test_tls_is_required_by_a_submission_listener(tmp_path: Path) -> None:
    text = VALID + '[[listener]]\nrole = "submissions"\naddress = "0.0.0.0:465"\n'
    assert problems_of(text, tmp_path) == (
        'tls: required by listener[1] (role "submissions"): add [tls] cert and key',
    )


def test_tls_files_must_be_readable(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "c.pem").write_text("")
    (tmp_path / "k.pem").write_text("")
    (tmp_path / "dir.pem").mkdir()
    # Root reads every file, so the permission check is faked for the key only.
    real_access = os.access
    monkeypatch.setattr(
        os, "access", lambda p, mode: real_access(p, mode) and "k.pem" not in str(p)
    )
    text = f"[tls]\ncert = 'dir.pem'\nkey = 'k.pem'\n{VALID}"
    assert problems_of(text, tmp_path) == (
        f"tls.cert: {tmp_path}/dir.pem is not a file",
        f"tls.key: file {tmp_path}/k.pem is not readable by this user (check owner and mode)",
    )


def test_duplicates(tmp_path: Path) -> None:
    text = (
        VALID
        + '[[listener]]\nrole = "mx"\naddress = "127.0.0.1:2525"\nmax_connections = 0\n'
        + '[[domain]]\nname = "EXAMPLE.org"\n'
    )
    assert problems_of(text, tmp_path) == (
        "listener[1].max_connections: must be at least 1, got 0",
        'listener[1].address: "127.0.0.1:2525" is already used by listener[0]; '
        "give each listener its own HOST:PORT",
        'domain[1].name: "EXAMPLE.org" is already defined by domain[0]; '
        "merge the two [[domain]] tables",
    )


@pytest.mark.parametrize("key", ["listener", "domain"])
def test_listeners_and_domains_are_arrays_of_at_least_one_table(tmp_path: Path, key: str) -> None:
    start = VALID.index(f"[[{key}]]")
    end = VALID.find("[[", start + 2)
    without = VALID[:start] + (VALID[end:] if end > 0 else "")
    assert problems_of(without, tmp_path)[0].startswith(f"{key}: at least one [[{key}]]")
    as_table = VALID.replace(f"[[{key}]]", f"[{key}]")
    assert problems_of(as_table, tmp_path) == (
        f"{key}: expected an array of tables ([[{key}]]), got a table",
    )
    assert problems_of(f"{key} = [1]\n" + without, tmp_path) == (
        f"{key}[0]: expected a table, got 1",
    )


def test_every_problem_is_reported_not_only_the_first(tmp_path: Path) -> None:
    text = """
[server]
hostnme = "x"
[[listener]]
role = "submission"
address = "foo"
[[listener]]
role = "mx"
address = "0.0.0.0:25"
max_connections = -1
[limits]
max_recipients = 1
[[domain]]
name = "a b"
"""
    paths = [p.split(":")[0] for p in problems_of(text, tmp_path)]
    assert paths == [
        "server.hostnme",
        "listener[0].address",
        "listener[1].max_connections",
        "limits.max_recipients",
        "domain[0].name",
        "tls",
    ]


def test_toml_syntax_errors_give_line_and_column(tmp_path: Path) -> None:
    (tmp_path / "hato.toml").write_text('[server]\nhostname = "a"\nlog_level = verbose\n')
    with pytest.raises(ConfigError) as caught:
        load_settings(None, env={}, cwd=tmp_path)
    assert caught.value.lines() == [
        f"{tmp_path}/hato.toml: TOML syntax error: Invalid value (at line 3, column 13)"
    ]


def test_a_file_that_is_not_utf8(tmp_path: Path) -> None:
    (tmp_path / "hato.toml").write_bytes(b'[server]\nhostname = "\xff"\n')
    with pytest.raises(ConfigError) as caught:
        load_settings(None, env={}, cwd=tmp_path)
    assert caught.value.problems == ("not UTF-8 (byte 21); TOML files must be UTF-8",)


def test_a_missing_or_unreadable_config_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as caught:
        load_settings(Path("nope.toml"), env={}, cwd=tmp_path)
    assert caught.value.lines() == [
        f"{tmp_path}/nope.toml: file does not exist (given with --config)"
    ]
    with pytest.raises(ConfigError) as caught:
        load_settings(tmp_path, env={}, cwd=tmp_path)
    assert caught.value.lines() == [f"{tmp_path}: cannot read the file: Is a directory"]


@pytest.mark.parametrize("model", list(SECTIONS.values()))
def test_every_key_says_what_is_valid(model: type[BaseModel]) -> None:
    """Type errors quote the field's description: none may be missing."""
    for name, field in model.model_fields.items():
        assert field.description, f"{model.__name__}.{name} has no description"
