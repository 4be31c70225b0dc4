"""Whether a message that says it is encrypted really is, to the recipient's key, so that it may
be stored as it came (docs/encryption.md, "Mail that is already encrypted").

Theory: a Content-Type is only a label. A message labelled `multipart/encrypted` whose parts
hold plaintext, a `text/plain` body that is an armored but only signed (or only compressed)
PGP MESSAGE, an `application/pkcs7-mime` that is signed-data: each was stored in the clear
for a user who has a key (red team, 2026-12-08). So the body is read once more, streaming,
and stored as it came only when all of it is the ciphertext of one encrypted message to the
user's key:
- PGP/MIME (RFC 3156 §4): exactly two body parts, `application/pgp-encrypted` ("Version: 1")
  then `application/octet-stream` holding one armored PGP MESSAGE (RFC 4880 §6.2); a preamble
  only of blank lines or the fixed notice clients write ("This is an OpenPGP/MIME encrypted
  message (RFC 4880 and 3156)"), a blank epilogue;
- inline PGP (RFC 4880 §6.2) in a `text/plain` body: the armored message and blank lines;
- the OpenPGP message itself (RFC 4880 §11.3, RFC 9580 §10.3): public-key encrypted session
  key packets (tag 1), at least one of them to a key of the user's certificate, maybe
  password ones (tag 3) or a marker (tag 10), then one encrypted and integrity-protected data
  packet (tag 18, or 20) that runs to the end of the data; nothing else (no literal, no
  compressed, no signature packet outside it);
- S/MIME (RFC 8551 §3.3, RFC 5652 §6): base64 of one ContentInfo of enveloped-data (or
  authEnveloped-data, RFC 5083) whose recipient infos name the user's certificate (its issuer
  and serial number, or its subject key identifier), with its encrypted content, and nothing
  after it; in DER or in BER with indefinite lengths, as clients that stream write it
  (crypto/envelope.py).
OpenPGP with hidden recipients (`gpg --throw-keyids`, RFC 4880 §5.1: a session-key packet
with key ID zero, the "wild card") is not verified: whether such a packet is to the user's key
cannot be told from the public key. For RSA it holds m^e mod n, a number below n that any
key of the same size could have made; for ECDH (and RFC 9580's X25519) an ephemeral point and
a key wrapped under the shared secret, which takes the private key (or the sender's ephemeral
one) to compute. Hiding the recipient is what the sender asked for (key privacy), so it
cannot be shown; such a message gets the second layer, as any unverified one.
Anything else, or anything this reader does not understand, is "not verified", and the
message is encrypted to the key as any plaintext one is (a second layer is never a loss).
What cannot be seen from outside is what the sender put inside the encrypted packet: a
sender who wants its words readable can always publish them elsewhere.

Bounded: lines of at most 998 octets (RFC 5322 §2.1.1), a fixed number of header and armor
lines, session-key packets of at most 4 KiB, 64 of them, partial body pieces of at least 512
octets, recipient infos of at most 64 KiB (crypto/envelope.py has the S/MIME bounds); the
body is read in chunks, never held whole.
"""

from __future__ import annotations

import base64
import binascii
import email.message
import email.policy
import re
from collections.abc import Iterator

from hato.crypto.envelope import NotEnveloped, enveloped_to
from hato.crypto.keys import KeyKind, PublicKey
from hato.crypto.mime import Parsed

MAX_LINE = 998  # RFC 5322 §2.1.1, without its CRLF
MAX_PART_FIELDS = 8  # header lines of one body part
MAX_ARMOR_HEADERS = 5  # RFC 4880 §6.2: Version, Comment, MessageID, Hash, Charset
MAX_SESSION_PACKET = 4096  # a PKESK of RSA-16384 is about 2 KiB
MAX_SESSION_PACKETS = 64
BASE64_BATCH = 64 * 1024  # base64 text decoded at once (S/MIME)
MIN_PARTIAL = 512  # octets of a partial body length piece (see _Packets._header)

# Thunderbird's "(RFC 4880 and 3156)", GPGTools' "(RFC 2440 and 3156)", ours "(RFC 3156)."
_NOTICE = re.compile(rb"This is an OpenPGP/MIME encrypted message \(RFC \d{4}( and \d{4})?\)\.?")
_ARMOR_HEADER = re.compile(rb"(Version|Comment|MessageID|Hash|Charset): [\x20-\x7e]{0,76}")
_BEGIN, _END = b"-----BEGIN PGP MESSAGE-----", b"-----END PGP MESSAGE-----"
_TAG_PKESK, _TAG_SKESK, _TAG_MARKER, _TAG_SEIPD, _TAG_AEAD = 1, 3, 10, 18, 20


