"""[metrics] and [server] user/group: what a valid file gives, and what a wrong one says."""

from __future__ import annotations

import grp
import os
import pwd
from pathlib import Path

import pytest

from hato.config import MetricsSettings
from hato.config.values import ListenAddress
from kit.config import parse, problems

ME = pwd.getpwuid(os.getuid())
MY_GROUP = grp.getgrgid(os.getgid()).gr_name


def test_metrics_are_off_unless_an_address_is_given(tmp_path: Path) -> None:
    assert parse("", tmp_path).metrics == MetricsSettings.model_validate({})
    assert parse("", tmp_path).metrics.address is None
    assert parse("[metrics]\n", tmp_path).metrics.address is None


def test_metrics_address(tmp_path: Path) -> None:
    settings = parse('[metrics]\naddress = "127.0.0.1:9464"\n', tmp_path)
    assert settings.metrics.address == ListenAddress("127.0.0.1", 9464)
    settings = parse('[metrics]\naddress = "[::1]:9464"\n', tmp_path)
    assert settings.metrics.address == ListenAddress("::1", 9464)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            '[metrics]\naddress = "9464"\n',
            'metrics.address: "9464" is not HOST:PORT (example: "0.0.0.0:25", "[::1]:25")',
        ),
        (
            "[metrics]\naddress = 9464\n",
            'metrics.address: 9464 is not HOST:PORT (example: "0.0.0.0:25", "[::1]:25")',
        ),
        (
            '[metrics]\nadress = "127.0.0.1:9464"\n',
            "metrics.adress: unknown key (valid keys: max_connections, max_connections_per_ip,"
            " header_timeout, address)",
        ),
        (
            '[metrics]\naddress = "127.0.0.1:2525"\n',  # BASE's listener
            'metrics.address: "127.0.0.1:2525" is already used by listener[0]; '
            "give the metrics endpoint its own port (e.g. 9464)",
        ),
    ],
)
def test_metrics_errors(text: str, expected: str, tmp_path: Path) -> None:
    assert problems(text, tmp_path) == (expected,)


def test_user_and_group_that_exist(tmp_path: Path) -> None:
    server = parse("", tmp_path, server=f'user = "{ME.pw_name}"\ngroup = "{MY_GROUP}"').server
    assert (server.user, server.group) == (ME.pw_name, MY_GROUP)
    server = parse("", tmp_path, server=f'user = "{ME.pw_name}"').server
    assert (server.user, server.group) == (ME.pw_name, None)
    server = parse("", tmp_path).server
    assert (server.user, server.group) == (None, None)


@pytest.mark.parametrize(
    ("server", "expected"),
    [
        (
            'user = "hato-nosuchuser"',
            'server.user: no user "hato-nosuchuser" on this system; create it (useradd --system '
            "--home-dir /var/lib/hato --shell /usr/sbin/nologin hato-nosuchuser) or name an "
            "existing one",
        ),
        (
            f'user = "{ME.pw_name}"\ngroup = "hato-nosuchgroup"',
            'server.group: no group "hato-nosuchgroup" on this system; create it (groupadd '
            "--system hato-nosuchgroup) or leave group out to use the user's own group",
        ),
        (
            f'group = "{MY_GROUP}"',
            'server.group: needs user too (e.g. user = "hato"): whom to run as',
        ),
        ("user = 0", 'server.user: 0 is not a user name (e.g. "hato")'),
        ('user = ""', 'server.user: "" is not a user name (e.g. "hato")'),
    ],
)
def test_user_and_group_errors(server: str, expected: str, tmp_path: Path) -> None:
    assert problems("", tmp_path, server=server) == (expected,)


def test_an_unknown_user_does_not_also_blame_the_group(tmp_path: Path) -> None:
    found = problems("", tmp_path, server=f'user = "hato-nosuchuser"\ngroup = "{MY_GROUP}"')
    assert len(found) == 1 and found[0].startswith("server.user: no user")
