"""An in-process DNS server for tests: dnslib on a random loopback port, UDP and TCP.

UDP answers over 1232 octets come truncated (TC), so big answers exercise the TCP retry.

    with DnsTestServer({"example.org": {"MX": [(10, "mx.example.org")]}}) as server:
        resolver = DnsPythonResolver([server.nameserver])

The zone is a dict ``{name: {type: [value, ...]}}`` or zone-file text (``RR.fromZone``):
A/AAAA "address"; TXT "text" or a tuple of strings (one record, several character-strings);
MX (preference, "host"); PTR/CNAME "host"; TLSA (usage, selector, mtype, bytes or hex).
Names that are in the zone (or have names below them, RFC 8020 empty non-terminals) answer
NODATA for other types; all others NXDOMAIN, with a root SOA whose MINIMUM is `negative_ttl`
(RFC 2308 §5). CNAMEs in the zone are followed. Knobs, changeable while running: `servfail`
(names answered SERVFAIL), `drop` (names never answered: a timeout), `authenticated` (set the
AD bit on every answer) and `authenticated_names`. Every question is logged in `queries`.
"""

from __future__ import annotations

import binascii
import threading
from collections.abc import Mapping, Sequence
from types import TracebackType
from typing import Any

from dnslib import (  # type: ignore[import-untyped]
    AAAA,
    CAA,
    CNAME,
    MX,
    PTR,
    QTYPE,
    RCODE,
    RR,
    SOA,
    TLSA,
    TXT,
    A,
    DNSError,
    DNSRecord,
)
from dnslib.server import DNSHandler, DNSServer  # type: ignore[import-untyped]

ZoneValue = (
    str
    | tuple[str, ...]
    | tuple[int, str]
    | tuple[int, str, str]
    | tuple[int, int, int, bytes | str]
)
ZoneDict = Mapping[str, Mapping[str, Sequence[ZoneValue]]]


# DNS flag day 2020: the EDNS0 UDP payload size (RFC 6891 §6.2.5) that avoids fragmentation.
_UDP_LIMIT = 1232


def txt_strings(value: str) -> tuple[str, ...]:
    """A long TXT record (a DKIM key) as one record of several character-strings."""
    # RFC 1035 §3.3.14: at most 255 octets per character-string.
    return tuple(value[i : i + 250] for i in range(0, len(value), 250))


def _key(name: str) -> str:
    return name.rstrip(".").lower()


def _rdata(rtype: str, value: Any) -> Any:
    match rtype:
        case "A":
            return A(value)
        case "AAAA":
            return AAAA(value)
        case "TXT":
            return TXT(list(value) if isinstance(value, tuple) else value)
        case "MX":
            preference, host = value
            return MX(host or ".", preference)
        case "PTR":
            return PTR(value)
        case "CNAME":
            return CNAME(value)
        case "CAA":
            flags, tag, text = value
            return CAA(flags, tag, text)
        case "TLSA":
            usage, selector, mtype, data = value
            raw = binascii.unhexlify(data) if isinstance(data, str) else data
            return TLSA(usage, selector, mtype, raw)
    raise ValueError(f"DnsTestServer: record type {rtype} is not supported")


class _SilentLogger:
    """dnslib's logger interface, saying nothing (its default formats every packet)."""

    def __getattr__(self, _name: str) -> Any:
        return _quiet


def _quiet(*_args: object) -> None:
    return None


