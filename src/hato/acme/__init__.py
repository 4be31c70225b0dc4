"""Automatic certificates (RFC 8555 ACME): the order (client.py), the HTTP-01 answers
(challenge.py) or the TLS-ALPN-01 ones (alpn.py), where the files live and when to renew
(store.py, manager.py).

Depends on model only; the composition root (boot/acme.py) gives it plain values and the
callback that swaps the new certificate into the listeners.
"""

import warnings

from cryptography.utils import CryptographyDeprecationWarning

with warnings.catch_warnings():  # pyOpenSSL, under acme, names DSA types at import time
    warnings.simplefilter("ignore", CryptographyDeprecationWarning)
    import acme.client
    import acme.crypto_util  # noqa: F401
