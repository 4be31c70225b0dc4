"""hato-sendmail: flag parsing (PHP, cron, mutt command lines), reading stdin, preparing the
message (-t, Bcc, added Date/Message-ID/From) and finding the socket."""

from __future__ import annotations

import io
import re
from pathlib import Path

import pytest

from hato.cli.sendmail import (
    EX_TEMPFAIL,
    EX_USAGE,
    Options,
    UsageError,
    main,
    parse_args,
    prepare,
    read_message,
    split_headers,
)
from hato.cli.sendmail_site import locate, socket_candidates


def test_php_and_debian_cron_command_lines() -> None:
    php = parse_args(["-t", "-i"])  # PHP's sendmail_path default
    assert (php.extract, php.dot_ends, php.mode) == (True, False, "m")
    # Debian cron: /usr/sbin/sendmail -FCronDaemon -i -B8BITMIME -oem root
    cron = parse_args(["-FCronDaemon", "-i", "-B8BITMIME", "-oem", "root"])
    assert (cron.full_name, cron.dot_ends, cron.recipients) == ("CronDaemon", False, ["root"])
    opts = parse_args(["-oi", "-odi", "-odb", "-v", "-f", "a@b.example", "-F", "A B", "x@y"])
    assert (opts.dot_ends, opts.sender, opts.full_name) == (False, "a@b.example", "A B")
    assert parse_args(["-fa@b", "-r", "c@d", "--", "-weird"]).sender == "c@d"
    assert parse_args(["--", "-weird"]).recipients == ["-weird"]
    assert parse_args(["-bs"]).mode == "s" and parse_args(["-bp"]).mode == "p"
    assert parse_args([], "/usr/bin/mailq").mode == "p"
    assert parse_args(["-N", "never", "-R", "hdrs", "-V", "x", "-h", "3", "r"]).recipients == ["r"]


@pytest.mark.parametrize(
    ("argv", "error"),
    [(["-f"], "option -f needs a value"), (["-bv", "x"], "-bv: not supported"), (["-Z"], "-Z")],
)
def test_bad_command_lines(argv: list[str], error: str) -> None:
    with pytest.raises(UsageError, match=error):
        parse_args(argv)


def test_read_message_converts_line_ends_and_stops_at_a_dot() -> None:
    text = b"Subject: a\n\nline\r\n.\nafter\n"
    assert read_message(io.BytesIO(text), dot_ends=True) == b"Subject: a\r\n\r\nline\r\n"
    assert read_message(io.BytesIO(text), dot_ends=False) == (
        b"Subject: a\r\n\r\nline\r\n.\r\nafter\r\n"
    )


def test_split_headers_unfolds_and_knows_a_message_without_headers() -> None:
    headers, body = split_headers(b"To: a,\r\n b\r\nSubject: s\r\n\r\nbody\r\n")
    assert headers == [b"To: a,\r\n b\r\n", b"Subject: s\r\n"] and body == b"body\r\n"
    assert split_headers(b"just text\r\n") == ([], b"just text\r\n")


def test_prepare_with_t_takes_to_cc_bcc_and_removes_bcc() -> None:
    message = (
        b"To: Ann <ann@example.org>, bob@example.net\r\n"
        b'Cc: "Doe, J" <jd@example.com>\r\nBcc: hidden@example.org\r\n'
        b"Subject: report\r\n\r\nbody\r\n"
    )
    opts = Options(extract=True, recipients=["extra@example.org"])
    out = prepare(message, opts, user="cron", gecos="", domain="example.org", hostname="mx.test")
    assert out.recipients == [
        "extra@example.org",
        "ann@example.org",
        "bob@example.net",
        "jd@example.com",
        "hidden@example.org",
    ]
    assert b"hidden" not in out.message and b"Bcc" not in out.message
    assert out.sender == "cron"
    assert b"\r\nFrom: cron@example.org\r\n" in out.message
    assert re.search(
        rb"\r\nDate: \w{3}, \d\d \w{3} \d{4} \d\d:\d\d:\d\d [+-]\d{4}\r\n", out.message
    )
    assert re.search(rb"\r\nMessage-ID: <[^@>]+@mx\.test>\r\n\r\nbody\r\n$", out.message)


def test_prepare_keeps_existing_headers_and_quotes_the_full_name() -> None:
    message = b"From: x@y\r\nDate: Mon, 1 Jan 2024 00:00:00 +0000\r\nMessage-ID: <a@b>\r\n\r\nb\r\n"
    opts = Options(recipients=["r@example.org"])
    out = prepare(message, opts, user="u", gecos="U", domain="d", hostname="h")
    assert out.message == message
    named = prepare(
        b"hi\r\n", Options(full_name="Doe, J.", sender="j@d"), user="u", gecos="", domain="d",
        hostname="h",
    )  # fmt: skip
    assert named.message.startswith(b'From: "Doe, J." <j@d>\r\nDate: ')
    assert named.message.endswith(b"\r\n\r\nhi\r\n")


