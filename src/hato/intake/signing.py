"""DKIM signing of the mail our users send (RFC 6376): which domain signs, and the header.

The signature goes into the stored prefix, so the body file stays exactly as received.
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path

from hato.authcheck import ArcSealer, DkimAlgorithm, DkimError, DkimSigner, load_signing_key
from hato.authcheck.dkim import pieces
from hato.intake.headers import authors
from hato.model import Address, Clock, logfmt
from hato.model.header import split_header_fields

log = logging.getLogger("hato.dkim")


def key_path(dkim_dir: Path, domain: str, selector: str) -> Path:
    """Where `hato dkim keygen` keeps a domain's private key."""
    return dkim_dir / domain.lower() / f"{selector.lower()}.key"


def load_signers(
    dkim_dir: Path, selectors: Mapping[str, str], clock: Clock, problems: list[str] | None = None
) -> dict[str, DkimSigner]:
    """A signer for every local domain whose key file exists (domain -> selector).

    A key that exists but cannot be read or used is an error, logged and added to `problems`
    (shown by `hato status`): that domain's mail then goes out unsigned, and the operator must
    hear of it (issue 13: a key made by root in a directory only root could enter was skipped
    as if there were none)."""
    signers: dict[str, DkimSigner] = {}
    for domain, selector in selectors.items():
        path = key_path(dkim_dir, domain, selector)
        try:
            key = load_signing_key(path.read_bytes())
        except FileNotFoundError:
            continue  # no key made for this domain: nothing to sign with, as configured
        except (OSError, DkimError) as exc:
            why = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
            log.error(logfmt("dkim-key-unusable", domain=domain, path=path, error=why))
            if problems is not None:
                problems.append(
                    f"DKIM key {path} of {domain} cannot be used ({why}): its mail goes out "
                    "UNSIGNED; give it to the server's user: "
                    f"chown -R $(stat -c %U {dkim_dir.parent}) {dkim_dir}"
                )
            continue
        signers[domain.lower()] = DkimSigner(domain, selector, key, clock)
        log.info(logfmt("dkim-key", domain=domain, selector=selector))
    return signers


def load_sealers(
    signers: Mapping[str, DkimSigner], authserv_id: str, clock: Clock
) -> dict[str, ArcSealer]:
    """ARC sealers from the DKIM keys (RFC 8617 §4.1.3 uses the DKIM algorithms; verifiers
    only know rsa-sha256 for ARC, so Ed25519 keys do not seal)."""
    sealers: dict[str, ArcSealer] = {}
    for domain, signer in signers.items():
        if signer.key.algorithm is not DkimAlgorithm.RSA_SHA256:
            log.info(logfmt("arc-seal-skipped", domain=domain, reason="key is not RSA"))
            continue
        sealers[domain] = ArcSealer(domain, signer.selector, signer.key, authserv_id, clock)
    return sealers


class OutboundSigner:
    """Our users' DKIM signatures, by the domain the message's own From names.

    Which domain signs is read from the header section being signed, as it leaves (RFC 6376
    §5: the signer signs the message as it is sent), never from the From the message came
    with: the milters and rspamd run before us and may rewrite From (a list milter makes it
    the list's address), and a signature whose d= is not the From's domain does not align
    (RFC 7489 §3.1.1), so DMARC fails at the receiver. What may reach this From is bounded
    by the doors: the one a client wrote was checked to be the user's own (headers.py,
    after AUTH and on local submission); only the admin's own milters and rspamd may change
    it after that, and their result is trusted as the admin's choice (docs/operations.md
    "Milters"). We sign only with keys we hold: a From of a domain we hold none for gets no
    signature of its domain (the envelope sender's signs, when we hold its key)."""

    def __init__(self, signers: Mapping[str, DkimSigner]) -> None:
        self._signers = dict(signers)

    def __bool__(self) -> bool:
        return bool(self._signers)

    def sign(
        self, message: bytes, *, sender: Address | None = None, parents: bool = False
    ) -> bytes:
        """`sign_parts` for a message whole in memory."""
        end = message.find(b"\r\n\r\n")
        headers, body = (message, b"") if end < 0 else (message[: end + 2], message[end + 4 :])
        return self.sign_parts(headers, pieces(body), sender=sender, parents=parents)

    def sign_parts(
        self,
        headers: bytes,
        body: Iterable[bytes],
        *,
        sender: Address | None = None,
        parents: bool = False,
    ) -> bytes:
        """The DKIM-Signature for the message `headers` + `body` (split by `split_message`:
        its body hashed as it is read, never whole in memory) by the first domain we hold a
        key for among its From addresses (for DMARC alignment, RFC 7489 §3.1.1) and then the
        envelope `sender`'s, or b"". With `parents`, a candidate's parent domains are tried
        after it, nearest first (a notice from MAILER-DAEMON@mx.example.org is signed by
        example.org: relaxed alignment)."""
        fields = split_header_fields(headers)  # once, for the domain and the signature
        for address in [*authors(fields), sender]:
            signer = self._signer_for(address.domain, parents) if address else None
            if signer is not None:
                return signer.sign(headers, body, fields)
        return b""

    def _signer_for(self, domain: str, parents: bool) -> DkimSigner | None:
        labels = domain.lower().split(".")
        for at in range(len(labels) if parents else 1):  # the domain, then its parents
            signer = self._signers.get(".".join(labels[at:]))
            if signer is not None:
                return signer
        return None


def split_message(prefix: bytes, chunks: Iterator[bytes]) -> tuple[bytes, Iterator[bytes]]:
    """`prefix` + the message read as `chunks`: (its header section, with the CRLF ending
    its last field, and the rest of its chunks: the body). RFC 5322 §2.1: the header section
    ends at the first empty line (maybe the first line). Blocks as `chunks` do."""
    head = bytearray(prefix)
    for chunk in chunks:
        seen = max(len(head) - 3, 0)  # where the empty line may start: not searched again
        head += chunk
        end = -2 if head.startswith(b"\r\n") else head.find(b"\r\n\r\n", seen)
        if end != -1:
            rest = bytes(head[end + 4 :])
            return bytes(head[: end + 2]), itertools.chain((rest,), chunks)
    return bytes(head), iter(())
