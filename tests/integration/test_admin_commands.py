"""`hato user` against the real server (issue 13): a command run in the wrong place refuses
instead of making a data directory the server never reads, and weak passwords are refused."""

from __future__ import annotations

import os
import smtplib
import ssl
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from peers.hato import HatoServer, hato_binary
from peers.server import DomainSetup, MailSetup
from peers.tls import TestCA

PASSPHRASE = "violet harbour tram ninety"


class HomeHato(HatoServer):
    """Hato whose config names no data_dir: the server finds it through $HATO_HOME."""

    def _config_text(self) -> str:
        lines = super()._config_text().splitlines()
        return "\n".join(line for line in lines if not line.startswith("data_dir")) + "\n"


def _user_add(
    server: HatoServer, address: str, password: str, *extra: str, cwd: Path, home: bool
) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "HATO_HOME"}
    if home:
        env["HATO_HOME"] = str(server.data_dir)
    return subprocess.run(
        [hato_binary(), "user", "add", address, *extra, "--config", str(server.config)],
        input=password + "\n",
        capture_output=True,
        text=True,
        cwd=cwd,
        env=env,
        timeout=60,
        check=False,
    )


def _can_log_in(server: HatoServer, ca: TestCA, user: str, password: str) -> bool:
    context = ssl.create_default_context(cafile=str(ca.ca_cert))
    with smtplib.SMTP(server.host, server.submission_port, timeout=30) as smtp:
        smtp.starttls(context=context)
        try:
            smtp.login(user, password)
        except smtplib.SMTPAuthenticationError:
            return False
    return True


@pytest.fixture
def server(workdir: Path, test_ca: TestCA) -> Iterator[HatoServer]:
    setup = MailSetup(
        domains=(DomainSetup("users.test"),), submission=True, tls=test_ca.tls_files()
    )
    hato = HomeHato(workdir / "data", setup)
    hato.start()
    yield hato
    hato.stop()


def test_user_add_elsewhere_refuses_instead_of_making_a_data_dir(
    server: HatoServer, test_ca: TestCA, workdir: Path
) -> None:
    elsewhere = workdir / "elsewhere"
    elsewhere.mkdir()
    done = _user_add(server, "alice@users.test", PASSPHRASE, cwd=elsewhere, home=False)
    assert done.returncode == 1, done.stdout
    assert done.stdout == ""
    assert done.stderr.startswith(f"hato: no data directory {elsewhere}/hato-data (the default")
    assert "--init" in done.stderr
    assert list(elsewhere.iterdir()) == []  # nothing made
    assert not _can_log_in(server, test_ca, "alice@users.test", PASSPHRASE)

    done = _user_add(server, "alice@users.test", PASSPHRASE, cwd=elsewhere, home=True)
    assert (done.returncode, done.stderr) == (0, "")
    assert done.stdout == f"added alice@users.test (in {server.data_dir}/users.db)\n"
    assert _can_log_in(server, test_ca, "alice@users.test", PASSPHRASE)


def test_a_weak_password_is_refused_unless_allowed(
    server: HatoServer, test_ca: TestCA, workdir: Path
) -> None:
    for weak, why in (("x", "it has 1 characters"), ("Password2026!", "common passwords")):
        done = _user_add(server, "bob@users.test", weak, cwd=workdir, home=True)
        assert done.returncode == 1
        assert done.stderr.startswith("hato: password refused: ") and why in done.stderr
        assert not _can_log_in(server, test_ca, "bob@users.test", weak)
    done = _user_add(server, "bob@users.test", "x", "--allow-weak", cwd=workdir, home=True)
    assert done.returncode == 0, done.stderr
    assert _can_log_in(server, test_ca, "bob@users.test", "x")


def _serve(config: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [hato_binary(), "serve", "--config", str(config)],
        capture_output=True,
        text=True,
        cwd=config.parent,
        env=env,
        timeout=60,
        check=False,
    )


def test_start_up_hints_fit_the_cause(workdir: Path) -> None:
    """Issue 13: "pick a free port" for an address this host does not have, and "set
    HATO_HOME" when server.data_dir names the directory, sent admins the wrong way."""
    env = {k: v for k, v in os.environ.items() if k != "HATO_HOME"}
    blocker = workdir / "a-file"
    blocker.write_text("")
    config = workdir / "hato.toml"
    base = '[[listener]]\nrole = "mx"\naddress = "{address}"\n\n[[domain]]\nname = "example.org"\n'
    server = '[server]\nhostname = "mail.example.org"\n'

    config.write_text(
        server + f'data_dir = "{workdir / "data"}"\n' + base.format(address="192.0.2.1:2525")
    )
    done = _serve(config, env)
    assert done.returncode == 73, done.stderr
    assert "listener address 192.0.2.1:2525: cannot listen: " in done.stderr
    assert "192.0.2.1 is not an address of this host" in done.stderr
    assert "pick a free port" not in done.stderr

    config.write_text(
        server + f'data_dir = "{blocker / "data"}"\n' + base.format(address="127.0.0.1:2525")
    )
    done = _serve(config, env)
    assert done.returncode == 73, done.stderr
    assert f"server.data_dir: cannot create {blocker / 'data'} (server.data_dir): " in done.stderr
    assert "HATO_HOME" not in done.stderr

    config.write_text(server + base.format(address="127.0.0.1:2525"))
    done = _serve(config, {**env, "HATO_HOME": str(blocker / "home")})
    assert done.returncode == 73, done.stderr
    assert "set server.data_dir or HATO_HOME to a writable directory" in done.stderr
