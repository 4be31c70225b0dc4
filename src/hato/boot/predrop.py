"""What the server makes ready while it is still root: after `[server] user` takes effect it may
no longer reach its own Python installation (one under /root, like pyenv's), root-only
certificates and secrets, or a root-owned socket directory (issue 13).

Theory of operation. Python imports some modules on first use: codecs (the IDNA codec that
turns a From: domain into an A-label, and punycode under it), dnspython's record types and
asyncio backend, parts of the email package, `_strptime`. Imported first after the drop, from
an installation the server's user cannot read, each was an exception in a session: `421 4.3.0`
for every message with a From: header, after `ready`. So `preload()` imports them all before
the drop, and warms the few caches that read data files on first use (the public suffix list).
Files are read before the drop by the callers (the TLS contexts, the smarthost password), and
the unix sockets are bound before it (server.control.bind_unix) and given to the server's
user. What cannot be done early is checked early: `check_after_drop` names a file the server
will read again (aliases, on reload) that its user cannot read, as a start-up error.

May import every room.
"""

from __future__ import annotations

import importlib
import os
import pkgutil
import warnings
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING

from hato.boot.process import EX_CONFIG, StartupError
from hato.server.privileges import Identity

if TYPE_CHECKING:
    from hato.config import Settings

# Packages imported piece by piece on first use, by the standard library or our dependencies.
_LAZY_PACKAGES = ("encodings", "email", "dns.rdtypes", "dkim")
_LAZY_MODULES = (
    "_strptime",  # datetime.strptime, time.strptime
    "stringprep",  # encodings.idna
    "unicodedata",
    "quopri",  # email: quoted-printable bodies
    "dns.asyncbackend",
    "dns._asyncio_backend",  # dnspython picks its asyncio backend on the first query
    "dns.asyncresolver",
    "dns.dnssec",
    "dns.edns",
    "pysequoia",
    "pysequoia.packet",
)
# dkimpy's command-line tools, which the server never runs: importing arcsign calls
# logging.basicConfig(level=DEBUG), a root handler that wrote every dkimpy debug line (each
# signature's tags, per message verified) unbatched to stderr: ~0.3 ms of CPU per message.
_SKIPPED = frozenset(
    {"dkim.__main__", "dkim.arcsign", "dkim.arcverify", "dkim.dkimsign", "dkim.dkimverify",
     "dkim.dknewkey"}
)  # fmt: skip


_preloaded: list[bool] = []  # once per process: a worker inherits the supervisor's


def preload(settings: Settings | None = None) -> None:
    """Import now what would otherwise be imported after the privilege drop, and the optional
    parts `settings` configures (imported where used, so that a server without them does not
    hold them). The supervisor does it before forking the workers, which then share these
    modules' pages with it (issue 15 item 2: each worker held its own copy); a worker's call
    is then free."""
    if _preloaded:
        return
    _preloaded.append(True)
    for name in (*_LAZY_MODULES, *configured_modules(settings)):
        _import(name)
    for package in _LAZY_PACKAGES:
        module = _import(package)
        path = getattr(module, "__path__", None)
        if path is None:
            continue
        for info in pkgutil.walk_packages(path, f"{package}."):
            if info.name not in _SKIPPED:
                _import(info.name)
    from hato.authcheck.dmarc import organizational_domain

    organizational_domain("mail.example.org")  # reads the bundled public suffix list once


def configured_modules(settings: Settings | None) -> tuple[str, ...]:
    """The modules of the optional parts `settings` turns on that are imported where used."""
    if settings is None:
        return ()
    from hato.boot import acme, web

    wanted: list[str] = []
    if settings.tls is not None and settings.tls.acme is not None:
        wanted += acme.MODULES
    if settings.wkd.address is not None:
        wanted += web.MODULES
    if settings.metrics.address is not None:
        wanted.append("aiohttp.web")  # server/metrics.py's metrics_app
    if settings.rspamd is not None:
        wanted += ("aiohttp", "multidict")  # filters/rspamd.py's learning requests
    return tuple(dict.fromkeys(wanted))


def _import(name: str) -> object:
    try:
        with warnings.catch_warnings():  # deprecations of modules we never use (DSA)
            warnings.simplefilter("ignore")
            return importlib.import_module(name)
    except Exception:  # a platform's module (encodings.mbcs), an optional dependency's
        return None


def check_after_drop(files: Iterable[tuple[str, Path]], identity: Identity) -> None:
    """Each (key, path) the server reads again later must be readable by us, now `identity`."""
    for key, path in files:
        if not os.access(path, os.R_OK):
            raise StartupError(
                f"{key}: {path} is not readable by user {identity.user!r}, as which the server "
                f"reads it again on reload; fix: chgrp {identity.group} {path} && chmod g+r "
                f"{path} (and let the group enter its directory)",
                EX_CONFIG,
            )
