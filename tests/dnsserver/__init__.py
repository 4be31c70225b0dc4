"""Test DNS: an in-process DNS server (server.py) and a fake Resolver (fake.py), importable
from any test directory.

`tests/` is on the import path (pyproject.toml: pythonpath). A test module defines its own
fixture (a fixture imported from another module would be flagged by ruff as redefined):

    from dnsserver import DnsTestServer

    @pytest.fixture
    def dns_server() -> Iterator[DnsTestServer]:
        with DnsTestServer() as server:
            yield server
"""

from dnsserver.fake import FakeResolver, FakeValue
from dnsserver.server import (
    HATO_DNS_TIMEOUT,
    DnsTestServer,
    ZoneDict,
    ZoneValue,
    hato_dns,
    txt_strings,
)

__all__ = [
    "HATO_DNS_TIMEOUT",
    "DnsTestServer",
    "FakeResolver",
    "FakeValue",
    "ZoneDict",
    "ZoneValue",
    "hato_dns",
    "txt_strings",
]
