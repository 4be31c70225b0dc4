"""DKIM: signing our mail (RFC 6376, RFC 8463) on `cryptography`, verifying theirs with dkimpy.

Theory of operation. Signing never holds the body: `RelaxedBodyHasher` canonicalizes chunk by
chunk (a partial last line and a count of pending empty lines are all it keeps), and the header
block is small. `DkimSigner.sign` returns the ``DKIM-Signature`` field to put in the stored
prefix. Verification hands the whole message to dkimpy, but never lets dkimpy touch DNS: the
selector records of every signature (at most MAX_SIGNATURES) are fetched first through the
async `Resolver` seam, and dkimpy's `dnsfunc` hook answers from that dict. DNS outcomes that
decide a result on their own (no key, temporary failure) are settled before dkimpy runs, and
dkimpy itself runs in an `Offload` (a worker thread), never on the event loop.

Signing is in `sign.py` (canonicalization, keys, `DkimSigner`), verification in `verify.py`;
this package names what the rest of Hato uses of both.

Imports: model (DNS seam, Clock), cryptography, dkimpy. No I/O of its own.
"""

from hato.authcheck.dkim.sign import (
    DEFAULT_OVERSIGNED,
    DEFAULT_SIGNED_HEADERS,
    DkimAlgorithm,
    DkimError,
    DkimSigner,
    RelaxedBodyHasher,
    SigningKey,
    domain_ascii,
    fold_signature,
    fold_tags,
    generate_key,
    header_hash_input,
    load_signing_key,
    pieces,
    relaxed_header,
)
from hato.authcheck.dkim.verify import (
    DKIMPY_ERRORS,
    MAX_SIGNATURES,
    DkimResult,
    DkimStatus,
    answer_dnsfunc,
    fetch_keys,
    header_block,
    key_name,
    verify_dkim,
)

__all__ = [
    "DEFAULT_OVERSIGNED",
    "DEFAULT_SIGNED_HEADERS",
    "DKIMPY_ERRORS",
    "MAX_SIGNATURES",
    "DkimAlgorithm",
    "DkimError",
    "DkimResult",
    "DkimSigner",
    "DkimStatus",
    "RelaxedBodyHasher",
    "SigningKey",
    "answer_dnsfunc",
    "domain_ascii",
    "fetch_keys",
    "fold_signature",
    "fold_tags",
    "generate_key",
    "header_block",
    "header_hash_input",
    "key_name",
    "load_signing_key",
    "pieces",
    "relaxed_header",
    "verify_dkim",
]
