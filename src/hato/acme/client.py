"""One ACME order (RFC 8555 §7.4), with certbot's `acme` library doing the JOSE and the HTTP.

Theory of operation. Blocking (requests), so the manager runs it in a worker thread.
Account (§7.3, created or found again by its key: §7.3.1) -> new order for the names (§7.4)
-> for each authorization, answer its http-01 challenge (§8.3) through `Tokens` -> poll and
finalize with a CSR for a fresh key (§7.4) -> the full chain (§7.4.2). Any failure is an
`AcmeError` naming what failed; nothing is written then, so the old certificate stays.
"""

from __future__ import annotations

import datetime
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, cast

import requests
from acme import challenges, client, crypto_util, errors, messages
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from josepy.jwa import RS256
from josepy.jwk import JWK, JWKRSA


class Responder(Protocol):
    """Serves the answers of one challenge type: http-01 (challenge.py) or tls-alpn-01
    (alpn.py); called from the worker thread."""

    challenge: type[challenges.KeyAuthorizationChallenge]

    def put(self, name: str, token: str, key_authorization: str) -> None: ...

    def remove(self, name: str, token: str) -> None: ...


# Their DEBUG lines (every request and response, with nonces) would reach the log through a root
# handler that dkimpy's arcsign installs at import; what fails comes back as AcmeError.
for _noisy in ("acme", "urllib3"):
    logging.getLogger(_noisy).setLevel(logging.WARNING)

ORDER_TIMEOUT = 180.0  # seconds to wait for validation and issuance


class AcmeError(Exception):
    """The order failed; the message says at which step and why."""


@dataclass(frozen=True, slots=True)
class Order:
    directory: str  # the directory URL (RFC 8555 §7.1.1)
    email: str
    names: tuple[str, ...]
    ca_file: Path | None  # CAs to trust for the directory's HTTPS; None: the system's


def obtain(order: Order, account_key_pem: bytes, key_pem: bytes, tokens: Responder) -> bytes:
    """The PEM full chain of a certificate for `order.names` and the key of `key_pem`."""
    try:
        return _obtain(order, account_key_pem, key_pem, tokens)
    except (errors.Error, requests.RequestException, ValueError) as exc:
        raise AcmeError(f"{order.directory}: {type(exc).__name__}: {exc}") from exc


def _obtain(order: Order, account_key_pem: bytes, key_pem: bytes, tokens: Responder) -> bytes:
    loaded = serialization.load_pem_private_key(account_key_pem, password=None)
    if not isinstance(loaded, rsa.RSAPrivateKey):
        raise ValueError("the account key is not RSA")
    jwk = JWKRSA(key=loaded)
    # requests takes a CA file's path where acme's annotation says bool.
    verify = cast(bool, str(order.ca_file)) if order.ca_file is not None else True
    net = client.ClientNetwork(jwk, alg=RS256, verify_ssl=verify, user_agent="hato")
    acme = client.ClientV2(client.ClientV2.get_directory(order.directory, net), net)
    _account(acme, net, order.email)
    csr = crypto_util.make_csr(key_pem, list(order.names))
    orderr = acme.new_order(csr)
    answered: list[tuple[str, str]] = []
    try:
        for authz in orderr.authorizations:
            # RFC 8555 §7.1.4: a server may reuse an authorization that is valid already.
            if authz.body.status != messages.STATUS_VALID:
                answered.append(_answer(acme, authz, jwk, tokens))
        deadline = datetime.datetime.now() + datetime.timedelta(seconds=ORDER_TIMEOUT)
        done = acme.poll_and_finalize(orderr, deadline)
    finally:
        for name, token in answered:
            tokens.remove(name, token)
    return done.fullchain_pem.encode("ascii")


def _account(acme: client.ClientV2, net: client.ClientNetwork, email: str) -> None:
    # RFC 8555 §7.3: agreeing to the terms is the operator's, by configuring the directory.
    new = messages.NewRegistration.from_data(email=email, terms_of_service_agreed=True)
    try:
        acme.new_account(new)
    except errors.ConflictError as exc:
        # RFC 8555 §7.3.1: the key has an account already; its URL is the Location.
        net.account = messages.RegistrationResource(uri=exc.location, body=messages.Registration())


def _answer(acme: client.ClientV2, authz: Any, jwk: JWK, tokens: Responder) -> tuple[str, str]:
    name = str(authz.body.identifier.value)
    for challb in authz.body.challenges:
        if isinstance(challb.chall, tokens.challenge):
            response, validation = challb.response_and_validation(jwk)
            token = str(challb.chall.encode("token"))
            tokens.put(name, token, validation)
            acme.answer_challenge(challb, response)
            return name, token
    raise AcmeError(f"the server offers no {tokens.challenge.typ} challenge for {name}")
