"""The shared test kit: helpers that more than one test directory uses.

`tests/` is on the import path (pyproject.toml, [tool.pytest.ini_options] pythonpath), so any
test imports `from kit.cryptokeys import Gpg`, `from dnsserver import DnsTestServer` or
`from peers.hato import HatoServer` without touching sys.path.
"""
