"""DKIM body hashes computed while the body streams past (RFC 6376 §3.4, §3.7), for messages
too large to hold whole.

Theory of operation. `BodyCanonicalizer` turns a body fed in chunks of any size into its
canonical form (§3.4.3 "simple" or §3.4.4 "relaxed") and hands it on in pieces; it keeps
only a count of empty lines not yet known to be trailing ones (both algorithms drop them),
whether the current line already has content, and a bounded tail of the current line (a line
longer than `SPILL_AT` is passed on in parts, cut after its last non-WSP octet, so a 12 MiB
line without CRLF costs no 12 MiB). `BodyHash` hashes that output up to l= octets (§3.5 l=).
`SignatureBodies` reads the DKIM-Signature fields of a header section and keeps one
`BodyHash` per distinct (c=, a=, l=), so any number of equal signatures hash the body once.
Line ends are read the way dkimpy reads them (a bare LF ends a line too, RFC 6376 §5.3 lets
a verifier convert to CRLF), so a message gets the same verdict whether it is checked whole
by dkimpy or streamed here. CPU only: the caller runs it off the event loop (offload.Lane).

Imports: model, dkimpy's tag parser.
"""

from __future__ import annotations

import base64
import hashlib
import re
from collections.abc import Callable, Mapping

import dkim  # type: ignore[import-untyped]
from dkim.util import InvalidTagValueList, parse_tag_value  # type: ignore[import-untyped]

from hato.authcheck.canon import crlf_lines, relaxed_lines
from hato.authcheck.fastverify import FastDKIM
from hato.model.header import split_header_fields

# A cap of ours (dkim.MAX_SIGNATURES): the signatures a message may have verified.
MAX_SIGNATURES = 8
SPILL_AT = 64 * 1024  # an unfinished line longer than this is passed on in parts
SLICE = 64 * 1024  # the most one regex pass gets (it holds the GIL: ~5 ms)

_WSP_RUN = re.compile(rb"[ \t]+")
# RFC 6376 §3.3: sha256 for rsa-sha256 and (RFC 8463 §3) ed25519-sha256; rsa-sha1 is hashed
# only so that its verdict is the same as dkimpy's (RFC 8301 §3.1 refuses it later).
_HASHES = {b"rsa-sha256": "sha256", b"ed25519-sha256": "sha256", b"rsa-sha1": "sha1"}
_CRLF = b"\r\n"


class BodyCanonicalizer:
    """RFC 6376 §3.4.3 (simple) or §3.4.4 (relaxed) body canonicalization, chunk by chunk."""

    __slots__ = ("_blank", "_emit", "_open", "_partial", "_relaxed", "_started")

    def __init__(self, relaxed: bool, emit: Callable[[bytes], None]) -> None:
        self._relaxed = relaxed
        self._emit = emit
        self._partial = b""  # the current line after what was passed on: no LF in it
        self._blank = 0  # empty lines seen but not passed on: they may be the trailing ones
        self._open = False  # part of the current line was passed on: it is not empty
        self._started = False  # something was passed on

    def feed(self, chunk: bytes) -> None:
        data = self._partial + chunk
        cut = data.rfind(b"\n") + 1
        if cut == 0:
            self._partial = self._spill(data) if len(data) > SPILL_AT else data
            return
        self._partial = data[cut:]
        lines = crlf_lines(data[:cut])
        if self._relaxed:
            # RFC 6376 §3.4.4: WSP at the end of a line goes, other WSP runs become one SP.
            lines = relaxed_lines(lines)
        if self._open:
            # The rest of a line partly passed on: never an empty line, whatever is left.
            first = lines.index(_CRLF) + 2
            self._out(lines[:first])
            self._open = False
            lines = lines[first:]
        if lines:
            self._lines(lines)
        if len(self._partial) > SPILL_AT:
            self._partial = self._spill(self._partial)

    def _lines(self, lines: bytes) -> None:
        """Complete lines, canonical, ending with CRLF: hold back the trailing empty ones
        (RFC 6376 §3.4.3, §3.4.4: empty lines at the end of the body are ignored)."""
        size, ends = len(lines), 1
        while size >= 2 * (ends + 1) and lines[size - 2 * (ends + 1) : size - 2 * ends] == _CRLF:
            ends += 1
        if 2 * ends == size:
            self._blank += ends
            return
        self._flush_blank()
        self._out(lines[: size - 2 * (ends - 1)])
        self._blank = ends - 1

    def _spill(self, partial: bytes) -> bytes:
        """Pass on the start of a long unfinished line; keep what a later octet may change:
        a last CR (the start of a CRLF) and, for relaxed, a WSP run (one SP, or nothing at
        the end of the line)."""
        keep = len(partial) - 1 if partial.endswith(b"\r") else len(partial)
        head = partial[:keep].rstrip(b" \t") if self._relaxed else partial[:keep]
        tail = partial[len(head) :]
        if head:
            self._flush_blank()
            self._out(_WSP_RUN.sub(b" ", head) if self._relaxed else head)
            self._open = True
        return _WSP_RUN.sub(b" ", tail) if self._relaxed else tail

    def end(self) -> None:
        """The body is over. As dkimpy does: a last line without CRLF gets one (§3.4.3,
        §3.4.4), an empty body is one CRLF for simple and nothing for relaxed."""
        if self._partial or self._open:
            last = _WSP_RUN.sub(b" ", self._partial) if self._relaxed else self._partial
            self._flush_blank()
            self._out(last + _CRLF)
        elif not self._started and not self._relaxed:
            self._out(_CRLF)
        self._partial, self._blank, self._open = b"", 0, False

    def _flush_blank(self) -> None:
        while self._blank:
            count = min(self._blank, SPILL_AT)
            self._out(_CRLF * count)
            self._blank -= count

    def _out(self, data: bytes) -> None:
        self._started = True
        self._emit(data)


