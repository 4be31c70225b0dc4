"""The verdict values every policy function returns."""

from __future__ import annotations

from dataclasses import dataclass

from hato.model import Reply


@dataclass(frozen=True, slots=True)
class Accept:
    pass


@dataclass(frozen=True, slots=True)
class Reject:
    reply: Reply  # a 5xx


@dataclass(frozen=True, slots=True)
class Defer:
    reply: Reply  # a 4xx


Decision = Accept | Reject | Defer

ACCEPT = Accept()  # every Accept is equal: the per-message decisions return this one (issue 15)
