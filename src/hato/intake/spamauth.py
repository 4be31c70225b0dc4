"""Our SPF, DKIM, DMARC and ARC results, told to rspamd so that it does not check again.

Theory of operation. Hato has judged the message (inbound.py) before rspamd sees it, and its
verdict is our Authentication-Results field (RFC 8601) among the header lines we prepend.
Rspamd would check SPF, DKIM, DMARC and ARC again, with its own DNS lookups, signature
verification and CPU. With `[rspamd] trust_our_checks`, its request carries a `Settings`
header (rspamd's protocol: settings for this one scan, read by its settings module) that
turns off its four checks (`symbols_disabled`) and inserts, as its own symbols, the ones its
checks would have given for our results (`symbols`, each with weight 1, so it scores them
with the operator's configured scores and its composites see them): R_SPF_FAIL for
`spf=fail`, DMARC_POLICY_REJECT for `dmarc=fail policy.dmarc=reject`, and so on. A check
whose result is not in our field (or is one we cannot map) is left on: rspamd does it.

Why not rspamd's `http_headers` module (request headers `SPF`, `DKIM`, `DMARC`): in rspamd
3.4, once enabled, it turns those checks off for every scan, also for clients that send no
such header (its conditions return false either way), and it has no ARC.

Imports: authcheck's Authentication-Results parser, model.
"""

from __future__ import annotations

import json

from hato.authcheck.results import HEADER_NAME, resinfo_entries
from hato.model.header import split_header_fields

Inserted = tuple[str, tuple[str, ...]]  # a symbol and its options

# The check each method's result replaces: rspamd's callback symbols (spf.lua SPF_CHECK, the
# dkim C module's DKIM_CHECK, dmarc.lua DMARC_CHECK, arc.lua ARC_CHECK).
CHECKS = {"spf": "SPF_CHECK", "dkim": "DKIM_CHECK", "dmarc": "DMARC_CHECK", "arc": "ARC_CHECK"}

# RFC 7208 §2.6 results -> spf.lua's symbols.
SPF = {
    "pass": "R_SPF_ALLOW",
    "fail": "R_SPF_FAIL",
    "softfail": "R_SPF_SOFTFAIL",
    "neutral": "R_SPF_NEUTRAL",
    "none": "R_SPF_NA",
    "temperror": "R_SPF_DNSFAIL",
    "permerror": "R_SPF_PERMFAIL",
}
# RFC 6376 §6.1 / RFC 8601 §2.7.1 results -> the dkim module's symbols, and DKIM_TRACE's mark.
DKIM = {
    "pass": ("R_DKIM_ALLOW", "+"),
    "fail": ("R_DKIM_REJECT", "-"),
    "temperror": ("R_DKIM_TEMPFAIL", "?"),
    "permerror": ("R_DKIM_PERMFAIL", "~"),
    "neutral": ("R_DKIM_PERMFAIL", "~"),  # a signature that cannot be verified
}
# RFC 7489 §11.2 results -> dmarc.lua's symbols (a fail by the policy we found).
DMARC = {
    "pass": "DMARC_POLICY_ALLOW",
    "none": "DMARC_NA",
    "temperror": "DMARC_DNSFAIL",
    "permerror": "DMARC_BAD_POLICY",
}
DMARC_FAIL = {
    "reject": "DMARC_POLICY_REJECT",
    "quarantine": "DMARC_POLICY_QUARANTINE",
    "none": "DMARC_POLICY_SOFTFAIL",
}
# RFC 8617 §4.4 chain validation -> arc.lua's symbols.
ARC = {"pass": "ARC_ALLOW", "fail": "ARC_REJECT", "none": "ARC_NA"}


def rspamd_settings(added: bytes) -> str | None:
    """The `Settings` request header for our Authentication-Results in `added` (the header
    lines we prepend: only ours), or None when there is none (the checks did not run)."""
    ours = [f for f in split_header_fields(added) if f.name.lower() == HEADER_NAME.lower()]
    if not ours:
        return None
    _, entries = resinfo_entries(ours[0].value)
    symbols: dict[str, list[str]] = {}
    done: set[str] = set()
    by_method: dict[str, list[tuple[str, dict[str, str]]]] = {}
    for entry in entries:
        method, result, props = _entry(entry)
        by_method.setdefault(method, []).append((result, props))
    for method, results in by_method.items():
        found = _symbols(method, results)
        if found is None:
            continue  # unknown here: rspamd checks it
        done.add(method)
        for name, inserted in found:
            options = symbols.setdefault(name, [])
            options += [o for o in inserted if o and o not in options]
    if not done:
        return None
    settings = {
        "symbols_disabled": [CHECKS[m] for m in CHECKS if m in done],
        "symbols": {name: {"score": 1.0, "options": opts} for name, opts in symbols.items()},
    }
    return json.dumps(settings, separators=(",", ":"))  # JSON is UCL


def _symbols(method: str, results: list[tuple[str, dict[str, str]]]) -> list[Inserted] | None:
    """(symbol, its options, as rspamd's own check words them) for one method's results;
    None when one cannot be mapped."""
    out: list[Inserted] = []
    for result, props in results:
        if method == "spf" and result in SPF:
            out.append((SPF[result], (props.get("smtp.mailfrom") or props.get("smtp.helo", ""),)))
        elif method == "dkim" and result == "none":
            out.append(("R_DKIM_NA", ()))
        elif method == "dkim" and result in DKIM:
            symbol, mark = DKIM[result]
            domain, selector = props.get("header.d", ""), props.get("header.s", "")
            key = f"{domain}:s={selector}" if domain and selector else domain
            out += [(symbol, (key,)), ("DKIM_TRACE", (f"{domain}:{mark}" if domain else "",))]
        elif method == "dmarc" and (result == "fail" or result in DMARC):
            policy = props.get("policy.dmarc", "")
            fail = DMARC_FAIL.get(policy, "DMARC_POLICY_SOFTFAIL")
            symbol = fail if result == "fail" else DMARC[result]
            out.append((symbol, (props.get("header.from", ""), policy)))
        elif method == "arc" and result in ARC:
            out.append((ARC[result], ()))
        else:
            return None
    return out if method in CHECKS else None


def _entry(text: str) -> tuple[str, str, dict[str, str]]:
    """`method=result (comment) reason="..." ptype.prop=value ...` (RFC 8601 §2.2), lower-case
    method and result; comments and the reason dropped."""
    words = _words(text)
    method, _, result = (words[0] if words else "").partition("=")
    props: dict[str, str] = {}
    for word in words[1:]:
        name, sep, value = word.partition("=")
        if sep and "." in name:
            props[name.lower()] = value.strip('"')
    # RFC 8601 §2.2: a method may carry a version, "method/1".
    return method.split("/")[0].strip().lower(), result.strip().lower(), props


def _words(text: str) -> list[str]:
    """The blank-separated words of an entry, outside comments; a quoted string stays whole."""
    out: list[str] = []
    word: list[str] = []
    depth, quoted, escaped = 0, False, False
    for char in text:
        if escaped:
            escaped = False
            word.append(char)
        elif char == "\\":
            escaped = True
        elif quoted:
            quoted = char != '"'
            word.append(char)
        elif char == "(":
            depth += 1
        elif char == ")" and depth:
            depth -= 1
        elif depth:
            continue
        elif char == '"':
            quoted = True
            word.append(char)
        elif char in " \t":
            if word:
                out.append("".join(word))
                word = []
        else:
            word.append(char)
    if word:
        out.append("".join(word))
    return out
