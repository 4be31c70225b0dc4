"""Test DNS: an in-process DNS server (server.py) and a fake Resolver (fake.py), importable
from any test directory.

A test module puts `tests/` on the path and defines its own fixture (a fixture imported from
another module would be flagged by ruff as redefined):

    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # tests/unit/<room> -> tests/
    from dnsserver import DnsTestServer

    @pytest.fixture
    def dns_server() -> Iterator[DnsTestServer]:
        with DnsTestServer() as server:
            yield server
"""

from dnsserver.fake import FakeResolver, FakeValue
from dnsserver.server import DnsTestServer, ZoneDict, ZoneValue

__all__ = ["DnsTestServer", "FakeResolver", "FakeValue", "ZoneDict", "ZoneValue"]