class _Unverified(Exception):
    """Not (provably) ciphertext to the user's key."""


def sealed_to(parsed: Parsed, body: Iterator[bytes], key: PublicKey) -> bool:
    """Whether the message (its header `parsed`, its `body` chunks after the header section)
    is one encrypted message to `key` and nothing else: then it is stored as it came."""
    holder = email.message.Message(policy=email.policy.compat32)
    for field in parsed.fields:
        if field.name in (b"content-type", b"content-transfer-encoding"):
            holder[field.name.decode()] = field.value
    ctype = holder.get_content_type()
    encoding = str(holder.get("content-transfer-encoding", "7bit")).strip().lower()
    try:
        if key.kind is KeyKind.OPENPGP:
            ids = openpgp_key_ids(key.data)
            if ctype == "multipart/encrypted":
                protocol = str(holder.get_param("protocol", "") or "").lower()
                boundary = holder.get_boundary()
                if protocol != "application/pgp-encrypted" or not boundary:
                    return False  # RFC 3156 §4: the protocol parameter is required
                _pgp_mime(_lines(body), boundary.encode("ascii", "replace"), ids)
                return True
            if ctype == "text/plain" and encoding in ("7bit", "8bit"):
                _inline(_lines(body), ids)
                return True
            return False
        if ctype in ("application/pkcs7-mime", "application/x-pkcs7-mime") and encoding == (
            "base64"
        ):
            _smime(_base64(_lines(body)), smime_names(key.data))
            return True
        return False
    except _Unverified:
        return False


# -- lines -------------------------------------------------------------------------------------


def _lines(chunks: Iterator[bytes]) -> Iterator[bytes]:
    """The body's lines without their line ends; a line past MAX_LINE is not verified."""
    held = b""
    for chunk in chunks:
        held += chunk
        *whole, held = held.split(b"\n")
        for line in whole:
            if len(line) > MAX_LINE + 1:
                raise _Unverified("line too long")
            yield line.removesuffix(b"\r")
        if len(held) > MAX_LINE + 1:
            raise _Unverified("line too long")
    if held:
        yield held.removesuffix(b"\r")


def _blank(line: bytes) -> bool:
    return not line.strip(b" \t")


# -- PGP/MIME and inline PGP -------------------------------------------------------------------


def _pgp_mime(lines: Iterator[bytes], boundary: bytes, ids: frozenset[bytes]) -> None:
    delimiter, close = b"--" + boundary, b"--" + boundary + b"--"
    # RFC 2046 §5.1.1: the preamble; only blank lines or the clients' fixed notice.
    for line in lines:
        if line.rstrip(b" \t") == delimiter:
            break
        if not (_blank(line) or _NOTICE.fullmatch(line.strip())):
            raise _Unverified("text in the preamble")
    else:
        raise _Unverified("no body part")
    # RFC 3156 §4: the first part is application/pgp-encrypted, "Version: 1".
    if _part_type(lines) != "application/pgp-encrypted":
        raise _Unverified("first part is not application/pgp-encrypted")
    for line in lines:
        if line.rstrip(b" \t") == delimiter:
            break
        if not (_blank(line) or line.strip() == b"Version: 1"):
            raise _Unverified("text in the control part")
    else:
        raise _Unverified("no second part")
    if _part_type(lines) != "application/octet-stream":
        raise _Unverified("second part is not application/octet-stream")
    _armored(lines, ids, end=close)
    for line in lines:  # RFC 2046 §5.1.1: the epilogue; blank only
        if not _blank(line):
            raise _Unverified("text in the epilogue")


def _part_type(lines: Iterator[bytes]) -> str:
    """A body part's header (RFC 2045): its content type; a 7bit part only."""
    holder = email.message.Message(policy=email.policy.compat32)
    fields: list[bytes] = []
    for count, line in enumerate(lines):
        if _blank(line):
            break
        if count >= MAX_PART_FIELDS:
            raise _Unverified("too many part header lines")
        if line[:1] in (b" ", b"\t") and fields:
            fields[-1] += b" " + line.strip()
        else:
            fields.append(line)
    for field in fields:
        name, colon, value = field.partition(b":")
        if colon and name.strip().lower() in (b"content-type", b"content-transfer-encoding"):
            holder[name.strip().decode("latin-1")] = value.decode("latin-1").strip()
    encoding = str(holder.get("content-transfer-encoding", "7bit")).strip().lower()
    if encoding not in ("7bit", "8bit"):
        raise _Unverified("an encoded part")  # its text could not be read as armor
    return holder.get_content_type()


def _inline(lines: Iterator[bytes], ids: frozenset[bytes]) -> None:
    _armored(lines, ids, end=None)


