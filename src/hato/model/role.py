"""Listener roles: what a port is for (DESIGN.md; RFC 6409 and RFC 8314 for submission).

Must not import anything of hato.
"""

from __future__ import annotations

import enum


class Role(enum.Enum):
    MX = "mx"  # port 25: mail for our domains from the world, no AUTH
    SUBMISSION = "submission"  # port 587: STARTTLS, then AUTH (RFC 6409, RFC 3207)
    SUBMISSIONS = "submissions"  # port 465: implicit TLS, then AUTH (RFC 8314 §3.3)
