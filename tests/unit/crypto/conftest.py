"""Session keys for the crypto tests (made once: RSA generation in gpg takes a while)."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator

import pytest
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from kit.cryptokeys import Gpg, Smime, make_cert, need


@pytest.fixture(scope="session")
def gpg(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gpg]:
    need("gpg")
    home = tmp_path_factory.mktemp("gnupg")
    home.chmod(0o700)
    g = Gpg(home)
    g.run("--quick-gen-key", "Rsa <rsa@example.org>", "rsa2048", "sign,cert", "never")
    g.run("--quick-add-key", g.fingerprint("rsa@example.org"), "rsa2048", "encr", "never")
    g.run("--quick-gen-key", "Ecc <ecc@example.org>", "future-default", "default", "never")
    g.run("--quick-gen-key", "Sig <sig@example.org>", "ed25519", "sign", "never")
    g.run("--quick-gen-key", "Old <old@example.org>", "rsa1024", "sign,cert", "never")
    g.run("--quick-add-key", g.fingerprint("old@example.org"), "rsa1024", "encr", "never")
    past = ("--faked-system-time", "20200101T000000")
    g.run(*past, "--quick-gen-key", "Exp <exp@example.org>", "future-default", "default", "1y")
    yield g
    subprocess.run(
        ["gpgconf", "--kill", "all"], env={**os.environ, "GNUPGHOME": str(home)}, check=False
    )


@pytest.fixture(scope="session")
def smime_rsa() -> Smime:
    return make_cert(rsa.generate_private_key(65537, 2048))


@pytest.fixture(scope="session")
def smime_ec() -> Smime:
    return make_cert(ec.generate_private_key(ec.SECP256R1()))