def _armored(lines: Iterator[bytes], ids: frozenset[bytes], end: bytes | None) -> None:
    """RFC 4880 §6.2: blank lines, one armored PGP MESSAGE, blank lines, then `end` (the
    closing delimiter; None: the end of the body)."""
    for line in lines:
        if line.strip() == _BEGIN:
            break
        if not _blank(line):
            raise _Unverified("text before the armor")
    else:
        raise _Unverified("no armor")
    for count, line in enumerate(lines):
        if _blank(line):
            break
        if count >= MAX_ARMOR_HEADERS or not _ARMOR_HEADER.fullmatch(line.rstrip()):
            raise _Unverified("armor header")
    else:
        raise _Unverified("armor without data")
    packets = _Packets(ids)
    decoder = _Base64Lines()
    for line in lines:
        text = line.strip()
        if text == _END:
            break
        if text.startswith(b"=") and len(text) == 5:
            continue  # RFC 4880 §6.1: the CRC-24 line
        packets.feed(decoder.feed(text))
    else:
        raise _Unverified("armor not closed")
    packets.feed(decoder.finish())
    packets.finish()
    for line in lines:
        if end is not None and line.rstrip(b" \t") == end:
            return
        if not _blank(line):
            raise _Unverified("text after the armor")
    if end is not None:
        raise _Unverified("multipart not closed")


class _Base64Lines:
    """Strict base64 of whole lines (the armor's radix-64, RFC 4880 §6.3)."""

    def __init__(self) -> None:
        self._held = b""
        self._ended = False

    def feed(self, text: bytes) -> bytes:
        if self._ended and text:
            raise _Unverified("data after base64 padding")
        data = self._held + text
        cut = len(data) - len(data) % 4
        self._held = data[cut:]
        if b"=" in data[:cut]:
            self._ended = True
        try:
            return base64.b64decode(data[:cut], validate=True)
        except binascii.Error:
            raise _Unverified("not base64") from None

    def finish(self) -> bytes:
        if self._held:
            raise _Unverified("base64 cut short")
        return b""


def _base64(lines: Iterator[bytes]) -> Iterator[bytes]:
    """The decoded octets, in pieces of about BASE64_BATCH (a piece per 76-character line
    cost the reader a step per 57 octets: most of the time of a big message)."""
    decoder = _Base64Lines()
    batch: list[bytes] = []
    held = 0
    for line in lines:
        text = line.strip()
        batch.append(text)
        held += len(text)
        if held >= BASE64_BATCH:
            yield decoder.feed(b"".join(batch))
            batch.clear()
            held = 0
    yield decoder.feed(b"".join(batch))
    decoder.finish()


