"""Self-tests against our own running listeners, as an outside client would see them.

Open relay (RFC 5321 §7.1, RFC 2505): on the MX listener, a stranger's RCPT for a domain that is
not ours must be refused; the test stops at RCPT and sends RSET and QUIT, so no mail is ever
queued. Submission (RFC 6409 §4 with RFC 3207 §4 and RFC 4954 §4): on port 587, STARTTLS must be
offered and AUTH must not be offered before TLS, so no password crosses the network in clear.

A listener that does not answer (the server is not running) is a warning, not a problem.

May import hato.doctor only.
"""

from __future__ import annotations

import asyncio
import contextlib

from hato.doctor.report import Finding, ok, problem, warning
from hato.doctor.setup import DoctorSetup, Listener

_TIMEOUT = 10.0
# RFC 2606 §2: .invalid names can never be real destinations.
_STRANGER = "doctor@relay-test.invalid"
_FOREIGN = "relay-test@relay-test.invalid"


def _connect_host(host: str) -> str:
    # A wildcard bind address is reached over loopback.
    return {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}.get(host, host)


class _Dialog:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer

    async def reply(self) -> tuple[int, list[str]]:
        lines: list[str] = []
        while True:
            raw = await self.reader.readline()
            if not raw:
                raise ConnectionError("the server closed the connection")
            line = raw.decode("utf-8", "replace").rstrip("\r\n")
            lines.append(line[4:])
            # RFC 5321 §4.2.1: "250-" continues a multiline reply, "250 " ends it.
            if len(line) < 4 or line[3] != "-":
                return int(line[:3]) if line[:3].isdigit() else 0, lines

    async def command(self, text: str) -> tuple[int, list[str]]:
        self.writer.write(text.encode() + b"\r\n")
        await self.writer.drain()
        return await self.reply()


async def _open(listener: Listener) -> _Dialog:
    reader, writer = await asyncio.open_connection(_connect_host(listener.host), listener.port)
    dialog = _Dialog(reader, writer)
    await dialog.reply()  # the greeting
    return dialog


async def _close(dialog: _Dialog) -> None:
    with contextlib.suppress(OSError, ConnectionError):
        await dialog.command("QUIT")
    dialog.writer.close()


async def relay_test(setup: DoctorSetup, listener: Listener) -> Finding:
    scope = f"{listener.host}:{listener.port}"
    dialog = await _open(listener)
    try:
        await dialog.command(f"EHLO {setup.hostname}")
        code, text = await dialog.command(f"MAIL FROM:<{_STRANGER}>")
        if code // 100 != 2:
            return ok("open-relay", scope, f"refused at MAIL ({code} {' '.join(text)})")
        code, text = await dialog.command(f"RCPT TO:<{_FOREIGN}>")
        await dialog.command("RSET")
    finally:
        await _close(dialog)
    if code // 100 == 2:
        fix = "remove the [[network]] that trusts everyone (relay = true on 0.0.0.0/0)"
        return problem("open-relay", scope, f"relays for strangers: RCPT got {code}", fix)
    return ok("open-relay", scope, f"not an open relay (RCPT {code})")


async def submission_test(setup: DoctorSetup, listener: Listener) -> Finding:
    scope = f"{listener.host}:{listener.port}"
    dialog = await _open(listener)
    try:
        _, keywords = await dialog.command(f"EHLO {setup.hostname}")
    finally:
        await _close(dialog)
    names = {k.split(" ", 1)[0].upper() for k in keywords[1:]}
    if "AUTH" in names:
        fix = "AUTH must be offered only after STARTTLS (a Hato listener never does this)"
        return problem("submission", scope, "AUTH offered before TLS: passwords in clear", fix)
    if "STARTTLS" not in names:
        fix = '[tls]\ncert = "…/fullchain.pem"\nkey = "…/privkey.pem"'
        return problem("submission", scope, "STARTTLS not offered", fix)
    return ok("submission", scope, "STARTTLS offered, AUTH only after it")


async def self_tests(setup: DoctorSetup) -> list[Finding]:
    findings: list[Finding] = []
    for listener in setup.listeners:
        test = {"mx": relay_test, "submission": submission_test}.get(listener.role)
        if test is None:
            continue
        try:
            findings.append(await asyncio.wait_for(test(setup, listener), _TIMEOUT))
        except (OSError, ConnectionError, TimeoutError) as exc:
            scope = f"{listener.host}:{listener.port}"
            name = "open-relay" if listener.role == "mx" else "submission"
            detail = f"not tested: the listener did not answer ({exc or type(exc).__name__})"
            findings.append(warning(name, scope, detail))
    return findings
