"""Every log event name is lower-case-hyphenated and listed in docs/operations.md's catalogue.

Operators and fail2ban grep these names (STYLE.md), so one spelling, one list: the test reads
every `logfmt(...)` call in src/hato with `ast` and compares the names with the "## Log events"
table, both ways, so that neither the code nor the catalogue can drift.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import hato
from hato.queue.admin import Action

SRC = Path(hato.__file__).parent
OPERATIONS = Path(__file__).parents[2] / "docs" / "operations.md"
NAME = re.compile(r"^[a-z0-9]+(-[a-z0-9]+)*$")

# First arguments that are not a literal, with the names they can take.
DYNAMIC = {
    # queue/admin.py: hold, release, flush, delete (a bounce logs "admin-bounce" itself).
    "f'admin-{action.value}'": {f"admin-{a.value}" for a in Action if a is not Action.BOUNCE},
}


def _is_logfmt(func: ast.expr) -> bool:
    return (isinstance(func, ast.Name) and func.id == "logfmt") or (
        isinstance(func, ast.Attribute) and func.attr == "logfmt"
    )


def logged_events() -> dict[str, list[str]]:
    """Event name -> where it is logged (path:line), from every logfmt call in src/hato."""
    found: dict[str, list[str]] = {}
    unknown: list[str] = []
    for path in sorted(SRC.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
            if not (isinstance(node, ast.Call) and _is_logfmt(node.func) and node.args):
                continue
            where = f"{path.relative_to(SRC)}:{node.lineno}"
            first = node.args[0]
            if isinstance(first, ast.Constant) and isinstance(first.value, str):
                names = {first.value}
            elif ast.unparse(first) in DYNAMIC:
                names = DYNAMIC[ast.unparse(first)]
            else:
                unknown.append(f"{where}: {ast.unparse(first)}")
                continue
            for name in names:
                found.setdefault(name, []).append(where)
    assert not unknown, f"logfmt with a non-literal event name (use a literal): {unknown}"
    return found


def catalogued_events() -> list[str]:
    """The event names in the first column of the "## Log events" table."""
    text = OPERATIONS.read_text(encoding="utf-8")
    section = text.split("\n## Log events\n", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"^\| `([^`]+)` \|", section, flags=re.MULTILINE)


def test_the_source_logs_events() -> None:
    events = logged_events()
    assert len(events) > 100
    assert "queue-write-failed" in events


def test_every_event_name_is_lower_case_hyphenated() -> None:
    bad = {name: where for name, where in logged_events().items() if not NAME.match(name)}
    assert not bad


def test_every_logged_event_is_in_the_catalogue() -> None:
    missing = sorted(set(logged_events()) - set(catalogued_events()))
    assert not missing, f"add these to the '## Log events' table of docs/operations.md: {missing}"


def test_the_catalogue_lists_only_events_the_code_logs() -> None:
    stale = sorted(set(catalogued_events()) - set(logged_events()))
    assert not stale, f"docs/operations.md lists events nothing logs: {stale}"


def test_the_catalogue_is_alphabetical_without_duplicates() -> None:
    names = catalogued_events()
    assert names == sorted(set(names))


def test_docs_contrib_and_tests_grep_only_events_the_code_logs() -> None:
    """A rename must carry its greps along: `event=NAME` in docs and contrib (fail2ban), and
    the names the integration tests wait for."""
    root = OPERATIONS.parents[1]
    files = [*(root / "docs").glob("*.md"), *(root / "contrib").rglob("*"),
             *(root / "tests" / "integration").rglob("*.py")]  # fmt: skip
    pattern = re.compile(
        r"event=([a-z][a-z0-9_.-]*[a-z0-9])|(?:wait_event|\.events)\(\s*\"([^\"]+)\""
    )
    logged = set(logged_events())
    unknown = {
        f"{path.relative_to(root)}: {a or b}"
        for path in files
        if path.is_file()
        for a, b in pattern.findall(path.read_text(encoding="utf-8", errors="replace"))
        if (a or b) not in logged
    }
    assert not unknown, sorted(unknown)
