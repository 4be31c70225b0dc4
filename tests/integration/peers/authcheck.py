"""Hato judging inbound mail (SPF, DKIM, DMARC, ARC) against the in-process test DNS server
(tests/dnsserver: `txt_strings` splits a DKIM key record), for the sender-authentication
tests."""

from __future__ import annotations

from pathlib import Path

from .hato import HatoServer
from .server import MailSetup


class CheckingHato(HatoServer):
    """The harness server with inbound checks on and the test DNS server at `nameserver` as its
    only resolver; `hostname` instead of hato.test where two Hatos talk to each other (the same
    name would be a mail loop)."""

    def __init__(
        self, data_dir: Path, setup: MailSetup, nameserver: str, hostname: str | None = None
    ) -> None:
        super().__init__(data_dir, setup)
        self.nameserver = nameserver
        self.hostname = hostname

    def _config_text(self) -> str:
        text = super()._config_text()
        assert "inbound = false" in text
        text = text.replace("inbound = false", "inbound = true")
        if self.hostname is not None:
            assert 'hostname = "hato.test"' in text
            text = text.replace('hostname = "hato.test"', f'hostname = "{self.hostname}"')
        return text + f'\n[dns]\nnameservers = ["{self.nameserver}"]\ntimeout = 2\n'
