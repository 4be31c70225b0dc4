"""Parsers for the config's scalar values: sizes, listen addresses, domains, mailboxes, paths.

Each raises ValueError with a message that says what was wrong and what would be valid; the
loader puts the key path in front of it. No pydantic here: these are plain functions.

Must not import anything of hato but model.
"""

from __future__ import annotations

import ipaddress
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path

from hato.model import Address, AddressError

_SIZE = re.compile(r"([0-9]+)\s*([KMG]?)", re.IGNORECASE)
_SIZE_UNITS = {"": 1, "K": 1024, "M": 1024**2, "G": 1024**3}
_HOSTNAME_LABEL = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?")


def at_least(minimum: int, value: int, why: str = "") -> int:
    """`value`, or a ValueError the loader turns into "KEY: must be at least N, got V"."""
    if value < minimum:
        raise ValueError(f"must be at least {minimum}{why}, got {value}")
    return value


def show(value: object) -> str:
    """A value as the user wrote it in TOML: strings quoted, booleans lower-case."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)
    if isinstance(value, dict):
        return "a table"
    if isinstance(value, list):
        return "an array"
    return str(value)


def parse_size(value: object) -> int:
    """Octets from an int or a string like ``"10K"``, ``"50M"``, ``"1G"`` (binary multiples)."""
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(value, str) and (match := _SIZE.fullmatch(value.strip())):
        return int(match.group(1)) * _SIZE_UNITS[match.group(2).upper()]
    raise ValueError(
        f'{show(value)} is not a size (octets as an integer, or a string like "10K", "50M", "1G")'
    )


@dataclass(frozen=True, slots=True)
class ListenAddress:
    """Where a listener binds: an IP address or host name, and a port."""

    host: str
    port: int

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


def parse_listen_address(value: object) -> ListenAddress:
    """``"0.0.0.0:25"``, ``"[::1]:587"`` or ``"localhost:2525"``; port 1..65535."""
    bad = f'{show(value)} is not HOST:PORT (example: "0.0.0.0:25", "[::1]:25")'
    if not isinstance(value, str):
        raise ValueError(bad)
    host, sep, port_text = value.rpartition(":")
    if not sep or not host or not port_text.isdigit():
        raise ValueError(bad)
    port = int(port_text)
    if not 1 <= port <= 65535:
        raise ValueError(f"{show(value)}: port must be 1..65535, got {port}")
    if host.startswith("[") and host.endswith("]"):
        try:
            return ListenAddress(str(ipaddress.IPv6Address(host[1:-1])), port)
        except ValueError:
            raise ValueError(f"{show(value)}: {host} is not an IPv6 address") from None
    if ":" in host:
        raise ValueError(f'{show(value)}: an IPv6 address goes in brackets, like "[::1]:25"')
    try:
        return ListenAddress(str(ipaddress.IPv4Address(host)), port)
    except ValueError:
        pass
    if all(_HOSTNAME_LABEL.fullmatch(label) for label in host.split(".")):
        return ListenAddress(host.lower(), port)
    raise ValueError(bad)


def parse_domain_name(value: object) -> str:
    """A DNS domain name (IDN allowed), lower-case; no address literal, no trailing dot."""
    if not isinstance(value, str):
        raise ValueError(f'{show(value)} is not a domain name (example: "example.org")')
    if value.startswith("[") or value.endswith("."):
        raise ValueError(f'{show(value)} is not a domain name (example: "example.org")')
    try:
        address = Address.parse(f"postmaster@{value}")
        address.domain_ascii  # noqa: B018 - raises AddressError when IDNA cannot encode it
    except AddressError as exc:
        raise ValueError(
            f'{show(value)} is not a domain name ({exc}; example: "example.org")'
        ) from None
    return address.domain


def domain_key(name: str) -> str:
    """The A-label (IDNA) form of a domain name, to compare names whatever form was written."""
    return Address("postmaster", name.lower()).domain_ascii.lower()


def parse_local_part(value: object) -> str:
    """An unquoted local part (RFC 5321 §4.1.2 Dot-string, RFC 6531 UTF-8 allowed)."""
    if isinstance(value, str) and "@" not in value:
        try:
            return Address.parse(f"{value}@localhost").local
        except AddressError:
            pass
    raise ValueError(f'{show(value)} is not a local part (example: "alice")')


def parse_target(value: object, domain: str) -> Address:
    """A local part of `domain` (``"alice"``) or a full address (``"bob@example.org"``)."""
    if isinstance(value, str) and "@" not in value:
        return Address(parse_local_part(value), domain)
    if isinstance(value, str):
        try:
            return Address.parse(value)
        except AddressError as exc:
            raise ValueError(f"{show(value)} is not an address ({exc})") from None
    raise ValueError(f'{show(value)} is not a local part or an address (example: "alice")')


def resolve_path(value: object, base_dir: Path) -> Path:
    """An absolute path; a relative one is taken relative to `base_dir` (the file's directory)."""
    if isinstance(value, Path):
        path = value
    elif isinstance(value, str) and value and "\0" not in value:
        path = Path(value).expanduser()
    else:
        raise ValueError(f'{show(value)} is not a path (example: "/var/lib/hato")')
    return Path(os.path.normpath(base_dir / path))


def check_readable_file(path: Path, access: bool = True) -> Path:
    """`path` if it is a file this process can read (`access`: check the permission too)."""
    try:
        path.stat()
    except PermissionError:
        if not access:
            return path  # in a directory closed to us: whoever reads it will say so
        raise ValueError(
            f"file {path} is not readable by this user (a directory on its path is closed)"
        ) from None
    except OSError:
        pass
    if not path.exists():
        raise ValueError(f"file {path} does not exist")
    if not path.is_file():
        raise ValueError(f"{path} is not a file")
    if access and not os.access(path, os.R_OK):
        raise ValueError(f"file {path} is not readable by this user (check owner and mode)")
    return path


def parse_seconds(value: object) -> float:
    """A duration in seconds: an integer or a float (not a string, not a boolean)."""
    if isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    raise ValueError(f"{show(value)} is not a number of seconds (example: 1.5)")


IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


def parse_cidr(value: object) -> IPNetwork:
    """``"198.51.100.0/24"``, ``"2001:db8::/32"`` or one address (a /32 or /128)."""
    if not isinstance(value, str):
        raise ValueError(f'{show(value)} is not a CIDR (example: "198.51.100.0/24")')
    try:
        return ipaddress.ip_network(value.strip())
    except ValueError:
        pass
    try:
        loose = ipaddress.ip_network(value.strip(), strict=False)
    except ValueError:
        raise ValueError(
            f'{show(value)} is not a CIDR (example: "198.51.100.0/24" or "2001:db8::/48")'
        ) from None
    raise ValueError(f'{show(value)} has host bits set; did you mean "{loose}"?')


def parse_nameserver(value: object) -> str:
    """A name server: ``"192.0.2.53"``, ``"127.0.0.1:5353"``, ``"::1"``, ``"[::1]:5353"``.

    Returned in the same form, normalized; only IP addresses (a name would need DNS itself).
    """
    bad = (
        f'{show(value)} is not a name server address (example: "127.0.0.1", '
        '"127.0.0.1:5353", "[::1]:53")'
    )
    if not isinstance(value, str):
        raise ValueError(bad)
    host, port = value, ""
    if value.startswith("["):
        host, sep, rest = value[1:].partition("]")
        if not sep or (rest and not rest.startswith(":")):
            raise ValueError(bad)
        port = rest[1:]
    elif value.count(":") == 1:
        host, _, port = value.partition(":")
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        raise ValueError(bad) from None
    if port == "" and (value.endswith(":") or value.endswith("]:")):
        raise ValueError(bad)
    if port and (not port.isdigit() or not 1 <= int(port) <= 65535):
        raise ValueError(f"{show(value)}: port must be 1..65535")
    if not port:
        return str(address)
    return f"[{address}]:{int(port)}" if address.version == 6 else f"{address}:{int(port)}"