class BodyHash:
    """The bh= value of one (c=, a=, l=) combination (RFC 6376 §3.7)."""

    __slots__ = ("_canon", "_hash", "_left")

    def __init__(self, relaxed: bool, algorithm: str, length: int | None) -> None:
        self._hash = hashlib.new(algorithm)
        self._left = length  # RFC 6376 §3.5 l=: only this many canonical octets are hashed
        self._canon = BodyCanonicalizer(relaxed, self._take)

    def _take(self, data: bytes) -> None:
        if self._left is None:
            self._hash.update(data)
        elif self._left > 0:
            self._hash.update(data[: self._left])
            self._left -= min(self._left, len(data))

    def update(self, chunk: bytes) -> None:
        self._canon.feed(chunk)

    def digest(self) -> bytes:
        self._canon.end()
        return self._hash.digest()


HashKey = tuple[bool, str, int | None]


def hash_key(tags: Mapping[bytes, bytes]) -> HashKey | None:
    """(relaxed, hash algorithm, l=) of a signature's tags, or None when they name none we
    know (the signature then fails on its tags, before any body hash is compared)."""
    canon = tags.get(b"c", b"simple/simple").strip().split(b"/")
    body = canon[1] if len(canon) == 2 else b"simple"  # RFC 6376 §3.5 c=: body defaults simple
    algorithm = _HASHES.get(tags.get(b"a", b"").strip())
    length = tags.get(b"l", b"").strip()
    if body not in (b"simple", b"relaxed") or algorithm is None or len(canon) > 2:
        return None
    if length and (not length.isdigit() or len(length) > 76):
        return None  # RFC 6376 §3.5: sig-l-tag is 1*76DIGIT (int() refuses thousands)
    return (body == b"relaxed", algorithm, int(length) if length else None)


class SignatureBodies:
    """The body hashes every DKIM signature of one message needs, fed the body once."""

    def __init__(self, header_block: bytes, max_signatures: int = MAX_SIGNATURES) -> None:
        fields = split_header_fields(header_block)
        signatures = [f for f in fields if f.name.lower() == b"dkim-signature"]
        self._keys: dict[int, HashKey] = {}
        for index, field in enumerate(signatures[:max_signatures]):
            try:
                key = hash_key(dict(parse_tag_value(field.value)))
            except (InvalidTagValueList, ValueError):
                key = None
            if key is not None:
                self._keys[index] = key
        self._hashes = {key: BodyHash(*key) for key in set(self._keys.values())}

    def __bool__(self) -> bool:
        return bool(self._hashes)

    def update(self, chunk: bytes) -> None:
        # In slices: one regex pass holds the GIL throughout, and this runs in a thread of
        # the server's process (offload.Lane), beside the event loop.
        view = memoryview(chunk)
        for at in range(0, len(chunk), SLICE):
            piece = bytes(view[at : at + SLICE])
            for hasher in self._hashes.values():
                hasher.update(piece)

    def digests(self) -> dict[int, bytes]:
        """Signature index (top first) -> its body hash; signatures with unusable tags are
        missing."""
        done = {key: hasher.digest() for key, hasher in self._hashes.items()}
        return {index: done[key] for index, key in self._keys.items()}


class HashedBodyDKIM(FastDKIM):
    """dkimpy's verifier for a message it gets only the header section of: the body hash
    of each signature was computed by `SignatureBodies` and is compared here (RFC 6376
    §6.1.3, "body hash mismatch" as dkimpy says it); dkimpy then checks the tags, fetches
    the key through `dnsfunc` and verifies the header hash and signature (§3.7) as always."""

    def __init__(self, header_block: bytes, digests: Mapping[int, bytes], minkey: int) -> None:
        super().__init__(header_block, minkey=minkey)
        self._digests = digests

    def verify(self, idx: int = 0, dnsfunc: Callable[..., bytes] | None = None) -> bool:
        prep = self.verify_headerprep(idx)
        if not prep:
            return False
        sig, include_headers, sigheaders = prep
        digest = self._digests.get(idx)
        if digest is None:
            raise dkim.MessageFormatError("invalid c=, a= or l= value")
        expected = base64.b64decode(re.sub(rb"\s+", b"", sig[b"bh"]))
        if digest != expected:
            raise dkim.ValidationError("body hash mismatch")
        # Without bh=, dkimpy skips the body (it has none) and checks only the header hash.
        unbodied = {k: v for k, v in sig.items() if k != b"bh"}
        return bool(self.verify_sig(unbodied, include_headers, sigheaders[idx], dnsfunc))
