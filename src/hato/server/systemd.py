"""sd_notify without libsystemd: READY, RELOADING, STOPPING, STATUS and the watchdog.

Theory of operation (the sd_notify(3) protocol; no RFC). systemd passes the path of a unix
datagram socket in $NOTIFY_SOCKET; a leading "@" means the Linux abstract namespace (the "@"
stands for a NUL byte). A notification is one datagram of newline-separated ``KEY=VALUE``
assignments: ``READY=1`` when start-up is done (Type=notify), ``RELOADING=1`` with
``MONOTONIC_USEC=`` (CLOCK_MONOTONIC in microseconds) when a reload begins, followed by
``READY=1`` when it ends, ``STOPPING=1`` when shutting down, ``STATUS=`` free text shown by
``systemctl status``, and ``WATCHDOG=1`` to keep the watchdog from killing us. The watchdog
interval is $WATCHDOG_USEC, meant for the process $WATCHDOG_PID (when set); systemd's advice is
to send ``WATCHDOG=1`` every half interval. The pet is sent from a task on the event loop, so a
loop that stops turning stops petting, and systemd restarts the server.

Without $NOTIFY_SOCKET (not started by systemd, or Type=simple) every call is a no-op. A failed
send is logged, never raised: a notification must not take the mail server down.

May import model; nothing else of hato.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import time
from collections.abc import Callable, Mapping

from hato.model import logfmt

log = logging.getLogger("hato.systemd")


def _socket_address(value: str) -> str | None:
    """$NOTIFY_SOCKET as an AF_UNIX address, or None when it is none we can use."""
    if value.startswith("@"):
        return "\0" + value[1:]  # sd_notify(3): "@" is the abstract namespace
    if value.startswith("/"):
        return value
    return None  # e.g. "vsock:…" (systemd ≥ 254, for VMs): not for a mail server


class Notifier:
    """Sends notifications to systemd, or does nothing when not started by it."""

    def __init__(self, address: str | None) -> None:
        self._address = address
        self._socket: socket.socket | None = None

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Notifier:
        value = (os.environ if env is None else env).get("NOTIFY_SOCKET", "")
        if not value:
            return cls(None)
        address = _socket_address(value)
        if address is None:
            log.warning(logfmt("sd-notify-unsupported", socket=value))
        return cls(address)

    @property
    def enabled(self) -> bool:
        return self._address is not None

    def notify(self, *assignments: str) -> bool:
        """Send ``KEY=VALUE`` assignments in one datagram; True when systemd got them."""
        if self._address is None:
            return False
        message = "\n".join(assignments).encode("utf-8")
        try:
            if self._socket is None:
                self._socket = socket.socket(
                    socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC
                )
            self._socket.sendto(message, self._address)
        except OSError as exc:
            log.warning(logfmt("sd-notify-failed", error=exc, message=assignments[0]))
            return False
        return True

    def ready(self, status: str | None = None) -> bool:
        """Start-up (or a reload) is done: the listeners are bound."""
        return self.notify("READY=1", *_status(status))

    def reloading(self, monotonic_usec: int | None = None) -> bool:
        """A reload begins (SIGHUP); call `ready` when it is done."""
        usec = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        return self.notify(
            "RELOADING=1", f"MONOTONIC_USEC={usec if monotonic_usec is None else monotonic_usec}"
        )

    def stopping(self, status: str | None = None) -> bool:
        """Shutdown begins (SIGTERM): draining sessions."""
        return self.notify("STOPPING=1", *_status(status))

    def status(self, text: str) -> bool:
        """One line for `systemctl status`."""
        return self.notify(*_status(text))

    def watchdog(self) -> bool:
        return self.notify("WATCHDOG=1")

    def close(self) -> None:
        if self._socket is not None:
            self._socket.close()
            self._socket = None


def _status(text: str | None) -> tuple[str, ...]:
    # sd_notify(3): assignments are newline-separated, so a status is one line.
    return () if text is None else ("STATUS=" + " ".join(text.splitlines()),)


def notify(message: str, env: Mapping[str, str] | None = None) -> bool:
    """One notification, e.g. ``notify("READY=1")``; False when not started by systemd."""
    notifier = Notifier.from_env(env)
    try:
        return notifier.notify(*message.split("\n"))
    finally:
        notifier.close()


def watchdog_interval(env: Mapping[str, str] | None = None, pid: int | None = None) -> float | None:
    """Seconds between the watchdog's deadlines, or None when there is no watchdog for us:
    $WATCHDOG_USEC unset, not a positive integer, or $WATCHDOG_PID naming another process."""
    env = os.environ if env is None else env
    usec = env.get("WATCHDOG_USEC", "")
    if not usec.isdigit() or int(usec) == 0:
        return None
    owner = env.get("WATCHDOG_PID", "")
    if owner and owner != str(os.getpid() if pid is None else pid):
        return None
    return int(usec) / 1_000_000


async def run_watchdog(
    notifier: Notifier, interval: float, healthy: Callable[[], bool] = lambda: True
) -> None:
    """Pet the watchdog every half `interval` while the loop turns and `healthy()` holds,
    until cancelled."""
    while True:
        if healthy():
            notifier.watchdog()
        else:
            log.warning(logfmt("watchdog-skipped", detail="not healthy"))
        await asyncio.sleep(interval / 2)
