"""Whether a CMS message is one enveloped-data to a given certificate, read streaming in DER or
BER (crypto/sealed.py's S/MIME check: docs/encryption.md, "Mail that is already encrypted").

Theory: S/MIME clients write the ContentInfo in DER (definite lengths, computed first) or, when
they stream, in BER with indefinite lengths (X.690 §8.1.3.6: `0x80`, the contents closed by
two zero octets), the encrypted content then cut into OCTET STRING pieces (`openssl cms
-encrypt -stream` writes 4096 octets a piece). Both say the same, so one reader takes both:
RFC 5652 §3 ContentInfo { id-envelopedData (or RFC 5083 §1 id-ct-authEnvelopedData), [0]
EXPLICIT { version, [0] originatorInfo OPTIONAL, recipientInfos SET, encryptedContentInfo
{ contentType, contentEncryptionAlgorithm, [0] encryptedContent }, and the optional fields
after it (attributes, the MAC) } }, then nothing. The recipient infos must name the
certificate (its IssuerAndSerialNumber or SubjectKeyIdentifier, as their DER octets); the
encrypted content must be there (a detached one would leave the message elsewhere).

Bounded: the recipient infos at most 64 KiB (held to be searched), 16 levels of nesting, one
octet of tag (CMS uses no other), lengths of at most four octets; after the recipient infos
at most 256 elements under 512 octets (so that a stream of two-octet pieces costs no more
than real ones: a header per 512 octets at least), the rest skipped as it comes, never held.

Must not import anything of hato but model.
"""

from __future__ import annotations

from collections.abc import Iterator

MAX_RECIPIENT_INFOS = 64 * 1024
MAX_DEPTH = 16
MAX_SMALL = 256  # elements under SMALL octets after the recipient infos
SMALL = 512
# RFC 5652 §6.1 id-envelopedData; RFC 5083 §1 id-ct-authEnvelopedData (DER of the OIDs).
ENVELOPED = bytes.fromhex("06092a864886f70d010703")
AUTH_ENVELOPED = bytes.fromhex("060b2a864886f70d0109100117")
_EOC = b"\x00\x00"  # X.690 §8.1.5: end-of-contents
_SEQUENCE, _SET, _CONTEXT_0, _PRIMITIVE_0 = 0x30, 0x31, 0xA0, 0x80
_INTEGER, _OID = 0x02, 0x06


class NotEnveloped(Exception):
    """Not (provably) one enveloped-data to the certificate."""


def enveloped_to(data: Iterator[bytes], names: tuple[bytes, ...]) -> None:
    """Returns when `data` (the DER or BER octets, in chunks) is one enveloped-data (or
    authEnveloped-data) ContentInfo whose recipient infos hold one of `names`, and nothing
    after it; raises NotEnveloped otherwise."""
    ber = _Reader(data)
    outer = ber.enter(_SEQUENCE)
    kind = ber.element(_OID, 32)
    if kind not in (ENVELOPED, AUTH_ENVELOPED):
        raise NotEnveloped("not enveloped-data")
    explicit = ber.enter(_CONTEXT_0)
    enveloped = ber.enter(_SEQUENCE)
    ber.element(_INTEGER, 8)  # version
    if ber.peek() == _CONTEXT_0:
        ber.skip()  # originatorInfo: certificates and CRLs of the originator
    ber.record = bytearray()
    ber.skip(_SET)  # recipientInfos
    infos, ber.record = bytes(ber.record), None
    if not any(name in infos for name in names):
        raise NotEnveloped("not encrypted to the recipient's certificate")
    ber.small = 0  # counted from here: what a sender may make as long as it likes
    content = ber.enter(_SEQUENCE)  # (auth)EncryptedContentInfo
    ber.element(_OID, 32)  # contentType
    ber.skip(_SEQUENCE)  # contentEncryptionAlgorithm
    if ber.peek() not in (_PRIMITIVE_0, _CONTEXT_0):
        raise NotEnveloped("no encrypted content")
    ber.skip()  # [0] IMPLICIT OCTET STRING, in one piece or in many
    ber.leave(content)
    while not ber.done(enveloped):
        ber.skip()  # unprotectedAttrs, or authAttrs, mac, unauthAttrs
    ber.leave(explicit)
    ber.leave(outer)
    ber.finish()


