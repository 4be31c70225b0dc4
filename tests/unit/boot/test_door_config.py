"""boot.build.door_config: the end-of-message rooms of the doors without a listener (issue 11
"One way in"): local submission has the submission role's, a notice the DKIM keys only; a
reload gives them again (boot.reload)."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import TYPE_CHECKING, cast

from hato.authcheck.dkim import DkimAlgorithm, generate_key
from hato.boot.build import door_config, open_door
from hato.boot.filters import SpamFilters
from hato.intake.context import IntakeContext, Recipients
from hato.intake.finish import Door
from hato.intake.signing import key_path
from hato.model import Role
from hato.queue import QueueStore
from hato.server.metrics import Metrics
from hato.smtp import ServerSettings
from kit import config
from kit.clock import FakeClock

if TYPE_CHECKING:
    from hato.boot.shared import Shared

RSPAMD = '\n[rspamd]\nroles = ["mx", "submission"]\n'
MESSAGE = b"From: a@example.org\r\nSubject: x\r\n\r\nhi\r\n"


def _shared(data_dir: Path) -> Shared:
    return cast(
        "Shared",
        SimpleNamespace(
            clock=FakeClock(), data_dir=data_dir, filters=SpamFilters(), metrics=Metrics(), doors=[]
        ),
    )


def _with_key(data_dir: Path) -> None:
    path = key_path(data_dir / "dkim", "example.org", "hato")
    path.parent.mkdir(parents=True)
    path.write_bytes(generate_key(DkimAlgorithm.ED25519_SHA256)[0])


def test_local_submission_gets_the_keys_rspamd_and_milters_of_the_submission_role(
    tmp_path: Path,
) -> None:
    _with_key(tmp_path)
    settings = config.parse(RSPAMD, tmp_path)
    local = door_config(settings, _shared(tmp_path), Door.LOCAL)
    assert local.signer is not None
    assert local.signer.sign(MESSAGE).startswith(b"DKIM-")
    assert local.spam is not None and local.milters == ()
    notice = door_config(settings, _shared(tmp_path), Door.NOTICE)
    assert notice.signer is not None and notice.spam is None  # our notices: no rspamd


def test_no_key_or_sign_off_leaves_the_doors_unsigned(tmp_path: Path) -> None:
    assert door_config(config.parse("", tmp_path), _shared(tmp_path), Door.LOCAL).signer is None
    _with_key(tmp_path)
    off = config.parse("\n[authcheck]\nsign = false\n", tmp_path)
    assert door_config(off, _shared(tmp_path), Door.NOTICE).signer is None


def test_open_door_configures_the_context_and_registers_it_for_reloads(tmp_path: Path) -> None:
    _with_key(tmp_path)
    shared = _shared(tmp_path)
    ctx = IntakeContext(
        role=Role.SUBMISSION,
        settings=ServerSettings(hostname="mail.example.org"),
        queue=cast(QueueStore, None),
        resolver=cast(Recipients, None),
        clock=FakeClock(),
    )
    open_door(config.parse("", tmp_path), shared, ctx, Door.NOTICE)
    assert ctx.signer is not None
    assert shared.doors == [(ctx, Door.NOTICE)]
