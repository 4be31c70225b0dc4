"""The real Hato process: `hato serve --config FILE` with a temporary config and data dir."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import IO

from .net import LOOPBACK, free_port, wait_for_banner, wait_for_listener
from .server import USER_PASSWORD, AuthSetup, MailSetup, format_size


def hato_binary() -> str:
    """The `hato` console script of the interpreter running us (the project's venv)."""
    candidate = Path(sys.executable).with_name("hato")
    return str(candidate) if candidate.exists() else "hato"


def sendmail_binary() -> str:
    """The `hato-sendmail` console script beside it."""
    return str(Path(sys.executable).with_name("hato-sendmail"))


def _toml_str(value: str) -> str:
    # A JSON string is a valid TOML basic string for the characters we use.
    return json.dumps(value, ensure_ascii=False)


class HatoServer:
    """One Hato process; `start()` may be called again after `stop()`/`kill()` (same data dir)."""

    name = "hato"
    stores_crlf = True
    # A server whose own policy may screen the harness's client (a 554 greeting, or one that
    # pregreet_wait holds back for seconds) is ready once it greets at all.
    screened = False

    def __init__(
        self,
        data_dir: Path,
        setup: MailSetup | None = None,
        port: int = 0,
        host: str = LOOPBACK,
    ) -> None:
        """`host`: any of 127.0.0.0/8, so that several servers can be several machines."""
        self.setup = setup or MailSetup()
        self.host = host
        # The ports this harness picked (not a caller's): renewed when one was taken (own_port).
        self._own_ports: list[str] = []
        self.port = port or self.own_port("port")
        # Used only when `setup.submission` is set.
        self.submission_port = self.own_port("submission_port")
        self.submissions_port = self.own_port("submissions_port")
        self.data_dir = data_dir
        self.work = data_dir.parent / f"{data_dir.name}-run"
        self.config = self.work / "hato.toml"
        self.log = self.work / "hato.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self._log_file: IO[bytes] | None = None
        self._written = False

    def own_port(self, attribute: str) -> int:
        """A free port for the listener whose port is `self.<attribute>` (a subclass's own:
        `self.web_port = self.own_port("web_port")`): if another process takes it between
        free_port's probe and hato's bind, the first `start` picks a fresh one and tries again."""
        self._own_ports.append(attribute)
        return free_port()

    def _renew_ports(self) -> None:
        for attribute in self._own_ports:
            setattr(self, attribute, free_port())
        self.config.write_text(self.config_text(), encoding="utf-8")

    def _config_text(self) -> str:
        s = self.setup
        lines = [
            "[server]",
            'hostname = "hato.test"',
            f"data_dir = {_toml_str(str(self.data_dir))}",
            "",
            "[[listener]]",
            'role = "mx"',
            f'address = "{self.host}:{self.port}"',
        ]
        if s.max_connections_per_ip is not None:
            lines.append(f"max_connections_per_ip = {s.max_connections_per_ip}")
        if s.submission:
            for role, port in (
                ("submission", self.submission_port),
                ("submissions", self.submissions_port),
            ):
                lines += ["", "[[listener]]", f'role = "{role}"', f'address = "{self.host}:{port}"']
        if s.tls is not None:
            lines += [
                "",
                "[tls]",
                f"cert = {_toml_str(str(s.tls.cert))}",
                f"key = {_toml_str(str(s.tls.key))}",
            ]
        if s.acme is not None:
            fields = (
                f"email = {_toml_str(s.acme.email)}, directory = {_toml_str(s.acme.directory)}, "
                f"ca_file = {_toml_str(str(s.acme.ca_file))}, "
                f"http_address = {_toml_str(s.acme.http_address)}, "
                f"challenge = {_toml_str(s.acme.challenge)}, "
                f"tls_address = {_toml_str(s.acme.tls_address)}"
            )
            lines += ["", "[tls]", f"acme = {{ {fields} }}"]
        if s.auth is not None:
            lines += ["", "[auth]"]
            for key in AuthSetup.__slots__:
                value = getattr(s.auth, key)
                if isinstance(value, float):
                    lines.append(f"{key} = {value!r}")
                elif isinstance(value, int):
                    lines.append(f"{key} = {value}")
        for domain in s.domains:
            lines += ["", "[[domain]]", f"name = {_toml_str(domain.name)}"]
            if domain.accept_any:
                lines.append("accept_any = true")
            if domain.aliases:
                table = ", ".join(
                    f"{_toml_str(local)} = [{', '.join(_toml_str(t) for t in targets)}]"
                    for local, targets in domain.aliases
                )
                lines.append(f"aliases = {{ {table} }}")
        if s.store is not None:
            dsn, password_file = s.store
            lines += [
                "",
                "[store]",
                'backend = "postgresql"',
                f"dsn = {_toml_str(dsn)}",
                f"password_file = {_toml_str(str(password_file))}",
                *([] if s.node is None else [f"node = {_toml_str(s.node)}"]),
                *([] if s.heartbeat is None else [f"heartbeat = {s.heartbeat!r}"]),
            ]
            if s.lease_time is not None:
                half = s.lease_time / 2
                lines += [f"lease_time = {s.lease_time!r}", "[delivery]"]
                lines += [f"attempt_timeout = {half!r}"]
        if s.mailboxes is not None:
            lines += ["", "[local]", f"mailboxes = {_toml_str(str(s.mailboxes))}"]
        lines += [
            "",
            "[limits]",
            f'max_message_size = "{format_size(s.max_message_size)}"',
            f"max_recipients = {s.max_recipients}",
            *(
                []
                if s.messages_per_hour is None
                else [f"messages_per_hour = {s.messages_per_hour}"]
            ),
            *(
                []
                if s.max_junk_commands is None
                else [f"max_junk_commands = {s.max_junk_commands}"]
            ),
            *(
                []
                if s.max_header_fields is None
                else [f"max_header_fields = {s.max_header_fields}"]
            ),
            "",
            "[queue]",
            f'min_free_space = "{format_size(s.min_free_space)}"',
            *([] if s.direct_local_delivery else ["direct_local_delivery = false"]),
            *(
                []
                if s.delay_warning_time is None
                else [f"delay_warning_time = {s.delay_warning_time}"]
            ),
            "",
            # Tests talk to loopback only: no SPF/DKIM/DMARC lookups through the machine's
            # resolver. Tests of those checks enable them with an in-process DNS server.
            "[authcheck]",
            "inbound = false",
            "",
        ]
        return "\n".join(lines)

    def config_text(self) -> str:
        """What `start` writes to the config file (a test that changes its settings and
        reloads writes this again)."""
        return _one_worker_unless_set(self._config_text())

    def hato(self, *args: str) -> subprocess.CompletedProcess[str]:
        """A `hato` command against this server's config and data dir (running or not)."""
        return subprocess.run(
            [hato_binary(), *args, "--config", str(self.config)],
            capture_output=True,
            text=True,
            cwd=self.work,
            env=self._env(),
            timeout=60,
            check=False,
        )

    def sendmail(
        self, args: Sequence[str], stdin: bytes, *, env_socket: bool = False
    ) -> subprocess.CompletedProcess[bytes]:
        """The real `hato-sendmail ARGS < stdin`, as the test's user (root in CI: a cron job's),
        none of the test's own HATO_ variables: from / finding this server through `-C config`,
        or (env_socket=True) by $HATO_CONTROL_SOCKET as a packager's wrapper would, from the
        work directory (its ./hato.toml is what a stopped server is found by)."""
        env = {k: v for k, v in os.environ.items() if not k.startswith("HATO_")}
        if env_socket:
            env["HATO_CONTROL_SOCKET"] = str(self.data_dir / "control.sock")
        else:
            args = ["-C", str(self.config), *args]
        return subprocess.run(
            [sendmail_binary(), *args],
            input=stdin,
            capture_output=True,
            env=env,
            cwd=self.work if env_socket else "/",
            timeout=30,
            check=False,
        )

    def import_key(self, address: str, key: bytes, name: str) -> None:
        """`hato key import` of `key` (armored OpenPGP or a PEM certificate), written to `name`
        in the work directory first; a refusal fails the test with hato's words."""
        path = self.work / name
        path.write_bytes(key)
        done = self.hato("key", "import", address, str(path))
        if done.returncode != 0:
            raise RuntimeError(f"hato key import {address} failed: {done.stdout!r} {done.stderr!r}")

    def _env(self) -> dict[str, str]:
        return {**os.environ, "HATO_HOME": str(self.data_dir), "PYTHONUNBUFFERED": "1"}

    def _prepare(self) -> None:
        self.work.mkdir(parents=True, exist_ok=True)
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.config.write_text(self.config_text(), encoding="utf-8")
        for domain in self.setup.domains:
            for user in domain.users:
                address = f"{user}@{domain.name}"
                done = subprocess.run(
                    [hato_binary(), "user", "add", address, "--config", str(self.config)],
                    input=USER_PASSWORD.encode() + b"\n",
                    capture_output=True,
                    cwd=self.work,
                    env=self._env(),
                    timeout=60,
                )
                if done.returncode != 0:
                    raise RuntimeError(
                        f"hato user add {user}@{domain.name} failed ({done.returncode}): "
                        f"{done.stdout!r} {done.stderr!r}"
                    )
        self._written = True

    def start(self) -> None:
        """Start `hato serve` and wait until it greets on its ports and has logged `ready`.

        A port free_port found free can be taken by another test's process before hato binds
        it (parallel tests; hato then exits 73, "Address already in use"): the first start
        tries again with fresh ports, a few times. A restart keeps its ports (the test's peers
        know them)."""
        first = not self._written
        if first:
            self._prepare()
        for attempt in range(1, _START_ATTEMPTS + 1):
            try:
                self._start_once()
                return
            except _PortTaken as exc:
                if not first or attempt == _START_ATTEMPTS:
                    raise RuntimeError(f"hato serve did not start: {exc}") from exc
                self._renew_ports()

    def _start_once(self) -> None:
        offset = self.log.stat().st_size if self.log.exists() else 0
        self._log_file = self.log.open("ab")
        self.proc = subprocess.Popen(
            [hato_binary(), "serve", "--config", str(self.config)],
            stdin=subprocess.DEVNULL,
            stdout=self._log_file,
            stderr=self._log_file,
            cwd=self.work,
            env=self._env(),
        )
        try:
            deadline = time.monotonic() + 60  # a start-up on a loaded machine: seconds
            # The listeners are bound one after another: wait for the last ones too.
            smtp_ports = [self.port] + ([self.submission_port] if self.setup.submission else [])
            for port in smtp_ports:
                wait_for_banner(
                    self.host,
                    port,
                    deadline,
                    alive=self.alive,
                    any_reply=self.screened,
                    timeout=10.0 if self.screened else 2.0,
                )
            if self.setup.submission:
                wait_for_listener(self.host, self.submissions_port, deadline, alive=self.alive)
            # Whoever greeted, it is this process only once it logged `ready` (a port taken
            # by another test's server greets too, while this one exits 73).
            self._wait_ready(offset, deadline)
        except (RuntimeError, TimeoutError) as exc:
            self.kill()
            log = self._log_since(offset)
            if _PORT_TAKEN in log:
                raise _PortTaken(log.strip().splitlines()[-1]) from exc
            raise RuntimeError(f"hato serve did not start: {exc}\n--- log ---\n{log}") from exc

    def _log_since(self, offset: int) -> str:
        try:
            with self.log.open("rb") as file:
                file.seek(offset)
                return file.read().decode("utf-8", errors="replace")
        except OSError:
            return ""

    def _wait_ready(self, offset: int, deadline: float) -> None:
        while _READY.search(self._log_since(offset)) is None:
            if not self.alive():
                raise RuntimeError("hato serve exited before it logged event=ready")
            if time.monotonic() >= deadline:
                raise TimeoutError("hato serve did not log event=ready in time")
            time.sleep(0.05)

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def _signal_and_wait(self, sig: signal.Signals, timeout: float) -> bool:
        if self.proc is None:
            return True
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            return False
        if self._log_file is not None:
            self._log_file.close()
            self._log_file = None
        return True

    def stop(self) -> None:
        # A stop takes a second or two; 60 s for a loaded CI machine (past the 30 s a session
        # in a transaction is given to finish, runtime.DRAIN_SECONDS).
        if not self._signal_and_wait(signal.SIGTERM, 60):
            self.kill()
            raise RuntimeError("hato did not exit within 60 s of SIGTERM")

    def kill(self) -> None:
        self._signal_and_wait(signal.SIGKILL, 15)

    def exit_code(self) -> int | None:
        return None if self.proc is None else self.proc.poll()

    def mailbox(self, user: str, domain: str) -> Path:
        return self.mailboxes() / domain / user

    def mailboxes(self) -> Path:
        return self.setup.mailboxes or self.data_dir / "mailboxes"

    def log_text(self) -> str:
        try:
            return self.log.read_text(encoding="utf-8", errors="replace")
        except OSError:
            return ""

    def wait_for_log(self, pattern: str, timeout: float = 30.0) -> re.Match[str] | None:
        """Poll the log until a line matches `pattern` (a regex), or `timeout` seconds pass.

        Log lines may be written a moment after the reply the client already holds. The
        default is generous: it bounds a wait for something that happens, and a loaded 2-core
        CI machine can take seconds for what takes milliseconds here."""
        compiled = re.compile(pattern, re.MULTILINE)
        deadline = time.monotonic() + timeout
        while True:
            found = compiled.search(self.log_text())
            if found or time.monotonic() >= deadline:
                return found
            time.sleep(0.05)

    def peak_rss_kib(self) -> int | None:
        if self.proc is None:
            return None
        try:
            status = Path(f"/proc/{self.proc.pid}/status").read_text()
        except OSError:
            return None
        for line in status.splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
        return None


_START_ATTEMPTS = 5
_PORT_TAKEN = "Address already in use"  # EADDRINUSE's strerror, in hato's one line (exit 73)
_READY = re.compile(r"\bevent=ready\b")


class _PortTaken(Exception):
    """hato serve exited because one of its ports was taken meanwhile."""


def _one_worker_unless_set(text: str) -> str:
    """Hato's default is one worker per CPU; a test runs one process unless it sets `workers`
    itself (a test of several says so, and reads one process's log and metrics otherwise)."""
    if re.search(r"^workers\s*=", text, re.MULTILINE):
        return text
    return text.replace("[server]\n", "[server]\nworkers = 1\n", 1)


@contextmanager
def serving_with_keys(
    data_dir: Path, setup: MailSetup, keys: Mapping[str, bytes]
) -> Iterator[HatoServer]:
    """A started server with each address's key imported (`hato key import`), stopped at the
    end, a failed import included."""
    hato = HatoServer(data_dir, setup)
    hato.start()
    try:
        for number, (address, key) in enumerate(keys.items()):
            hato.import_key(address, key, f"key{number}.asc")
        yield hato
    finally:
        hato.stop()
