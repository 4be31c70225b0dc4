"""What the supervisor made as root becomes the server user's (boot/supervisor.py), and nothing
else: the data directory is that user's, who may have put links there."""

from __future__ import annotations

import os
from pathlib import Path
from types import SimpleNamespace
from typing import TYPE_CHECKING, cast

import pytest

from hato.boot.supervisor import _give_to_server_user

if TYPE_CHECKING:
    from hato.config import Settings

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="giving files away needs root")


def _settings(data: Path) -> Settings:
    server = SimpleNamespace(user="nobody", group=None, data_dir=str(data))
    return cast("Settings", SimpleNamespace(server=server))


def test_root_s_files_are_given_but_not_through_links(tmp_path: Path) -> None:
    etc = tmp_path / "etc"
    etc.mkdir()
    (etc / "shadow").write_text("root:$6$...\n")
    (etc / "passwd").write_text("root:x:0:0\n")
    data = tmp_path / "data"
    (data / "tls").mkdir(parents=True)
    (data / "users.db").write_bytes(b"made by root")
    (data / "tls" / "key.pem").write_bytes(b"made by root")
    (data / "queue").symlink_to(etc)  # planted by the server's user
    (data / "limits.db").symlink_to(etc / "shadow")
    os.link(etc / "passwd", data / "tls" / "cert.pem")
    _give_to_server_user(_settings(data), data)
    nobody = 65534
    assert (data / "users.db").stat().st_uid == nobody
    assert (data / "tls" / "key.pem").stat().st_uid == nobody
    assert (data / "tls").stat().st_uid == nobody
    assert [p.stat().st_uid for p in (etc, etc / "shadow", etc / "passwd")] == [0, 0, 0]