class _Packets:
    """RFC 4880 §11.3 / RFC 9580 §10.3: an encrypted message, fed in pieces.

    States: reading a packet header (`_head`), a session-key packet's body (`_want` octets into
    `_body`), or skipping the encrypted data packet's body (`_skip` octets, then the next
    partial length header if `_partial`)."""

    def __init__(self, ids: frozenset[bytes]) -> None:
        self._ids = ids
        self._head = bytearray()
        self._tag = 0
        self._want = 0
        self._body = bytearray()
        self._skip = 0
        self._partial = False
        self._sessions = 0
        self._ours = False
        self._data = False  # in the encrypted data packet
        self._done = False  # its last octet was read

    def feed(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            if self._done:
                raise _Unverified("data after the encrypted packet")
            if self._skip:
                step = min(self._skip, len(view))
                self._skip -= step
                view = view[step:]
                if not self._skip and not self._partial:
                    self._done = True
                continue
            if self._want:
                step = min(self._want, len(view))
                self._body += view[:step]
                self._want -= step
                view = view[step:]
                if not self._want:
                    self._session_packet(bytes(self._body))
                continue
            self._head.append(view[0])
            view = view[1:]
            self._header()

    def _header(self) -> None:
        """A packet (or partial length) header, once enough octets are in `_head`."""
        head = self._head
        if self._data:  # RFC 4880 §4.2.2.4: the next length of a partial body
            length = _new_length(head, 0)
        else:
            if not head[0] & 0x80 or not head[0] & 0x40:
                # Old-format packets (RFC 4880 §4.2.1) cannot carry tag 18 or 20.
                if head[0] & 0x80 and (head[0] >> 2) & 0x0F in (_TAG_PKESK, _TAG_SKESK):
                    length = _old_length(head)
                else:
                    raise _Unverified("not an encrypted message's packet")
            else:
                length = _new_length(head, 1)
            self._tag = head[0] & 0x3F if head[0] & 0x40 else (head[0] >> 2) & 0x0F
        if length is None:
            return  # more header octets to come
        size, partial = length
        head.clear()
        if partial and size < MIN_PARTIAL:
            # RFC 4880 §4.2.2.4: the first partial length is at least 512 octets; later ones
            # are held to it too, so that a hostile chain of 1-octet pieces (a header per
            # octet) costs no more than real ones (encoders write 8 KiB or more).
            raise _Unverified("partial body length under 512 octets")
        if self._data:
            self._skip, self._partial = size, partial
            if not size and not partial:
                self._done = True
            return
        tag = self._tag
        if tag in (_TAG_SEIPD, _TAG_AEAD):
            if not self._ours:
                raise _Unverified("not encrypted to the recipient's key")
            self._data, self._skip, self._partial = True, size, partial
            if not size and not partial:
                raise _Unverified("empty encrypted packet")
            return
        if partial or size > MAX_SESSION_PACKET or size < 2:
            raise _Unverified("session key packet of a bad size")
        self._sessions += 1
        if self._sessions > MAX_SESSION_PACKETS:
            raise _Unverified("too many session key packets")
        self._want = size
        self._body.clear()

    def _session_packet(self, body: bytes) -> None:
        if self._tag == _TAG_PKESK:
            self._ours |= _pkesk_key_id(body) in self._ids
        elif self._tag not in (_TAG_SKESK, _TAG_MARKER):
            raise _Unverified(f"packet tag {self._tag} outside the encryption")

    def finish(self) -> None:
        if not self._done or self._head or self._want:
            raise _Unverified("encrypted packet cut short or missing")


def _new_length(head: bytearray, at: int) -> tuple[int, bool] | None:
    """RFC 4880 §4.2.2 (and the tag, at 0, when `at` is 1): (size, partial) or None."""
    if len(head) <= at:
        return None
    o1 = head[at]
    if o1 < 192:
        return o1, False
    if o1 < 224:
        return None if len(head) < at + 2 else (((o1 - 192) << 8) + head[at + 1] + 192, False)
    if o1 < 255:
        return 1 << (o1 & 0x1F), True  # RFC 4880 §4.2.2.4: a partial body length
    if len(head) < at + 5:
        return None
    return int.from_bytes(head[at + 1 : at + 5], "big"), False


def _old_length(head: bytearray) -> tuple[int, bool] | None:
    kind = head[0] & 0x03
    if kind == 3:
        raise _Unverified("indeterminate length")
    width = 1 << kind
    if len(head) < 1 + width:
        return None
    return int.from_bytes(head[1 : 1 + width], "big"), False


def _pkesk_key_id(body: bytes) -> bytes:
    """The key ID a PKESK names (RFC 4880 §5.1: v3, eight octets; RFC 9580 §5.1.2: v6, the
    key version and fingerprint, whose low eight octets are a v4 key's ID)."""
    if body[0] == 3:
        return body[1:9]
    if body[0] == 6 and len(body) > 2 and body[1] == 21 and body[2] == 4:
        return body[3:23][-8:]
    return b""


def openpgp_key_ids(cert: bytes) -> frozenset[bytes]:
    """The key IDs of a certificate's v4 primary key and subkeys (RFC 4880 §12.2)."""
    from hato.crypto.pgpstream import key_ids

    return key_ids(cert)


# -- S/MIME ------------------------------------------------------------------------------------


def smime_names(der: bytes) -> tuple[bytes, ...]:
    """What a CMS recipient info names the certificate by (RFC 5652 §6.2.1 rid): the DER of
    its IssuerAndSerialNumber's two fields, and its subject key identifier."""
    from cryptography import x509

    cert = x509.load_der_x509_certificate(der)
    issuer = cert.issuer.public_bytes()
    serial = _der_integer(cert.serial_number)
    names = [issuer + serial]
    try:
        ski = cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier)
        names.append(_der_tlv(0x80, ski.value.digest))  # [0] IMPLICIT SubjectKeyIdentifier
    except x509.ExtensionNotFound:
        pass
    return tuple(names)


def _der_integer(value: int) -> bytes:
    body = value.to_bytes(value.bit_length() // 8 + 1, "big", signed=True)
    return _der_tlv(0x02, body)


def _der_tlv(tag: int, body: bytes) -> bytes:
    size = len(body)
    if size < 128:
        return bytes((tag, size)) + body
    octets = size.to_bytes((size.bit_length() + 7) // 8, "big")
    return bytes((tag, 0x80 | len(octets))) + octets + body


def _smime(chunks: Iterator[bytes], names: tuple[bytes, ...]) -> None:
    """RFC 5652 §3, §6.1: one ContentInfo of enveloped-data to the certificate, in DER or in
    BER with indefinite lengths (crypto/envelope.py), nothing after it."""
    try:
        enveloped_to(chunks, names)
    except NotEnveloped as exc:
        raise _Unverified(str(exc)) from None
