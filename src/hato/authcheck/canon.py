"""RFC 6376 §3.4.4 relaxed body canonicalization of complete lines, shared by the signer
(`dkim/sign.py`) and the verifier's body hash (`bodyhash.py`). A leaf: it imports nothing of
ours, so both may use it without a cycle."""

from __future__ import annotations


def relaxed_lines(lines: bytes) -> bytes:
    """RFC 6376 §3.4.4 (a) and (b) over complete lines: every WSP run becomes one SP, and the
    SP left at the end of a line goes. Byte replacements, not a regular expression: ordinary
    text has a single SP between words, which `[ \t]+` matched and rewrote one at a time
    (0.5-1.5 ms for a 10 KiB body, more than the RSA signature); here each pass is a memchr,
    and the halving loop takes log2 of the longest run passes, so no input makes it slow."""
    if b"\t" in lines:
        lines = lines.replace(b"\t", b" ")
    while b"  " in lines:
        lines = lines.replace(b"  ", b" ")
    return lines.replace(b" \r\n", b"\r\n")


def crlf_lines(lines: bytes) -> bytes:
    """Every line end as CRLF, a bare LF made one (as dkimpy's rfc822_parse splits lines).
    Mail received over SMTP has only CRLF: two counts tell, and nothing is copied then."""
    if lines.count(b"\n") == lines.count(b"\r\n"):
        return lines
    return lines.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")
