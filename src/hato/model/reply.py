"""SMTP replies as values: code, enhanced status code, generic text.

Must not import anything of hato.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Reply:
    """One SMTP reply.

    `text` may hold several lines separated by "\\n"; each becomes one reply line.
    The text is generic (detail goes to the log, DESIGN.md).
    """

    code: int
    enhanced: str | None
    text: str

    def __post_init__(self) -> None:
        # RFC 5321 §4.2: a reply code is three digits, the first 2..5.
        if not 200 <= self.code <= 599:
            raise ValueError(f"reply code out of range: {self.code}")
        if "\r" in self.text:
            raise ValueError("reply text must not contain CR")

    @property
    def is_positive(self) -> bool:
        return self.code < 400

    @property
    def is_transient(self) -> bool:
        return 400 <= self.code < 500

    @property
    def is_permanent(self) -> bool:
        return self.code >= 500

    def lines(self, enhanced_codes: bool = True) -> list[str]:
        """The reply as text lines without CRLF, e.g. ``["250-a", "250 2.0.0 b"]``."""
        parts = self.text.split("\n") or [""]
        prefix = f"{self.enhanced} " if (enhanced_codes and self.enhanced) else ""
        out: list[str] = []
        for i, part in enumerate(parts):
            sep = " " if i == len(parts) - 1 else "-"
            out.append(f"{self.code}{sep}{prefix}{part}".rstrip(" "))
        return out

    def to_bytes(self, enhanced_codes: bool = True) -> bytes:
        """Wire form: RFC 5321 §4.2.1 multiline replies use "-" after the code."""
        return "".join(line + "\r\n" for line in self.lines(enhanced_codes)).encode("utf-8")

    def __str__(self) -> str:
        return " / ".join(self.lines())
