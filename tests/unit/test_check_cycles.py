"""scripts/check_cycles.py: the CI check that the hato package has no import cycle."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path
from types import ModuleType

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "check_cycles.py"


def _script() -> ModuleType:
    spec = importlib.util.spec_from_file_location("check_cycles", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_a_cycle_of_two_and_one_of_three_are_found_and_a_chain_is_not() -> None:
    graph = {
        "a": {"b"},
        "b": {"a", "c"},
        "c": {"d"},
        "d": {"e"},
        "e": {"c", "f"},
        "f": set(),
        "g": {"g"},  # a module importing itself is no cycle between modules
    }
    assert _script().cycles(graph) == [["a", "b"], ["c", "d", "e"]]


def test_a_cycle_is_known_only_when_every_module_is_in_one_entry() -> None:
    script = _script()
    known = {"intake": ("hato.server.*", "hato.intake.*")}
    assert script.owner(["hato.server.session", "hato.intake.steps"], known) == "intake"
    assert script.owner(["hato.server.session", "hato.queue.store"], known) is None


def test_the_check_runs_on_hato_and_passes() -> None:
    done = subprocess.run(
        [sys.executable, str(SCRIPT)], capture_output=True, text=True, check=False
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "no new import cycles in hato" in done.stdout
