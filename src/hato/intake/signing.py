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
from hato.model import Address, Clock, logfmt

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
    def __init__(self, signers: Mapping[str, DkimSigner]) -> None:
        self._signers = dict(signers)

    def __bool__(self) -> bool:
        return bool(self._signers)

    def sign(
        self, message: bytes, candidates: list[Address | None], *, parents: bool = False
    ) -> bytes:
        """The DKIM-Signature for `message` by the first candidate domain we hold a key for
        (the From: domain first, for DMARC alignment, RFC 7489 §3.1.1), or b"". With
        `parents`, a candidate's parent domains are tried after it, nearest first (a notice
        from MAILER-DAEMON@mx.example.org is signed by example.org: relaxed alignment)."""
        end = message.find(b"\r\n\r\n")
        headers, body = (message, b"") if end < 0 else (message[: end + 2], message[end + 4 :])
        return self.sign_parts(headers, pieces(body), authors=candidates, parents=parents)

    def sign_parts(
        self,
        headers: bytes,
        body: Iterable[bytes],
        *,
        authors: list[Address | None],
        parents: bool = False,
    ) -> bytes:
        """`sign` for a message already split (`split_message`): its body hashed as it is
        read, never whole in memory."""
        for address in authors:
            signer = self._signer_for(address.domain, parents) if address else None
            if signer is not None:
                return signer.sign(headers, body)
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