class _Reader:
    """X.690 §8.1 elements from chunks: `pos` octets consumed; `record` collects them when set.

    An open element is its end (`enter`'s answer): the offset its contents end at (definite
    length), or None (indefinite: until the end-of-contents octets)."""

    def __init__(self, data: Iterator[bytes]) -> None:
        self._data = data
        self._held = bytearray()
        self.pos = 0
        self.depth = 0
        self.record: bytearray | None = None
        self.small: int | None = None  # elements under SMALL octets, once counted

    def _fill(self, count: int) -> bool:
        while len(self._held) < count:
            chunk = next(self._data, None)
            if chunk is None:
                return False
            self._held += chunk
        return True

    def _take(self, count: int) -> bytes:
        if not self._fill(count):
            raise NotEnveloped("cut short")
        taken = bytes(self._held[:count])
        del self._held[:count]
        self._consumed(taken)
        return taken

    def _consumed(self, octets: bytes | bytearray) -> None:
        self.pos += len(octets)
        if self.record is not None:
            self.record += octets
            if len(self.record) > MAX_RECIPIENT_INFOS:
                raise NotEnveloped("recipient infos too large")

    def _pass(self, count: int) -> None:
        """Skip `count` octets as they come (whole chunks only counted, when not recorded:
        the encrypted content is most of the message)."""
        while count:
            if not self._held:
                chunk = next(self._data, None)
                if chunk is None:
                    raise NotEnveloped("cut short")
                if len(chunk) <= count and self.record is None:
                    self.pos += len(chunk)
                    count -= len(chunk)
                    continue
                self._held += chunk
            step = min(count, len(self._held))
            if self.record is None:
                self.pos += step
            else:
                self._consumed(self._held[:step])
            del self._held[:step]
            count -= step

    def peek(self) -> int | None:
        """The next element's tag octet (None at the end of the data)."""
        return self._held[0] if self._fill(1) else None

    def _header(self, tag: int | None) -> tuple[int, int | None]:
        """The next element's tag and length (None: indefinite); `tag`: the one required."""
        found, first = self._take(2)
        if tag is not None and found != tag:
            raise NotEnveloped(f"tag {found:#x} where {tag:#x} belongs")
        if found & 0x1F == 0x1F:
            raise NotEnveloped("a multi-octet tag")  # X.690 §8.1.2.4: none in CMS
        if first < 0x80:
            length: int | None = first
        elif first == 0x80:
            if not found & 0x20:  # X.690 §8.1.3.2 a): indefinite only when constructed
                raise NotEnveloped("an indefinite primitive")
            length = None
        else:
            width = first & 0x7F
            if width > 4:
                raise NotEnveloped("a length of more than four octets")
            length = int.from_bytes(self._take(width), "big")
        if self.small is not None and (length is None or length < SMALL):
            self.small += 1
            if self.small > MAX_SMALL:
                raise NotEnveloped("too many small elements")
        return found, length

    def enter(self, tag: int) -> int | None:
        """Into a constructed element with this tag; its end for `leave` and `done`."""
        _, length = self._header(tag)
        self.depth += 1
        if self.depth > MAX_DEPTH:
            raise NotEnveloped("nested too deep")
        return None if length is None else self.pos + length

    def done(self, end: int | None) -> bool:
        """Whether the open element ending at `end` has no more contents (its end-of-contents
        octets, if indefinite, then consumed)."""
        if end is not None:
            if self.pos > end:
                raise NotEnveloped("an element runs past its container")
            return self.pos == end
        if not self._fill(2):
            raise NotEnveloped("cut short")
        if self._held[:2] != _EOC:
            return False
        self._take(2)
        return True

    def leave(self, end: int | None) -> None:
        if not self.done(end):
            raise NotEnveloped("more in an element than it holds")
        self.depth -= 1

    def element(self, tag: int, most: int) -> bytes:
        """A whole primitive element of at most `most` octets, header included (as DER)."""
        found, length = self._header(tag)
        if length is None or length > most:
            raise NotEnveloped("an element too long")
        return bytes((found, length)) + self._take(length)

    def skip(self, tag: int | None = None) -> None:
        """Past the next element (with `tag`, if given), whatever it holds."""
        _, length = self._header(tag)
        if length is not None:
            self._pass(length)
            return
        self.depth += 1
        if self.depth > MAX_DEPTH:
            raise NotEnveloped("nested too deep")
        while not self.done(None):
            self.skip()
        self.depth -= 1

    def finish(self) -> None:
        if self._fill(1):
            raise NotEnveloped("data after the enveloped data")
