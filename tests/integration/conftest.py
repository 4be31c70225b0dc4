"""Pytest glue for the integration tests: the real server process and the Debian peers.

`make_server()` starts the real `hato serve` (or, with HATO_IT_TARGET=postfix, a private Postfix,
to prove the harness itself) on a free loopback port with its own config and data dir. On a test
failure every server's log is attached to the report; teardown stops each server with SIGTERM.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from collections.abc import Callable, Generator, Iterator
from pathlib import Path

import pytest
from peers import net
from peers.hato import HatoServer
from peers.milters import LibMilter, libmilter_missing
from peers.net import cannot_run
from peers.postfix import PostfixServer
from peers.server import MailServer, MailSetup, MakeServer, submission_setup
from peers.tls import TestCA, make_test_ca

from kit.cryptokeys import Gpg, need

_SERVERS = pytest.StashKey[list[MailServer]]()
_HERE = Path(__file__).parent


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if _HERE in Path(str(item.path)).parents:
            item.add_marker(pytest.mark.integration)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    report = yield
    if report.failed:
        for server in item.stash.get(_SERVERS, []):
            log = server.log_text().splitlines()[-300:]
            report.sections.append((f"{server.name} log ({server.port})", "\n".join(log)))
    return report


def target_name() -> str:
    name = os.environ.get("HATO_IT_TARGET", "hato")
    if name not in ("hato", "postfix"):
        raise pytest.UsageError(f"HATO_IT_TARGET must be hato or postfix, not {name!r}")
    return name


@pytest.fixture
def require_peer() -> Callable[[str], str]:
    """`require_peer("swaks")` -> its path, or the test fails in CI / skips elsewhere."""
    return net.require_peer


@pytest.fixture
def workdir() -> Iterator[Path]:
    """A scratch directory every peer can reach (Postfix's users must traverse its parents)."""
    path = Path(tempfile.mkdtemp(prefix="hato-it-"))
    path.chmod(0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def make_server(request: pytest.FixtureRequest, workdir: Path) -> Iterator[MakeServer]:
    servers: list[MailServer] = []
    attached = request.node.stash.setdefault(_SERVERS, [])

    def make(setup: MailSetup | None = None, data_dir: Path | None = None) -> MailServer:
        data = data_dir or workdir / f"data{len(servers)}"
        server: MailServer
        if target_name() == "postfix":
            net.require_peer("postfix")
            server = PostfixServer(data, setup)
        else:
            server = HatoServer(data, setup)
        servers.append(server)
        attached.append(server)
        server.start()
        return server

    yield make
    errors = []
    for server in servers:
        try:
            server.stop()
        except RuntimeError as exc:
            errors.append(str(exc))
    if errors:
        pytest.fail("; ".join(errors))


@pytest.fixture
def mx(make_server: MakeServer) -> MailServer:
    """The server with the default setup: example.org accepts any local part, users.test has
    alice and load only. Its host, port and data_dir are attributes."""
    return make_server()


@pytest.fixture(scope="session")
def test_ca() -> Iterator[TestCA]:
    """A test CA and a server certificate for loopback, shared by the tests of one worker."""
    path = Path(tempfile.mkdtemp(prefix="hato-it-ca-"))
    path.chmod(0o755)
    yield make_test_ca(path)
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="module")
def gpg(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gpg]:
    """A GnuPG home with Bob's key pair (bob@example.org), one per test module: import
    `gpg.export("bob@example.org")` into a server, decrypt with `gpg.run("--decrypt", ...)`."""
    need("gpg")
    home = tmp_path_factory.mktemp("gnupg")
    home.chmod(0o700)
    g = Gpg(home)
    g.run("--quick-gen-key", "Bob <bob@example.org>", "future-default", "default", "never")
    yield g
    subprocess.run(["gpgconf", "--homedir", str(home), "--kill", "all"], check=False)


@pytest.fixture(scope="module")
def libmilter(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LibMilter]:
    """A libmilter-built test milter (tests/peers/milters), one per test module."""
    missing = libmilter_missing()
    if missing is not None:
        cannot_run(missing)
    peer = LibMilter(tmp_path_factory.mktemp("libmilter"))
    peer.start()
    try:
        yield peer
    finally:
        peer.stop()


@pytest.fixture
def hato_submission(make_server: MakeServer, test_ca: TestCA) -> HatoServer:
    """Hato with mx, submission (STARTTLS) and submissions (implicit TLS) listeners, the test
    CA's certificate, and the accounts of `submission_setup`."""
    if target_name() != "hato":
        pytest.skip("the submission tests are about Hato's own listeners")
    server = make_server(submission_setup(test_ca.tls_files()))
    assert isinstance(server, HatoServer)
    return server


@pytest.fixture(scope="module")
def _module_submission(test_ca: TestCA) -> Iterator[HatoServer]:
    if target_name() != "hato":
        pytest.skip("the submission tests are about Hato's own listeners")
    path = Path(tempfile.mkdtemp(prefix="hato-it-mod-"))
    path.chmod(0o755)
    server = HatoServer(path / "data", submission_setup(test_ca.tls_files()))
    server.start()
    yield server
    try:
        server.stop()
    finally:
        shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def shared_submission(request: pytest.FixtureRequest, _module_submission: HatoServer) -> HatoServer:
    """Like `hato_submission`, but one process for the whole test module (for many small
    dialog tests); its log is attached to a failing test's report all the same."""
    if not _module_submission.alive():
        pytest.fail(f"the module's hato process died:\n{_module_submission.log_text()[-3000:]}")
    request.node.stash.setdefault(_SERVERS, []).append(_module_submission)
    return _module_submission
