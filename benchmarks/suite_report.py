"""The Markdown benchmarks/suite.py writes between its markers in docs/performance.md."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from suite_idle import IdleResult

BEGIN = "<!-- suite:begin (written by benchmarks/suite.py; edits inside are overwritten) -->"
END = "<!-- suite:end -->"

WHAT = {
    "engine": "msg/s delivered into the Maildir, checks off on both, smtp-source, 10 KiB",
    "mx": "msg/s delivered, SPF/DKIM/DMARC checked on both, DKIM-signed 10 KiB from 127.0.0.2",
    "out": "msg/s handed to smtp-sink, AUTH PLAIN after STARTTLS, DKIM signing on both",
    "big": "msg/s delivered, 10 sessions; peak PSS sampled every 0.2 s",
    "fan-out": "recipient deliveries/s, 10 KiB messages each to 100 accounts (100 Maildirs on "
    "both), 10 sessions",
}


@dataclass(frozen=True, slots=True)
class Row:
    cell: str
    server: str
    rate: float
    cpu_ms: float
    pss_kib: int
    peak_kib: int


def _median(rows: list[Row]) -> Row:
    ranked = sorted(rows, key=lambda r: r.rate)
    return ranked[(len(ranked) - 1) // 2]


def results_table(rows: list[Row]) -> list[str]:
    cells: list[str] = []
    by: dict[tuple[str, str], list[Row]] = {}
    for row in rows:
        if row.cell not in cells:
            cells.append(row.cell)
        by.setdefault((row.cell, row.server), []).append(row)
    out = [
        "| cell | Postfix msg/s | Hato msg/s | Hato/Postfix | Postfix CPU ms/msg | "
        "Hato CPU ms/msg | Postfix PSS MiB | Hato PSS MiB | Postfix peak MiB | Hato peak MiB |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for cell in cells:
        pf = by.get((cell, "postfix"))
        ha = by.get((cell, "hato"))
        p = _median(pf) if pf else None
        h = _median(ha) if ha else None
        ratio = f"**{h.rate / p.rate:.2f}**" if p and h else ""

        def f(row: Row | None, attr: str, fmt: str) -> str:
            if row is None:
                return ""
            value = getattr(row, attr)
            if attr in ("pss_kib", "peak_kib"):
                value = value / 1024
            return format(value, fmt)

        out.append(
            f"| {cell} | {f(p, 'rate', '.0f')} | {f(h, 'rate', '.0f')} | {ratio} | "
            f"{f(p, 'cpu_ms', '.2f')} | {f(h, 'cpu_ms', '.2f')} | {f(p, 'pss_kib', '.0f')} | "
            f"{f(h, 'pss_kib', '.0f')} | {f(p, 'peak_kib', '.0f')} | {f(h, 'peak_kib', '.0f')} |"
        )
    return out


def each_run(rows: list[Row]) -> list[str]:
    by: dict[tuple[str, str], list[Row]] = {}
    for row in rows:
        by.setdefault((row.cell, row.server), []).append(row)
    return [
        f"- {cell}, {server}: " + ", ".join(f"{r.rate:.0f} msg/s ({r.cpu_ms:.2f} ms)" for r in runs)
        for (cell, server), runs in by.items()
    ]


def idle_lines(idle: IdleResult) -> list[str]:
    def p(values: list[float], q: float) -> float:
        ranked = sorted(values)
        return ranked[min(len(ranked) - 1, int(q * len(ranked)))]

    return [
        f"Hato held **{idle.held:,}** of {idle.wanted:,} idle connections (each had read its "
        f"220). PSS {idle.pss_before_kib / 1024:.0f} MiB before, "
        f"{idle.pss_held_kib / 1024:.0f} MiB while held: "
        f"**{idle.kib_per_connection:.1f} KiB per idle connection**.",
        "",
        "A normal client's commands (20 transactions: EHLO, MAIL, RCPT, DATA, the message), "
        "reply times:",
        "",
        "| | commands | median ms | p99 ms | max ms |",
        "|---|---:|---:|---:|---:|",
        f"| before | {len(idle.latency_before_ms)} | {p(idle.latency_before_ms, 0.5):.1f} | "
        f"{p(idle.latency_before_ms, 0.99):.1f} | {max(idle.latency_before_ms):.1f} |",
        f"| with the idle connections held | {len(idle.latency_held_ms)} | "
        f"{p(idle.latency_held_ms, 0.5):.1f} | {p(idle.latency_held_ms, 0.99):.1f} | "
        f"{max(idle.latency_held_ms):.1f} |",
    ]


def section(
    header: dict[str, str],
    rows: list[Row],
    idle: IdleResult | None,
    evidence: list[str],
    appendix: dict[str, str],
) -> str:
    lines = [BEGIN, "", "### Latest run of benchmarks/suite.py", ""]
    if header["note"]:
        lines += [f"**{header['note']}**", ""]
    lines += [
        f"- Command: `{header['command']}`",
        f"- Machine: {header['machine']}; {header['load']}",
        f"- Hato at commit `{header['commit']}` in its default configuration; {header['date']}",
        f"- {header['messages']} messages per run in the engine, mx and out cells; "
        f"{header['rounds']} round(s), interleaved; a `sync` and {header['settle']} s pause "
        "before every run; medians (the run with the median rate, whole rows).",
        "",
    ]
    if rows:
        lines += ["What the cells measure:", ""]
        lines += [f"- **{name}**: {text}" for name, text in WHAT.items()]
        lines += [
            "- **CPU ms/msg**: user + system CPU of the server's processes only (Hato's; "
            "Postfix's master, its daemons, reaped ones included through the master's cutime, "
            "and the add-ons: OpenDKIM, OpenDMARC, Dovecot, policyd-spf; the sink and the "
            "load generator not counted) per message (per delivery in fan-out).",
            "- **PSS**: the server's processes at the end of the run (shared pages counted "
            "once); **peak**: the largest PSS sum sampled during the run.",
            "",
        ]
        lines += results_table(rows)
        lines += ["", "Each run (msg/s, CPU ms/msg), in the order run:", ""]
        lines += each_run(rows)
        lines += [""]
    if evidence:
        lines += ["The checks did run in the mx cell (the first stored message's fields):", ""]
        lines += [f"- {e}" for e in evidence] + [""]
    if idle is not None:
        lines += ["#### Idle connections", "", *idle_lines(idle), ""]
    if appendix:
        lines += ["#### Appendix: Postfix and its add-ons as configured for this run", ""]
        for name, text in appendix.items():
            lines += [f"<details><summary>{name}</summary>", "", "```", text.rstrip(), "```"]
            lines += ["", "</details>", ""]
    lines += [END]
    return "\n".join(lines) + "\n"


def write_section(
    doc: Path,
    header: dict[str, str],
    rows: list[Row],
    idle: IdleResult | None,
    evidence: list[str],
    appendix: dict[str, str],
    dry: bool,
) -> str:
    text = section(header, rows, idle, evidence, appendix)
    if dry:
        return text
    old = doc.read_text()
    if BEGIN in old and END in old:
        start = old.index(BEGIN)
        end = old.index(END) + len(END) + 1
        new = old[:start] + text + old[end:]
    else:
        new = old.rstrip("\n") + "\n\n" + text
    doc.write_text(new)
    return text
