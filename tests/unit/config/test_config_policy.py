"""[auth], [[network]], [dns], the new [limits] keys, listener network rules and send_as."""

from __future__ import annotations

import ipaddress
from pathlib import Path

import pytest

from hato.config import AUTH_MECHANISMS, Settings
from hato.model import Address
from kit import config
from kit.config import BASE

FULL = """
[server]
hostname = "mail.example.org"

[auth]
mechanisms = ["plain", "SCRAM-SHA-256"]
failure_delay = 0.5
max_failure_delay = 8
max_failures = 5
max_account_failures = 20
failure_window = 300
block_time = 1800

[limits]
messages_per_hour = 50
recipients_per_hour = 0
spike_recipients = 100
spike_window = 600
spike_hold = false
hold_time = 0

[[network]]
name = "dynamic"
cidrs = ["198.51.100.0/24", "2001:db8:1::/48", "192.0.2.7"]
dnsbl = "pbl.example.net"

[[network]]
name = "office"
cidrs = ["203.0.113.0/28"]

[[listener]]
role = "mx"
address = "127.0.0.1:2525"
refuse_networks = ["dynamic"]

[[listener]]
role = "mx"
address = "127.0.0.1:2526"
allow_networks = ["office", "dynamic"]

[dns]
nameservers = ["127.0.0.1:5353", "[::1]:53", "192.0.2.53", "::1"]
timeout = 2

[[domain]]
name = "example.org"
send_as = { alice = ["sales", "info@example.net"] }
"""


def parse(text: str, base_dir: Path) -> Settings:
    return config.parse(text, base_dir, base="")  # `text` is the whole file


def problems_of(text: str, base_dir: Path) -> tuple[str, ...]:
    return config.problems(text, base_dir, base="")


def test_defaults(tmp_path: Path) -> None:
    settings = parse(BASE, tmp_path)
    assert settings.auth.mechanisms == AUTH_MECHANISMS
    assert (settings.auth.failure_delay, settings.auth.max_failure_delay) == (1.0, 16.0)
    assert (settings.auth.max_failures, settings.auth.block_time) == (10, 900.0)
    assert (settings.auth.cache_ttl, settings.auth.cache_size) == (300.0, 10000)
    assert settings.networks == ()
    assert settings.dns.nameservers is None and settings.dns.timeout == 5.0
    assert settings.limits.messages_per_hour == 200
    assert settings.limits.recipients_per_hour == 1000
    assert settings.limits.spike_hold is True
    listener = settings.listeners[0]
    assert listener.refuse_networks == () and listener.allow_networks == ()
    assert settings.domains[0].send_as == {}


def test_full_example(tmp_path: Path) -> None:
    settings = parse(FULL, tmp_path)
    assert settings.auth.mechanisms == ("PLAIN", "SCRAM-SHA-256")
    assert settings.auth.failure_delay == 0.5 and settings.auth.max_failure_delay == 8.0
    assert (settings.limits.recipients_per_hour, settings.limits.hold_time) == (0, 0)
    assert settings.limits.spike_hold is False
    dynamic = settings.network("dynamic")
    assert dynamic is not None and dynamic.dnsbl == "pbl.example.net"
    assert dynamic.cidrs == (
        ipaddress.ip_network("198.51.100.0/24"),
        ipaddress.ip_network("2001:db8:1::/48"),
        ipaddress.ip_network("192.0.2.7/32"),
    )
    assert settings.listeners[0].refuse_networks == ("dynamic",)
    assert settings.listeners[1].allow_networks == ("office", "dynamic")
    assert settings.dns.nameservers == ("127.0.0.1:5353", "[::1]:53", "192.0.2.53", "::1")
    assert settings.dns.timeout == 2.0
    assert settings.domains[0].send_as == {
        "alice": (Address("sales", "example.org"), Address("info", "example.net"))
    }


