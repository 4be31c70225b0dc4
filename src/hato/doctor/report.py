"""What `hato doctor` found: one `Finding` per check, and the report as text or JSON.

A finding is OK (✔), a PROBLEM (✘: mail is or will be refused, junked or unverifiable) or a
WARNING (!: worth fixing, or could not be checked from here). Every non-OK finding carries the
fix to paste (a DNS record, a hato.toml section, a command), so an admin never has to guess.

May import hato.model only.
"""

from __future__ import annotations

import enum
import json
from collections.abc import Sequence
from dataclasses import dataclass


class Verdict(enum.Enum):
    OK = "ok"
    PROBLEM = "problem"
    WARNING = "warning"

    @property
    def mark(self) -> str:
        return {"ok": "✔", "problem": "✘", "warning": "!"}[self.value]


@dataclass(frozen=True, slots=True)
class Finding:
    """One check's outcome. `scope`: the domain, address or host it is about ("" for the
    whole server); `check`: a short stable name ("spf", "ptr", "egress-25", ...)."""

    check: str
    scope: str
    verdict: Verdict
    detail: str
    fix: str = ""


def ok(check: str, scope: str, detail: str) -> Finding:
    return Finding(check, scope, Verdict.OK, detail)


def problem(check: str, scope: str, detail: str, fix: str) -> Finding:
    return Finding(check, scope, Verdict.PROBLEM, detail, fix)


def warning(check: str, scope: str, detail: str, fix: str = "") -> Finding:
    return Finding(check, scope, Verdict.WARNING, detail, fix)


def has_problems(findings: Sequence[Finding]) -> bool:
    return any(f.verdict is Verdict.PROBLEM for f in findings)


def render_text(findings: Sequence[Finding]) -> str:
    """The report for a terminal: one line per check, each fix indented beneath it."""
    lines: list[str] = []
    for finding in findings:
        scope = f" {finding.scope}" if finding.scope else ""
        lines.append(f"{finding.verdict.mark} {finding.check}{scope}: {finding.detail}")
        if finding.fix:
            lines.append("    fix:")
            lines.extend(f"      {line}" for line in finding.fix.splitlines())
    problems = sum(f.verdict is Verdict.PROBLEM for f in findings)
    warnings = sum(f.verdict is Verdict.WARNING for f in findings)
    lines.append(f"{len(findings)} checks: {problems} problem(s), {warnings} warning(s)")
    return "\n".join(lines) + "\n"


def render_json(findings: Sequence[Finding]) -> str:
    return json.dumps(
        {
            "ok": not has_problems(findings),
            "findings": [
                {
                    "check": f.check,
                    "scope": f.scope,
                    "verdict": f.verdict.value,
                    "detail": f.detail,
                    "fix": f.fix,
                }
                for f in findings
            ],
        },
        indent=2,
        ensure_ascii=False,
    )
