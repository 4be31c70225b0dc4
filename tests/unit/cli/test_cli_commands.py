"""`hato` commands run in-process: exit codes, stdout and stderr as a user sees them."""

from __future__ import annotations

import io
import os
import subprocess
import sys
from pathlib import Path

import pytest

from hato.accounts import UserStore
from hato.model import Address
from kit.commands import ADMIN_LOG, run
from kit.config import CLI, command_workdir


@pytest.fixture
def workdir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A directory with ./hato.toml (data_dir ./data), as the current directory."""
    return command_workdir(tmp_path, monkeypatch)


def stdin(monkeypatch: pytest.MonkeyPatch, text: str) -> None:
    monkeypatch.setattr(sys, "stdin", io.StringIO(text))


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    assert run(capsys, "version") == (0, "hato 0.1.0\n", "")
    assert run(capsys, "--version") == (0, "hato 0.1.0\n", "")


def test_version_imports_neither_pydantic_nor_the_server() -> None:
    code = (
        "import sys; from hato.cli import main; main(['version']); "
        "print(sorted(m for m in ('pydantic', 'hato.config', 'hato.boot.app', 'hato.accounts', "
        "'argon2') if m in sys.modules))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=30
    )
    assert result.stdout == "hato 0.1.0\n[]\n"


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        ((), "hato: the following arguments are required: COMMAND (see: hato --help)\n"),
        (("frob",), "hato: argument COMMAND: invalid choice: 'frob'"),
        (("user", "add"), "hato user add: the following arguments are required: ADDRESS"),
        (("user",), "hato user: the following arguments are required: ACTION"),
    ],
)
def test_bad_usage_is_one_line_and_exit_2(
    capsys: pytest.CaptureFixture[str], argv: tuple[str, ...], message: str
) -> None:
    code, out, err = run(capsys, *argv)
    assert (code, out) == (2, "")
    assert err.startswith(message) and err.count("\n") == 1


def test_help_exits_0(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "user", "--help")
    assert code == 0 and "passwd" in out


def test_check_config_summary(workdir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(capsys, "check-config")
    assert (code, err) == (0, "")
    assert out.splitlines() == [
        f"{workdir}/hato.toml: OK",
        "  hostname:  mail.example.org",
        f"  data dir:  {workdir}/data",
        "  listeners: mx 127.0.0.1:2525",
        "  domains:   example.org",
        "  postmaster: an alias or account postmaster@example.org, else its own mailbox "
        "(set [local] postmaster to your address)",
    ]


def test_check_config_summary_names_mailboxes_behind_lmtp(
    workdir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with (workdir / "hato.toml").open("a") as config:
        config.write('\n[[transport]]\ndomain = "example.org"\nlmtp = "127.0.0.1:24"\n')
    code, out, _ = run(capsys, "check-config")
    assert code == 0
    assert "  domains:   example.org (mailboxes behind LMTP [127.0.0.1]:24)" in out.splitlines()


def test_check_config_summary_names_the_screen(
    workdir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with (workdir / "hato.toml").open("a") as config:
        config.write(
            '\n[screen]\ndnsbl_sites = ["zen.example=127.0.0.[2..11]*3", "wl.example*-2"]\n'
            "dnsbl_threshold = 3\npregreet_wait = 3\nconnection_rate = 60\ngreylist = true\n"
        )
    code, out, _ = run(capsys, "check-config")
    assert code == 0
    assert out.splitlines()[-1] == (
        "  screen:    mx: dnsbl zen.example*3, wl.example*-2 (refused at 3); early talkers (3 s);"
        " 60 connections/min; greylisting (300 s)"
    )


def test_check_config_without_a_file_shows_the_embedded_default(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HATO_HOME", str(tmp_path / "home"))
    code, out, _ = run(capsys, "check-config")
    assert code == 0
    assert out.splitlines()[0] == "embedded default (no --config, no ./hato.toml): OK"
    assert f"  data dir:  {tmp_path}/home" in out.splitlines()
    assert "  domains:   localhost (any local part)" in out.splitlines()


def test_check_config_lists_every_problem_and_exits_1(
    workdir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = CLI.replace('"127.0.0.1:2525"', '"foo"') + "[limits]\nmax_recipients = 10\n"
    (workdir / "bad.toml").write_text(bad)
    code, out, err = run(capsys, "check-config", "--config", "bad.toml")
    assert (code, out) == (1, "")
    assert err.splitlines() == [
        f'hato: {workdir}/bad.toml: listener[0].address: "foo" is not HOST:PORT '
        '(example: "0.0.0.0:25", "[::1]:25")',
        f"hato: {workdir}/bad.toml: limits.max_recipients: must be at least 100 "
        "(RFC 5321 §4.5.3.1.8), got 10",
    ]


def test_check_config_names_targets_without_an_account(
    workdir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    text = CLI.replace(
        'name = "example.org"', 'name = "example.org"\naliases = { sales = ["bob"] }'
    )
    (workdir / "aliases.toml").write_text(text + '[local]\npostmaster = "ghost@example.org"\n')
    code, out, err = run(capsys, "check-config", "--config", "aliases.toml")
    assert code == 1 and out.startswith(f"{workdir}/aliases.toml: 2 problem(s)")
    assert "hato: local.postmaster: ghost@example.org has no account" in err
    assert "hato: alias sales@example.org: target bob@example.org has no account" in err


def test_a_missing_config_file(workdir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    expected = f"hato: {workdir}/nope.toml: file does not exist (given with --config)\n"
    assert run(capsys, "check-config", "--config", "nope.toml") == (1, "", expected)
    # serve stops at the configuration (EX_CONFIG) before anything of the server starts.
    assert run(capsys, "serve", "--config", "nope.toml") == (78, "", expected)
    assert run(capsys, "user", "list", "--config", "nope.toml") == (78, "", expected)


def test_user_add_list_remove(
    workdir: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    db = workdir / "data" / "users.db"
    (workdir / "data").mkdir()
    assert run(capsys, "user", "list") == (0, "", f"hato: no accounts yet in {db}\n")
    assert not db.exists()  # listing creates nothing
    stdin(monkeypatch, "s3cret passphrase\nignored second line\n")
    assert run(capsys, "user", "add", "Alice@Example.ORG") == (
        0,
        f"added Alice@example.org (in {db})\n",
        "",
    )
    assert ADMIN_LOG[-1].endswith(
        f" event=admin-user-add user=Alice@example.org uid={os.getuid()}\n"
    )
    stdin(monkeypatch, "other passphrase\r\n")
    assert run(capsys, "user", "add", "bob@example.org")[:2] == (
        0,
        f"added bob@example.org (in {db})\n",
    )
    assert run(capsys, "user", "list") == (0, "alice@example.org\nbob@example.org\n", "")

    store = UserStore(db)
    try:
        assert store.verify(Address("alice", "example.org"), "s3cret passphrase")
        assert store.verify(Address("bob", "example.org"), "other passphrase")
    finally:
        store.close()

    assert run(capsys, "user", "remove", "bob@example.org") == (
        0,
        f"removed bob@example.org (from {db})\n",
        "",
    )
    assert run(capsys, "user", "list") == (0, "alice@example.org\n", "")
    assert run(capsys, "user", "remove", "bob@example.org") == (
        1,
        "",
        f"hato: no such user in {db}: bob@example.org (see: hato user list)\n",
    )


def test_user_add_refusals(
    workdir: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    (workdir / "data").mkdir()
    stdin(monkeypatch, "\n")
    assert run(capsys, "user", "add", "alice@example.org") == (
        1,
        "",
        "hato: the password must not be empty (give it as the first line of stdin)\n",
    )
    stdin(monkeypatch, "")
    assert run(capsys, "user", "add", "alice@example.org")[0] == 1
    stdin(monkeypatch, "pw\n")
    code, _, err = run(capsys, "user", "add", "alice@")
    assert code == 1
    assert err.startswith('hato: "alice@" is not an address (')
    stdin(monkeypatch, "pw\n")
    assert run(capsys, "user", "add", "alice@example.net") == (
        1,
        "",
        f"hato: example.net is not a local domain of {workdir}/hato.toml (local domains: "
        'example.org); add a [[domain]] with name = "example.net" first\n',
    )
    stdin(monkeypatch, "pw long enough\n")
    assert run(capsys, "user", "add", "alice@example.org")[0] == 0
    stdin(monkeypatch, "pw2 long enough\n")
    assert run(capsys, "user", "add", "ALICE@example.org") == (
        1,
        "",
        "hato: ALICE@example.org already exists; change its password with: "
        "hato user passwd ALICE@example.org\n",
    )


def test_user_passwd(
    workdir: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    db = workdir / "data" / "users.db"
    (workdir / "data").mkdir()
    stdin(monkeypatch, "new passphrase\n")
    assert run(capsys, "user", "passwd", "alice@example.org") == (
        1,
        "",
        f"hato: no accounts yet: {db} does not exist (see: hato user add)\n",
    )
    stdin(monkeypatch, "old passphrase\n")
    assert run(capsys, "user", "add", "alice@example.org")[0] == 0
    stdin(monkeypatch, "new passphrase\n")
    assert run(capsys, "user", "passwd", "bob@example.org") == (
        1,
        "",
        f"hato: no such user in {db}: bob@example.org (see: hato user list)\n",
    )
    stdin(monkeypatch, "new passphrase\n")
    assert run(capsys, "user", "passwd", "alice@example.org") == (
        0,
        f"changed the password of alice@example.org (in {db})\n",
        "",
    )
    store = UserStore(db)
    try:
        assert store.verify(Address("alice", "example.org"), "new passphrase")
        assert not store.verify(Address("alice", "example.org"), "old passphrase")
    finally:
        store.close()


class FakeTerminal(io.StringIO):
    def isatty(self) -> bool:
        return True


@pytest.mark.parametrize(
    ("typed", "code", "err"),
    [
        (["pw long enough", "pw long enough"], 0, ""),
        (
            ["pw long enough", "pW long enough"],
            1,
            "hato: the two passwords differ; nothing was changed\n",
        ),
    ],
)
def test_a_terminal_is_asked_twice(
    workdir: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    typed: list[str],
    code: int,
    err: str,
) -> None:
    (workdir / "data").mkdir()
    monkeypatch.setattr(sys, "stdin", FakeTerminal("never read\n"))
    answers = iter(typed)
    prompts: list[str] = []

    def fake_getpass(prompt: str = "") -> str:
        prompts.append(prompt)
        return next(answers)

    monkeypatch.setattr("getpass.getpass", fake_getpass)
    assert run(capsys, "user", "add", "alice@example.org")[::2] == (code, err)
    assert prompts == ["New password: ", "Repeat the password: "]


def test_a_missing_data_dir_is_created_only_when_asked(
    workdir: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # Issue 13: run in the wrong directory, `user add` made a fresh ./hato-data and said "added".
    refusal = (
        f"hato: no data directory {workdir}/data (server.data_dir; configuration: "
        f"{workdir}/hato.toml); nothing was changed. Use the server's: --config FILE (its "
        "server.data_dir) or HATO_HOME; or add --init to create this one\n"
    )
    for argv in (
        ("user", "add", "alice@example.org"),
        ("user", "list"),
        ("dkim", "keygen", "example.org"),
    ):
        stdin(monkeypatch, "a long passphrase\n")
        assert run(capsys, *argv) == (1, "", refusal)
    assert not (workdir / "data").exists()
    stdin(monkeypatch, "a long passphrase\n")
    assert run(capsys, "user", "add", "alice@example.org", "--init") == (
        0,
        f"created the data directory {workdir}/data\n"
        f"added alice@example.org (in {workdir}/data/users.db)\n",
        "",
    )


@pytest.mark.parametrize(
    ("password", "why"),
    [
        ("x", "it has 1 characters; use at least 12"),
        ("password1234", "it is on the list of common passwords that are guessed first"),
        ("Qwerty123456!", "it is on the list of common passwords that are guessed first"),
        ("aaaaaaaaaaaaaaa", "it repeats a few characters"),
        ("abcabcabcabc", "it repeats a few characters"),
        ("1234567890123", "it is a run of keys in a row (like 123456 or qwerty)"),
        ("alice@example.org", "it is made of the address itself"),
    ],
)
def test_weak_passwords_are_refused_unless_allowed(
    workdir: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    password: str,
    why: str,
) -> None:
    (workdir / "data").mkdir()
    stdin(monkeypatch, password + "\n")
    code, out, err = run(capsys, "user", "add", "alice@example.org")
    assert (code, out) == (1, "")
    assert err.startswith(f"hato: password refused: {why}; nothing was changed")
    assert "--allow-weak" in err
    stdin(monkeypatch, password + "\n")
    assert run(capsys, "user", "add", "alice@example.org", "--allow-weak")[0] == 0
    stdin(monkeypatch, password + "\n")
    assert run(capsys, "user", "passwd", "alice@example.org")[0] == 1
    stdin(monkeypatch, "correct staple horse battery\n")
    assert run(capsys, "user", "passwd", "alice@example.org")[0] == 0


def test_a_store_that_fails_is_one_line_on_either_command(
    workdir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """hato user and hato key see the stores' StoreError, not sqlite3's (issue 11)."""
    data = workdir / "data"
    data.mkdir()
    for name in ("users.db", "keys.db"):
        (data / name).write_bytes(b"not a database, " * 512)
    assert run(capsys, "user", "list") == (
        1,
        "",
        f"hato: {data / 'users.db'}: file is not a database\n",
    )
    assert run(capsys, "key", "show", "alice@example.org") == (
        1,
        "",
        f"hato: {data / 'keys.db'}: file is not a database\n",
    )
    code, _, err = run(capsys, "check-config")
    assert code == 1
    assert f"hato: cannot read the accounts: {data / 'users.db'}: file is not a database\n" in err
