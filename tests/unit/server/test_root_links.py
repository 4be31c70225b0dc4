"""Root at start-up, in a data directory its server's user owns: no link that user planted
makes root write, chmod or give away a file elsewhere (server/privileges.py acting_as_owner
and give_to, boot/build.py build_tls, server/control.py bind_unix)."""

from __future__ import annotations

import os
import shutil
import socket
import tempfile
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import TYPE_CHECKING, cast

import pytest

from hato.boot.build import build_tls
from hato.model import Role
from hato.server import control
from hato.server.privileges import acting_as_owner, give_to

if TYPE_CHECKING:
    from hato.config import Settings

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="acting as another user needs root")
NOBODY = 65534


@pytest.fixture
def place() -> Iterator[Path]:
    """A directory the server's user (nobody) can reach (pytest's tmp_path is root's 0700)."""
    where = Path(tempfile.mkdtemp(prefix="hato-root-links-"))
    where.chmod(0o711)
    yield where
    shutil.rmtree(where)


@pytest.fixture
def victim(place: Path) -> Path:
    """A system file: root's, readable by all."""
    path = place / "passwd"
    path.write_text("root:x:0:0\n")
    path.chmod(0o644)
    return path


def _data_dir(place: Path) -> Path:
    data = place / "data"
    data.mkdir(mode=0o700)
    os.chown(data, NOBODY, NOBODY)
    return data


def _unchanged(victim: Path) -> bool:
    st = victim.stat()
    return (victim.read_text(), st.st_uid, st.st_mode & 0o777) == ("root:x:0:0\n", 0, 0o644)


def test_what_root_makes_acting_as_the_owner_is_the_owner_s(place: Path) -> None:
    data = _data_dir(place)
    groups = os.getgroups()
    with acting_as_owner(data):
        (data / "made").write_text("x")
    assert (os.geteuid(), os.getegid(), os.getgroups()) == (0, 0, groups)  # root again
    assert (data / "made").stat().st_uid == NOBODY


def test_give_to_gives_neither_a_link_s_target_nor_a_hard_link(place: Path, victim: Path) -> None:
    data = _data_dir(place)
    (data / "soft").symlink_to(victim)
    os.link(victim, data / "hard")
    (data / "mine").write_text("made by root")
    for name in ("soft", "hard", "mine", "gone"):
        give_to(data / name, NOBODY, NOBODY)
    assert _unchanged(victim)
    assert (data / "mine").stat().st_uid == NOBODY


def _settings(data: Path) -> Settings:
    listener = SimpleNamespace(role=Role.SUBMISSION)
    server = SimpleNamespace(hostname="mx.example.org", data_dir=str(data))
    return cast("Settings", SimpleNamespace(tls=None, listeners=[listener], server=server))


def test_the_self_signed_certificate_is_not_written_through_links(
    place: Path, victim: Path
) -> None:
    data = _data_dir(place)
    tls = data / "tls"
    tls.mkdir()
    os.chown(tls, NOBODY, NOBODY)
    (tls / "selfsigned-key.tmp").symlink_to(victim)  # root used to truncate and write it
    (tls / "selfsigned-cert.pem").symlink_to(victim)  # and write the certificate into it
    assert build_tls(_settings(data), data) is not None  # the links replaced, not followed
    assert _unchanged(victim)
    assert not (tls / "selfsigned-cert.pem").is_symlink()


def test_links_in_place_of_the_certificate_are_not_given_away(place: Path, victim: Path) -> None:
    data = _data_dir(place)
    tls = data / "tls"
    tls.mkdir()
    os.chown(tls, NOBODY, NOBODY)
    (tls / "selfsigned-key.pem").symlink_to(victim)  # root used to chown both
    (tls / "selfsigned-cert.pem").symlink_to(victim)
    with pytest.raises(Exception):  # noqa: B017 - not a certificate: whichever error, no chown
        build_tls(_settings(data), data)
    assert _unchanged(victim)


def test_a_fresh_self_signed_certificate_is_the_owner_s(place: Path) -> None:
    data = _data_dir(place)
    assert build_tls(_settings(data), data) is not None
    for path in (data / "tls", *(data / "tls").iterdir()):
        assert path.stat().st_uid == NOBODY


def test_the_control_socket_s_mode_is_never_set_through_a_link(place: Path, victim: Path) -> None:
    planted = place / ".control.sock"
    planted.symlink_to(victim)
    with pytest.raises(OSError):
        control._set_mode(planted, 0o600, (NOBODY, NOBODY))
    assert _unchanged(victim)
    sock = control.bind_unix(place / "control.sock", 0o600, (NOBODY, NOBODY))
    sock.close()
    st = (place / "control.sock").lstat()
    assert (st.st_mode & 0o777, st.st_uid) == (0o600, NOBODY)
    assert isinstance(sock, socket.socket)