def test_unknown_network_names_in_listener_rules(tmp_path: Path) -> None:
    text = BASE.replace(
        'address = "127.0.0.1:2525"',
        'address = "127.0.0.1:2525"\nrefuse_networks = ["dynamic"]\nallow_networks = ["home"]',
    )
    assert problems_of(text, tmp_path) == (
        'listener[0].refuse_networks[0]: no [[network]] named "dynamic" (defined: none '
        "defined); add a [[network]] with that name",
        'listener[0].allow_networks[0]: no [[network]] named "home" (defined: none defined); '
        "add a [[network]] with that name",
    )


@pytest.mark.parametrize(
    ("section", "expected"),
    [
        (
            '[[network]]\nname = "dyn"\ncidrs = ["198.51.100.1/24"]',
            'network[0].cidrs[0]: "198.51.100.1/24" has host bits set; did you mean '
            '"198.51.100.0/24"?',
        ),
        (
            '[[network]]\nname = "dyn"\ncidrs = ["198.51.100.0/33"]',
            'network[0].cidrs[0]: "198.51.100.0/33" is not a CIDR (example: "198.51.100.0/24" '
            'or "2001:db8::/48")',
        ),
        ('[[network]]\nname = "dyn"', "network[0]: a network needs cidrs, a dnsbl zone, or both"),
        (
            '[[network]]\nname = "Dyn Net"\ndnsbl = "pbl.example"',
            'network[0].name: "Dyn Net" is not a network name (lower-case letters, digits, '
            '"-", "_"; example: "dynamic")',
        ),
        (
            '[auth]\nmechanisms = ["PLAIN", "CRAM-MD5"]',
            'auth.mechanisms[1]: "CRAM-MD5" is not a mechanism Hato offers (one of PLAIN, '
            "LOGIN, SCRAM-SHA-256)",
        ),
        (
            "[auth]\nmechanisms = []",
            "auth.mechanisms: offer at least one mechanism (of PLAIN, LOGIN, SCRAM-SHA-256)",
        ),
        (
            "[auth]\nfailure_delay = 4\nmax_failure_delay = 2",
            "auth.max_failure_delay: must be at least auth.failure_delay (4), got 2",
        ),
        (
            '[auth]\nblock_time = "15m"',
            'auth.block_time: "15m" is not a number of seconds (example: 1.5)',
        ),
        ("[auth]\nmax_failures = 0", "auth.max_failures: must be at least 1, got 0"),
        ("[auth]\ncache_ttl = -1", "auth.cache_ttl: must be at least 0, got -1"),
        ("[auth]\ncache_size = 0", "auth.cache_size: must be at least 1, got 0"),
        (
            '[dns]\nnameservers = ["dns.example"]',
            'dns.nameservers[0]: "dns.example" is not a name server address (example: '
            '"127.0.0.1", "127.0.0.1:5353", "[::1]:53")',
        ),
        (
            '[dns]\nnameservers = ["127.0.0.1:0"]',
            'dns.nameservers[0]: "127.0.0.1:0": port must be 1..65535',
        ),
        ("[dns]\ntimeout = 0", "dns.timeout: must be more than 0 and at most 60 seconds, got 0"),
        (
            "[limits]\nspike_window = 30",
            "limits.spike_window: must be 60..3600 seconds (whole minutes are counted), got 30",
        ),
        (
            "[limits]\nmessages_per_hour = -1",
            "limits.messages_per_hour: must be at least 0, got -1",
        ),
    ],
)
def test_problems(tmp_path: Path, section: str, expected: str) -> None:
    assert problems_of(BASE + section, tmp_path) == (expected,)


def test_duplicate_network_names(tmp_path: Path) -> None:
    text = BASE + '[[network]]\nname = "a"\ndnsbl = "x.example"\n' * 2
    assert problems_of(text, tmp_path) == (
        'network[1].name: "a" is already defined by network[0]; merge the two [[network]] '
        "tables or rename one",
    )


def test_send_as_needs_targets(tmp_path: Path) -> None:
    text = BASE + "send_as = { alice = [] }"
    assert problems_of(text, tmp_path) == (
        'domain[0].send_as.alice: a grant needs at least one address (example: ["sales"])',
    )
