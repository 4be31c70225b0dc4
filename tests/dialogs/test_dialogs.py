"""Runs every scripted dialog in tests/dialogs/scripts against the sans-IO core."""

from __future__ import annotations

from pathlib import Path

import pytest
from dialog_runner import DialogError, parse_dialog, run_dialog, run_file

SCRIPTS = sorted((Path(__file__).parent / "scripts").glob("*.dialog"))


def test_there_are_scripts() -> None:
    assert len(SCRIPTS) >= 10


@pytest.mark.parametrize("path", SCRIPTS, ids=[p.stem for p in SCRIPTS])
def test_dialog(path: Path) -> None:
    run_file(path)


def test_runner_fails_on_a_wrong_expectation() -> None:
    dialog = parse_dialog("S: 220\nC: NOOP\nS: 251\n")
    with pytest.raises(DialogError, match="expected '251'"):
        run_dialog(dialog)


def test_runner_fails_on_unmatched_replies() -> None:
    with pytest.raises(DialogError, match="unexpected replies"):
        run_dialog(parse_dialog("S: 220\nC: NOOP\nC: NOOP\nS: 250\n"))


def test_runner_fails_when_close_is_expected_but_missing() -> None:
    with pytest.raises(DialogError, match="close"):
        run_dialog(parse_dialog("S: 220\nC: NOOP\nS: 250\nS: (closed)\n"))


def test_raw_lines_and_settings_parse() -> None:
    dialog = parse_dialog("% max_recipients=2\n% auth_mechanisms=PLAIN,LOGIN\nX: a\\r\\n\nC: b\n")
    assert dialog.settings == {"max_recipients": 2, "auth_mechanisms": ("PLAIN", "LOGIN")}
    assert [step.data for step in dialog.steps if hasattr(step, "data")] == [b"a\r\nb\r\n"]
