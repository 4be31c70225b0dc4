"""Values of authentication: SCRAM credentials (RFC 5802 §3) derived from a password.

Must not import anything of hato. Only hashlib/hmac of the stdlib.
"""

from __future__ import annotations

import hashlib
import hmac
import unicodedata
from dataclasses import dataclass

SCRAM_ITERATIONS = 4096  # RFC 7677 §4: at least 4096 for SCRAM-SHA-256


@dataclass(frozen=True, slots=True)
class ScramCredentials:
    """What the server keeps for SCRAM-SHA-256: never the password itself (RFC 5802 §3)."""

    salt: bytes
    iterations: int
    stored_key: bytes
    server_key: bytes

    @classmethod
    def derive(
        cls, password: str, salt: bytes, iterations: int = SCRAM_ITERATIONS
    ) -> ScramCredentials:
        # RFC 5802 §3: SaltedPassword := Hi(Normalize(password), salt, i); Hi is PBKDF2.
        # Normalize is SASLprep (RFC 4013); we apply NFKC, its core, which covers real passwords.
        normalized = unicodedata.normalize("NFKC", password).encode("utf-8")
        salted = hashlib.pbkdf2_hmac("sha256", normalized, salt, iterations)
        client_key = hmac.digest(salted, b"Client Key", "sha256")
        server_key = hmac.digest(salted, b"Server Key", "sha256")
        return cls(salt, iterations, hashlib.sha256(client_key).digest(), server_key)
