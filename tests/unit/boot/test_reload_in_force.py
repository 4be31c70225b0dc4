"""boot.reload.InForce: the supervisor's copy of the configuration its workers run, from which
it starts a worker that replaces a dead one: what a reload applied, never what one refused."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from hato.boot.reload import InForce
from hato.config import load_settings
from kit import config

BASE = config.config_text(server='data_dir = "data"')
NEW_DOMAIN = '\n[[domain]]\nname = "new.test"\n'


def _domains(in_force: InForce) -> list[str]:
    return [d.name for d in in_force.settings.domains]


def test_a_reload_the_workers_apply_is_kept_and_one_they_refuse_is_not(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    path = tmp_path / "hato.toml"
    path.write_text(BASE)
    start = load_settings(path, env=os.environ, cwd=tmp_path).settings
    in_force = InForce(start, str(path))

    path.write_text(BASE + NEW_DOMAIN)  # a live key
    in_force.reload()
    assert _domains(in_force) == ["example.org", "new.test"]
    applied = in_force.settings

    # A key that needs a restart refuses the whole file: the domain it adds is not in force.
    path.write_text(BASE.replace('"mail.example.org"', '"other.example.org"') + NEW_DOMAIN
                    + '\n[[domain]]\nname = "refused.test"\n')  # fmt: skip
    in_force.reload()
    assert in_force.settings is applied
    path.write_text(BASE + NEW_DOMAIN + "\n[limits]\nbogus = 1\n")  # errors: refused too
    in_force.reload()
    assert in_force.settings is applied
    aliases = tmp_path / "aliases"  # a file the workers could not read: they refuse it too
    path.write_text(BASE + f'\n[local]\naliases_file = "{aliases}"\n')
    aliases.write_text("postmaster: root\n")
    aliases.chmod(0)
    if os.access(aliases, os.R_OK):  # root reads it anyway: then so do the workers
        aliases.unlink()
    in_force.reload()
    assert in_force.settings is applied
    assert in_force.generation == 4  # each asked reload counts, applied or not
