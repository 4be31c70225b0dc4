"""Content encryption at rest: users' public keys (OpenPGP, S/MIME), encryption of whole
messages with header protection, queue-time protection, Maildir re-encryption, and WKD.

The server holds public keys only. See docs/encryption.md.

Must not import anything of hato but model.
"""

from hato.crypto.encrypt import (
    MAX_MESSAGE_SIZE,
    EncryptionError,
    MessageTooLarge,
    encrypt_message,
)
from hato.crypto.keys import KeyImportError, KeyKind, KeyRevoked, PublicKey, parse_public_key
from hato.crypto.keystore import KEYS_DB, FailurePolicy, KeyIndex, KeyLookup, KeyStore
from hato.crypto.maildir import MaildirResult, encrypt_maildir
from hato.crypto.scratch import SealedScratch
from hato.crypto.spool import (
    DEFER_DATA_REPLY,
    DEFER_REPLY,
    Copy,
    EncryptedCopy,
    EncryptionPlan,
    KeyFailure,
    Protected,
    ProtectedStream,
    Stored,
    check_recipient,
    protect_message,
    protect_stream,
    split_for_encryption,
    warning_header,
)
from hato.crypto.wkdhash import advanced_url, direct_url, wkd_hash, zbase32

__all__ = [
    "DEFER_DATA_REPLY",
    "DEFER_REPLY",
    "KEYS_DB",
    "MAX_MESSAGE_SIZE",
    "Copy",
    "EncryptedCopy",
    "EncryptionError",
    "EncryptionPlan",
    "FailurePolicy",
    "KeyFailure",
    "KeyImportError",
    "KeyIndex",
    "KeyKind",
    "KeyLookup",
    "KeyRevoked",
    "KeyStore",
    "MaildirResult",
    "MessageTooLarge",
    "Protected",
    "ProtectedStream",
    "PublicKey",
    "SealedScratch",
    "Stored",
    "advanced_url",
    "check_recipient",
    "direct_url",
    "encrypt_maildir",
    "encrypt_message",
    "parse_public_key",
    "protect_message",
    "protect_stream",
    "split_for_encryption",
    "warning_header",
    "wkd_hash",
    "zbase32",
]