class DnsTestServer:
    def __init__(
        self,
        zone: ZoneDict | str = "",
        *,
        default_ttl: int = 300,
        negative_ttl: int = 60,
        address: str = "127.0.0.1",
        port: int = 0,
    ) -> None:
        """`address`/`port`: where to listen (default a random port on 127.0.0.1); a fixed
        port 53 on another loopback address lets a program that reads /etc/resolv.conf (which
        has no port) be pointed at this server (benchmarks/suite.py)."""
        self.address = address
        self._want_port = port
        self.default_ttl = default_ttl
        self.negative_ttl = negative_ttl
        self.servfail: set[str] = set()
        self.drop: set[str] = set()
        self.authenticated = False
        self.authenticated_names: set[str] = set()
        self.queries: list[tuple[str, str]] = []
        self._records: dict[str, list[Any]] = {}
        self._lock = threading.Lock()
        self._servers: list[Any] = []
        self.port = 0
        self.load(zone)

    # -- zone ---------------------------------------------------------------------------------

    def load(self, zone: ZoneDict | str) -> None:
        """Replace the zone."""
        records: dict[str, list[Any]] = {}
        if isinstance(zone, str):
            for rr in RR.fromZone(zone, ttl=self.default_ttl) if zone.strip() else []:
                records.setdefault(_key(str(rr.rname)), []).append(rr)
        else:
            for name, types in zone.items():
                for rtype, values in types.items():
                    for value in values:
                        rr = RR(
                            name,
                            getattr(QTYPE, rtype),
                            rdata=_rdata(rtype, value),
                            ttl=self.default_ttl,
                        )
                        records.setdefault(_key(name), []).append(rr)
        with self._lock:
            self._records = records

    def queries_for(self, name: str, rtype: str) -> int:
        return self.queries.count((_key(name), rtype))

    # -- serving ------------------------------------------------------------------------------

    @property
    def nameserver(self) -> str:
        """``127.0.0.1:PORT``: what DnsPythonResolver and [dns].nameservers take."""
        return f"{self.address}:{self.port}"

    def start(self) -> None:
        logger = _SilentLogger()
        for _attempt in range(20):
            udp = DNSServer(
                _Answerer(self),
                address=self.address,
                port=self._want_port,
                logger=logger,
                handler=_Handler,
            )
            port = udp.server.server_address[1]
            try:
                tcp = DNSServer(
                    _Answerer(self), address=self.address, port=port, tcp=True, logger=logger
                )
            except OSError:
                udp.server.server_close()
                continue
            self.port = port
            self._servers = [udp, tcp]
            for server in self._servers:
                # A short poll interval: stop() waits for it, and tests stop many servers.
                serve = server.server.serve_forever
                threading.Thread(target=serve, kwargs={"poll_interval": 0.02}, daemon=True).start()
            return
        raise RuntimeError("DnsTestServer: no free port for both UDP and TCP")

    def stop(self) -> None:
        for server in self._servers:
            server.stop()
            server.server.server_close()
        self._servers = []

    def __enter__(self) -> DnsTestServer:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # -- answering ----------------------------------------------------------------------------

    def answer(self, request: Any) -> Any:
        qname = _key(str(request.q.qname))
        qtype = QTYPE[request.q.qtype]
        self.queries.append((qname, qtype))
        if qname in self.drop:
            raise DNSError("dropped on purpose")
        reply = request.reply()
        reply.header.ad = int(self.authenticated or qname in self.authenticated_names)
        if qname in self.servfail:
            reply.header.rcode = RCODE.SERVFAIL
            return reply
        with self._lock:
            records = self._records
        name = qname
        for _hop in range(8):
            rrs = records.get(name, [])
            wanted = [rr for rr in rrs if QTYPE[rr.rtype] == qtype]
            cnames = [rr for rr in rrs if QTYPE[rr.rtype] == "CNAME"]
            if wanted or not cnames or qtype == "CNAME":
                for rr in wanted:
                    reply.add_answer(rr)
                break
            reply.add_answer(cnames[0])
            name = _key(str(cnames[0].rdata.label))
        if not reply.rr:
            if not any(key == name or key.endswith("." + name) for key in records):
                reply.header.rcode = RCODE.NXDOMAIN
            soa = SOA("ns.test.", "hostmaster.test.", (1, 3600, 600, 86400, self.negative_ttl))
            reply.add_auth(RR(".", QTYPE.SOA, rdata=soa, ttl=self.negative_ttl))
        return reply


# The [dns] timeout of a Hato that asks this server. It answers every question (a test that
# wants a timeout says so with `drop`), so the timeout bounds only a slow answer: this
# thread of the test process, on a loaded 2-core CI machine, took over 2 s to answer.
HATO_DNS_TIMEOUT = 30


def hato_dns(nameserver: str) -> str:
    """The `[dns]` section of a Hato config that asks only `nameserver` (a test server's)."""
    return f'\n[dns]\nnameservers = ["{nameserver}"]\ntimeout = {HATO_DNS_TIMEOUT}\n'


class _Handler(DNSHandler):  # type: ignore[misc]
    def get_reply(self, data: bytes) -> bytes:
        request = DNSRecord.parse(data)
        reply = self.server.resolver.resolve(request, self)
        wire: bytes = reply.pack()
        if self.protocol == "udp" and len(wire) > _UDP_LIMIT:
            # RFC 1035 §4.2.1 / RFC 7766 §5: set TC, keep the question (dnslib's own truncate()
            # drops it, and resolvers ignore an answer without one); the client retries on TCP.
            short = request.reply()
            short.header.tc = 1
            wire = short.pack()
        return wire


class _Answerer:
    """dnslib's resolver interface, handing each request to the DnsTestServer."""

    def __init__(self, owner: DnsTestServer) -> None:
        self._owner = owner

    def resolve(self, request: Any, handler: Any) -> Any:
        return self._owner.answer(request)
