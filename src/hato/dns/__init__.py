"""The DNS room: dnspython behind hato.model.dns.Resolver, with a TTL cache.

    resolver = DnsPythonResolver(["127.0.0.1:5353"], timeout=5.0, cache=DnsCache(clock))
    answer = await resolver.query("example.org", RdType.MX)

May import hato.model only. Nothing imports this room but server/ and boot/: every other room
gets a `Resolver` passed in.
"""

from hato.dns.cache import CacheSettings, DnsCache
from hato.dns.resolver import DnsPythonResolver, parse_nameserver

__all__ = ["CacheSettings", "DnsCache", "DnsPythonResolver", "parse_nameserver"]
