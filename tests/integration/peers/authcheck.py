"""Hato judging inbound mail (SPF, DKIM, DMARC, ARC) against the in-process test DNS server
(tests/dnsserver: `txt_strings` splits a DKIM key record), for the sender-authentication
tests; `signing_pair` starts a signing Hato A that relays to a checking Hato B."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dnsserver import DnsTestServer, ZoneValue, hato_dns, txt_strings

from .hato import HatoServer
from .server import DomainSetup, MailSetup

Zone = dict[str, dict[str, list[ZoneValue]]]


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
        return text + hato_dns(self.nameserver)


A_HOSTNAME = "mx.sender.example"  # the signing Hato A's name
B_HOSTNAME = "mx.dest.example"  # the checking Hato B's: the same name would be a mail loop


def signed_zone(domain: str, dkim_txt: str) -> Zone:
    """`domain`'s DMARC p=reject and A's DKIM key record of it under the selector `hato`."""
    return {
        f"_dmarc.{domain}": {"TXT": ["v=DMARC1; p=reject"]},
        f"hato._domainkey.{domain}": {"TXT": [txt_strings(dkim_txt)]},
    }


def sender_zone(dkim_txt: str) -> Zone:
    """sender.example's SPF (and A's HELO name's, for its DSNs), DMARC p=reject, and A's DKIM
    key record under the selector `hato`."""
    return {
        "sender.example": {"TXT": ["v=spf1 ip4:127.0.0.1 -all"]},
        A_HOSTNAME: {"TXT": ["v=spf1 ip4:127.0.0.1 -all"]},
        **signed_zone("sender.example", dkim_txt),
    }


class SenderHato(HatoServer):
    """Hato A, named A_HOSTNAME: a submit socket for hato-sendmail; the `relayed` domains go
    to `relay` (B); with `milter`, that milter on the submission role."""

    def __init__(
        self,
        data_dir: Path,
        setup: MailSetup,
        relay: str,
        nameserver: str,
        relayed: tuple[str, ...] = ("dest.example",),
        milter: str | None = None,
    ) -> None:
        super().__init__(data_dir, setup)
        self.relay = relay
        self.nameserver = nameserver
        self.relayed = relayed
        self.milter = milter
        self.submit_socket = self.work / "run" / "submit.sock"

    def _config_text(self) -> str:
        text = super()._config_text()
        assert 'hostname = "hato.test"' in text
        text = text.replace('hostname = "hato.test"', f'hostname = "{A_HOSTNAME}"')
        text = text.replace("[server]\n", f'[server]\nsubmit_socket = "{self.submit_socket}"\n', 1)
        text += hato_dns(self.nameserver) + "\n[delivery]\nallow_loopback = true\n"
        for domain in self.relayed:
            text += f'\n[[transport]]\ndomain = "{domain}"\nrelay = "{self.relay}"\n'
        if self.milter is not None:
            text += f'\n[[milter]]\naddress = "{self.milter}"\nroles = ["submission"]\n'
        return text


def dkim_keygen(server: HatoServer, domain: str) -> str:
    """`hato dkim keygen DOMAIN` against `server`'s config (written already): the key record's
    text, its quoted strings joined (the TXT value to serve from the test DNS server)."""
    keygen = server.hato("dkim", "keygen", domain)
    assert keygen.returncode == 0, keygen.stderr
    record = keygen.stdout.splitlines()[-1]
    assert f"._domainkey.{domain}. IN TXT " in record, keygen.stdout
    return "".join(record.split('"')[1::2])


@contextlib.contextmanager
def signing_pair(
    a: HatoServer,
    b: HatoServer,
    dns: DnsTestServer,
    domain: str,
    zone: Callable[[str], Zone],
    others: tuple[str, ...] = (),
) -> Iterator[str]:
    """A gets a DKIM key for `domain` (and for each of `others`: their `signed_zone`), `dns`
    serves `zone(its record)`, then B and A run (A relays to B); yields the key record, and
    stops both."""
    a._prepare()  # writes the config the keygen reads (and adds A's users)
    record = dkim_keygen(a, domain)
    served = zone(record)
    for other in others:
        served |= signed_zone(other, dkim_keygen(a, other))
    dns.load(served)
    b.start()
    try:
        a.start()
        try:
            yield record
        finally:
            a.stop()
    finally:
        b.stop()


@dataclass(frozen=True, slots=True)
class Pair:
    a: SenderHato
    b: CheckingHato
    record: str  # the DKIM key record of hato._domainkey.sender.example


@contextlib.contextmanager
def sender_and_checker(
    directory: Path, setup: MailSetup, others: tuple[str, ...] = (), **sender: Any
) -> Iterator[Pair]:
    """Hato A (`SenderHato` with `setup` and `sender`'s keywords) signing for sender.example
    (and `others`, domains of `setup`) and relaying to Hato B (`CheckingHato`, dest.example
    accepting any local part), both on a test DNS server serving `sender_zone` (and each
    other's `signed_zone`); running, and stopped after."""
    with DnsTestServer({}) as dns:
        b = CheckingHato(
            directory / "b",
            MailSetup(domains=(DomainSetup("dest.example", accept_any=True),)),
            dns.nameserver,
            B_HOSTNAME,
        )
        a = SenderHato(directory / "a", setup, f"{b.host}:{b.port}", dns.nameserver, **sender)
        with signing_pair(a, b, dns, "sender.example", sender_zone, others) as record:
            yield Pair(a, b, record)


def logs(*servers: HatoServer) -> str:
    """The last lines of each server's log, for an assertion's message."""
    return "\n".join(f"--- {s.name} {s.port} ---\n{s.log_text()[-3000:]}" for s in servers)
