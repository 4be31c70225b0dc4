"""``hato status``: the one screen an admin reads first.

The server (is it running, since when), each listener (does it accept a connection), the TLS
certificate (days to expiry), the queue (size, oldest message, deferred and held mail), the
deliveries and failures of the last hour, and warnings. Asks the running server over its
control socket; with the server stopped, reads the queue store read-only.

Must not import anything of hato at module level but hato.cli.
"""

from __future__ import annotations

import argparse
import datetime
import socket
import sys
import time
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from hato.cli.queue import SOCKET_NAME, ControlClient, ServerDown

if TYPE_CHECKING:
    from hato.cli.cluster import Cluster

CERT_WARN_DAYS = 14
OLD_MESSAGE = 86400.0  # a message queued longer than a day deserves a look
CONNECT_TIMEOUT = 1.0


def _age(seconds: float) -> str:
    if seconds < 120:
        return f"{int(seconds)}s"
    if seconds < 7200:
        return f"{int(seconds // 60)} min"
    if seconds < 172800:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86400:.1f} days"


def listening(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=CONNECT_TIMEOUT):
            return True
    except OSError:
        return False


def cert_expiry(path: Path) -> datetime.datetime:
    """The notAfter of the first certificate in a PEM file (raises OSError, ValueError)."""
    from cryptography import x509

    return x509.load_pem_x509_certificate(path.read_bytes()).not_valid_after_utc


def report(
    *,
    server: dict[str, Any] | None,
    queue: dict[str, Any],
    listeners: list[tuple[str, str, bool]],
    cert: tuple[Path, datetime.datetime | str] | None,
    now: float,
    out: IO[str],
    cluster: Cluster | None = None,
) -> list[str]:
    """Print the screen; returns the warnings (also printed). `cluster`: [store] postgresql's
    database and nodes (hato.cli.cluster); the queue is then the whole cluster's."""
    warnings: list[str] = []
    if server is None:
        print("server:     not running (no answer on the control socket)", file=out)
        warnings.append("the server is not running: mail waits in the queue")
    else:
        print(f"server:     running, pid {server['pid']}, up {_age(server['uptime'])}", file=out)
        # What the running configuration cannot do (a DKIM key it cannot read, ...).
        warnings.extend(str(problem) for problem in server.get("problems", []))
    for role, address, up in listeners:
        state = "accepting" if up else "NOT ACCEPTING"
        print(f"listener:   {role:<12} {address:<22} {state}", file=out)
        if server is not None and not up:
            warnings.append(f"listener {role} {address} does not accept connections")
    if cert is not None:
        path, expiry = cert
        if isinstance(expiry, str):
            print(f"tls cert:   {path}: {expiry}", file=out)
            warnings.append(f"TLS certificate {path}: {expiry}")
        else:
            days = (expiry.timestamp() - now) / 86400
            print(f"tls cert:   {path}, expires {expiry:%Y-%m-%d} ({days:.0f} days)", file=out)
            if days < 0:
                warnings.append(f"TLS certificate {path} EXPIRED on {expiry:%Y-%m-%d}")
            elif days < CERT_WARN_DAYS:
                warnings.append(f"TLS certificate {path} expires in {days:.0f} days: renew it")
    if cluster is not None:
        for line in cluster.lines:
            print(line, file=out)
        warnings.extend(cluster.warnings)
    oldest = queue.get("oldest")
    age = f", oldest {_age(now - oldest)}" if oldest else ""
    whole = " (the whole cluster)" if cluster is not None and cluster.queue is not None else ""
    print(
        f"queue:      {queue['messages']} message(s), {queue['bytes'] // 1024} KiB{age}; "
        f"{queue['queued']} recipient(s) waiting ({queue['deferred']} deferred), "
        f"{queue['held']} held{whole}",
        file=out,
    )
    if oldest and now - oldest > OLD_MESSAGE:
        warnings.append(f"a message has been queued for {_age(now - oldest)} (hato queue list)")
    if queue["held"]:
        warnings.append(f"{queue['held']} recipient(s) held (hato queue list; release or delete)")
    last = server.get("last_hour") if server is not None else None
    uptime = float(server["uptime"]) if server is not None else 0.0
    if last is None:
        last = queue.get("finished_last_hour", {})
        where = "still in the queue store"
    elif uptime < 3600:
        # The counts live in the server's memory: they begin at its start (issue 13).
        where = f"this server, counted since its start {_age(uptime)} ago"
    else:
        where = "this server"
    print(
        f"last hour:  {last.get('delivered', 0)} delivered, {last.get('deferred', 0)} deferred, "
        f"{last.get('failed', 0)} failed ({where})",
        file=out,
    )
    if last.get("failed", 0) and last.get("failed", 0) >= last.get("delivered", 0):
        warnings.append("more failures than deliveries in the last hour")
    for warning in warnings:
        print(f"WARNING:    {warning}", file=out)
    if not warnings:
        print("no warnings", file=out)
    return warnings


def status(args: argparse.Namespace) -> int:
    from hato.cli.options import load

    settings = load(args).settings
    data_dir = Path(settings.server.data_dir)
    now = time.time()
    server: dict[str, Any] | None = None
    try:
        with ControlClient(data_dir / SOCKET_NAME, timeout=10.0) as client:
            answer = client.request({"op": "status"})
            if answer.get("ok"):
                server = answer
    except ServerDown:
        pass
    cluster = None
    if settings.store.backend == "postgresql":
        from hato.cli.cluster import cluster_status

        cluster = cluster_status(settings)
    if cluster is not None and cluster.queue is not None:
        queue = cluster.queue
    elif server is not None:
        queue = server["queue"]
    elif cluster is not None:
        queue = {"messages": 0, "bytes": 0, "queued": 0, "deferred": 0, "held": 0}
    else:
        from hato.queue import QueueError
        from hato.queue.admin import as_json
        from hato.queue.offline import OfflineAdmin

        try:
            admin = OfflineAdmin(data_dir / "queue", writable=False, log=lambda _: None)
        except PermissionError:
            raise  # another user's queue: one line (cli.main), not "0 message(s)"
        except (OSError, QueueError):
            queue = {"messages": 0, "bytes": 0, "queued": 0, "deferred": 0, "held": 0}
        else:
            try:
                queue = as_json(admin.stats(now))
            finally:
                admin.close()
    listeners = [
        (lst.role.value, str(lst.address), listening(lst.host, lst.port))
        for lst in settings.listeners
    ]
    cert_path = (
        (settings.tls.cert or data_dir / "acme" / "cert.pem")  # [tls] acme: hato.acme.store
        if settings.tls is not None
        else data_dir / "tls" / "selfsigned-cert.pem"
    )
    cert: tuple[Path, datetime.datetime | str] | None = None
    if settings.tls is not None or cert_path.exists():
        try:
            cert = (cert_path, cert_expiry(cert_path))
        except (OSError, ValueError) as exc:
            cert = (cert_path, f"cannot read: {exc}")
    warnings = report(
        server=server,
        queue=queue,
        listeners=listeners,
        cert=cert,
        now=now,
        out=sys.stdout,
        cluster=cluster,
    )
    return 1 if warnings else 0


def register(commands: Any) -> None:
    from hato.cli.options import with_config

    sub = commands.add_parser(
        "status", help="server, listeners, certificate, queue and warnings on one screen"
    )
    with_config(sub).set_defaults(handler=status)
