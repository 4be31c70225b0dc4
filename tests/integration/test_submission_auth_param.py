"""MAIL FROM's AUTH= parameter after AUTH (RFC 4954 §5), on the real server (red team,
2026-12-08): a user naming another identity as the message's original submitter is not
believed. The server "MUST behave as if the AUTH=<> parameter was supplied": what is queued
(and told to the milters) is AUTH=<>, while a mailbox of the user's own is kept."""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterator

import pytest
from peers import clients
from peers.clients import logged_in
from peers.hato import HatoServer
from peers.net import LOOPBACK, free_port
from peers.server import submission_setup
from peers.tls import TestCA


class HeldHato(HatoServer):
    """Submission, with every outbound message sent to a smarthost that is not there: it stays
    in the queue (deferred), where `hato queue show` prints its parameters."""

    def _config_text(self) -> str:
        smarthost = f'\n[smarthost]\nhost = "{LOOPBACK}"\nport = {free_port()}\n'
        return super()._config_text() + smarthost


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, test_ca: TestCA) -> Iterator[HeldHato]:
    hato = HeldHato(tmp_path_factory.mktemp("authparam") / "data",
                    submission_setup(test_ca.tls_files()))  # fmt: skip
    hato.start()
    try:
        yield hato
    finally:
        hato.stop()


def _queued_params(server: HeldHato, ca: TestCA, auth_param: str) -> str:
    """Send alice's message to a remote recipient with MAIL FROM ... AUTH=`auth_param`; the
    `params:` line `hato queue show` prints for it."""
    marker = uuid.uuid4().hex
    recipient = f"r{marker[:8]}@remote.test"
    with logged_in(server, ca, "alice@users.test") as session:
        command = f"MAIL FROM:<alice@users.test> AUTH={auth_param}".encode()
        assert session.command(command)[0] == 250
        assert session.command(f"RCPT TO:<{recipient}>".encode())[0] == 250
        assert session.command(b"DATA")[0] == 354
        body = clients.message("alice@users.test", recipient, marker)
        code, lines = session.command(body + b".")
    assert code == 250, lines
    found = re.search(rb"queued as (\S+)", lines[-1])
    assert found, lines
    shown = server.hato("queue", "show", found.group(1).decode())
    assert shown.returncode == 0, shown.stderr
    params = [line for line in shown.stdout.splitlines() if line.startswith("params:")]
    assert len(params) == 1, shown.stdout
    return params[0]


@pytest.mark.parametrize(
    "claimed",
    ["bob@users.test", "bob+2Btag@users.test", "someone@remote.test", "not-an-address"],
)
def test_an_auth_parameter_naming_someone_else_is_kept_as_unknown(
    server: HeldHato, test_ca: TestCA, claimed: str
) -> None:
    params = _queued_params(server, test_ca, claimed)
    assert "AUTH=<>" in params.split(), params
    assert claimed not in params, params
    assert server.wait_for_log(r"event=auth-param-ignored user=alice@users.test claimed=")


@pytest.mark.parametrize("own", ["alice@users.test", "alice+2Blists@users.test", "<>"])
def test_an_auth_parameter_naming_the_user_is_kept(
    server: HeldHato, test_ca: TestCA, own: str
) -> None:
    assert f"AUTH={own}" in _queued_params(server, test_ca, own).split()