def test_socket_location(tmp_path: Path) -> None:
    config = tmp_path / "etc.toml"
    config.write_text(
        '[server]\ndata_dir = "spool"\nsubmit_socket = "/run/x/submit.sock"\n'
        '[[domain]]\nname = "example.org"\n'
    )
    env = {"HATO_HOME": "/srv/hato"}
    site = locate(str(config), env, Path("/x"))
    assert (site.data_dir, site.domain) == (tmp_path / "spool", "example.org")
    assert locate(None, env, tmp_path).data_dir == Path("/srv/hato")
    assert locate(None, {}, tmp_path).data_dir == tmp_path / "hato-data"
    explicit = socket_candidates(site, {"HATO_CONTROL_SOCKET": "/tmp/c.sock"})
    assert explicit == [Path("/tmp/c.sock")]
    # The configured submit_socket, not a fixed path (issue 13 item 7).
    both = socket_candidates(site, {})
    assert both == [tmp_path / "spool" / "control.sock", Path("/run/x/submit.sock")]
    default = socket_candidates(locate(None, {"HATO_HOME": "/srv/hato"}, tmp_path), {})
    assert default == [Path("/srv/hato/control.sock"), Path("/run/hato/submit.sock")]


def test_another_users_config_in_the_current_directory_is_not_used(tmp_path: Path) -> None:
    import os

    (tmp_path / "hato.toml").write_text('[server]\ndata_dir = "/tmp/evil"\n')
    assert locate(None, {}, tmp_path).data_dir == Path("/tmp/evil")  # ours: used
    os.chown(tmp_path / "hato.toml", 65534, 65534)
    if os.getuid() not in (0, 65534):
        pytest.skip("needs root to give the file to another user")
    assert locate(None, {}, tmp_path).data_dir == tmp_path / "hato-data"
    (tmp_path / "hato-data").mkdir()
    os.chown(tmp_path / "hato-data", 65534, 65534)
    sock = tmp_path / "hato-data" / "control.sock"
    sock.write_text("")
    os.chown(sock, 65534, 65534)
    assert sock not in socket_candidates(locate(None, {}, tmp_path), {})


def test_exit_codes_for_usage_and_a_stopped_server(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("HATO_CONTROL_SOCKET", str(tmp_path / "none.sock"))
    assert main([]) == EX_USAGE
    assert "no recipients" in capsys.readouterr().err
    monkeypatch.setattr("sys.stdin", io.TextIOWrapper(io.BytesIO(b"Subject: x\n\nhi\n")))
    assert main(["root"]) == EX_TEMPFAIL
    assert "the mail server is not running" in capsys.readouterr().err


@pytest.mark.parametrize(
    "argv",
    [
        ["-F", "Name\r\nX-Evil: 1", "root"],
        ["-FName\nX-Evil: 1", "root"],
        ["-F", "Name\rX-Evil: 1", "root"],
        ["-F", "Name\x00", "root"],
        ["-f", "a@b.example\r\nX-Evil: 1", "root"],
        ["-r", "a@b.example\nBcc: victim@x.example", "root"],
    ],
)
def test_an_option_that_becomes_header_text_cannot_inject_a_field(
    argv: list[str],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    # RFC 5322 §2.2: CR and LF end a field; refused before anything is read or sent.
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HATO_CONTROL_SOCKET", str(tmp_path / "none.sock"))
    monkeypatch.setattr("sys.stdin", io.TextIOWrapper(io.BytesIO(b"Subject: x\n\nhi\n")))
    assert main(argv) == EX_USAGE
    err = capsys.readouterr().err
    assert re.fullmatch(r"hato-sendmail: -[fFr]: a control character .*\n", err), err


def test_a_name_with_a_tab_or_non_ascii_is_still_a_name() -> None:
    opts = parse_args(["-F", "Zoë\tDoe", "root"])
    out = prepare(b"hi\r\n", opts, user="u", gecos="", domain="d", hostname="h")
    assert 'From: "Zoë\tDoe" <u@d>\r\n'.encode() in out.message


def test_a_gecos_with_a_line_break_gives_a_from_without_a_name() -> None:
    out = prepare(b"hi\r\n", Options(), user="u", gecos="U\r\nX-Evil: 1", domain="d", hostname="h")
    assert b"From: u@d\r\n" in out.message and b"X-Evil" not in out.message
