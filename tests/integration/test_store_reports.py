"""Report data and WKD on the shared PostgreSQL: two `hato serve` nodes with [reports] and the
[wkd] endpoint on one database. A key stored in the shared store is served by WKD on both
nodes (the endpoint is bound before the store opens: it reads the shared store, not the node's
keys.db); `hato report send --now` runs on the shared report store, each run claimed by one
node in `report_runs`."""

from __future__ import annotations

import datetime as dt
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from peers.hato import HatoServer
from peers.nodes import alpha_and_beta
from peers.postgres import PASSWORD, PostgresServer
from peers.server import MailSetup
from psycopg_pool import ConnectionPool

from hato.crypto.keys import KeyKind, PublicKey
from hato.crypto.keystore_pg import PgKeyStore
from hato.crypto.wkdhash import wkd_hash
from hato.model import Address


class ReportingNode(HatoServer):
    """A node with [reports] enabled and the [wkd] endpoint over plain HTTP."""

    def __init__(self, data_dir: Path, setup: MailSetup, host: str) -> None:
        super().__init__(data_dir, setup, host=host)
        self.web_port = self.own_port("web_port")

    def _config_text(self) -> str:
        return super()._config_text() + (
            f'\n[wkd]\naddress = "{self.host}:{self.web_port}"\nhttps = false\n'
            "\n[reports]\nenabled = true\n"
        )

    def wkd(self, local: str, domain: str) -> tuple[int, bytes]:
        url = (
            f"http://{self.host}:{self.web_port}/.well-known/openpgpkey/{domain}/hu/"
            f"{wkd_hash(local)}?l={local}"
        )
        request = urllib.request.Request(url, headers={"Host": f"openpgpkey.{domain}"})
        try:
            with urllib.request.urlopen(request, timeout=10) as answer:
                return answer.status, answer.read()
        except urllib.error.HTTPError as exc:
            return exc.code, b""


@pytest.fixture
def nodes(workdir: Path, pg_dsn: str, postgres: PostgresServer) -> Iterator[list[ReportingNode]]:
    pw = postgres.password_file
    with alpha_and_beta(workdir, pg_dsn, pw, "users.test", ReportingNode) as nodes:
        yield nodes


def test_wkd_and_reports_use_the_shared_store(nodes: list[ReportingNode], pg_dsn: str) -> None:
    alpha, beta = nodes
    assert [node.wkd("alice", "users.test")[0] for node in nodes] == [404, 404]
    with ConnectionPool(pg_dsn, kwargs={"password": PASSWORD, "autocommit": True}) as pool:
        key = PublicKey(KeyKind.OPENPGP, Address("alice", "users.test"), b"\x99key", "ab", None,
                        "ed25519")  # fmt: skip
        PgKeyStore(pool).put(key, dt.datetime(2026, 1, 2, tzinfo=dt.UTC))  # as `hato key import`
    assert [node.wkd("alice", "users.test") for node in nodes] == [(200, b"\x99key")] * 2

    for node in (alpha, beta):
        done = node.hato("report", "send", "--now")
        assert done.returncode == 0, done.stdout + done.stderr
    with psycopg.connect(pg_dsn, password=PASSWORD, autocommit=True) as conn:
        runs = conn.execute("SELECT node FROM report_runs ORDER BY run_end").fetchall()
    assert runs == [("alpha",), ("beta",)]
