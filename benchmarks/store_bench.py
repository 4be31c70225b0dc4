"""Issue 16's store benchmark, side by side in one run: one node on SQLite, then one, two and
three nodes on one PostgreSQL; delivered msg/s at 50 sessions, Hato's CPU ms per message (all
nodes together), PostgreSQL's CPU ms per message, PostgreSQL commits per message
(pg_stat_database.xact_commit of the cell's database, before and after: every autocommit
statement, reads included, is one), and WAL records, fsyncs and KiB per message
(pg_stat_wal: the rows written, index entries included, the durable flushes, the volume a
replica must receive). Not a test.

    .venv/bin/python benchmarks/store_bench.py                       # 20,000 messages a cell
    .venv/bin/python benchmarks/store_bench.py --messages 600 --settle 1   # proves it runs
    ... --only sqlite-1,pg-1 --rounds 3 --sessions 50
    ... --only pg-1 --statements    # and every statement a message costs (pg_stat_statements)
    ... --only sqlite-1,pg-1 --profile /tmp/prof   # py-spy's samples of each node, collapsed

Every cell sends 10 KiB messages with smtp-source (Postfix's) to an accept-any domain (with
`--accounts` the recipient is an account there, as most mail's is: the account look-ups answer
yes, which the PostgreSQL store's nodes keep, model/notified.py; without, they answer no), with
`direct_local_delivery = false`: every message goes through the queue (SQLite, or the shared
PostgreSQL queue) and is delivered into Maildirs by a queue runner (on PostgreSQL, into one
shared Maildir tree), which is the path the store carries. The sessions are split over the
nodes (50 = 25 + 25, 17 + 17 + 16), one smtp-source per node, all at once; a cell ends when the
last message is in a Maildir. Each node is one process (`workers = 1`; `--workers 0` gives
Hato's default, one per CPU), on 127.0.0.2, .3, .4.
PostgreSQL is a private cluster (Debian's binaries, initdb in a temporary directory, fsync on,
synchronous_commit on: its defaults), a fresh database per cell. On one machine the nodes and
PostgreSQL share the CPUs: more nodes here cannot mean more throughput, only what it costs;
see docs/performance.md for the design's limits on paper.

Needs smtp-source (Debian's postfix) and PostgreSQL (/usr/lib/postgresql/N/bin); as root,
PostgreSQL runs as `nobody` (peers/postgres.py).
"""

from __future__ import annotations

import argparse
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import suite_servers as ss  # puts tests/ and tests/integration on the path
from peers import maildir
from peers.net import find_peer
from peers.postgres import PASSWORD, PostgresServer, find_bindir
from peers.server import DomainSetup, MailSetup
from smtp_vs_postfix import machine, settle
from suite_measure import tree_cpu

DOMAIN = "bench.test"
HOSTS = ("127.0.0.2", "127.0.0.3", "127.0.0.4")
CELLS = ("sqlite-1", "pg-1", "pg-2", "pg-3")


@dataclass(frozen=True, slots=True)
class Cell:
    name: str
    messages: int
    seconds: float
    hato_cpu: float
    pg_cpu: float | None
    commits: int | None
    wal: tuple[int, int, int] | None  # the cluster's WAL records, syncs (fsyncs) and bytes
    statements: tuple[tuple[int, str], ...] = ()  # --statements: (calls, text), most first

    @property
    def rate(self) -> float:
        return self.messages / self.seconds

    def row(self) -> str:
        pg_cpu = "n/a" if self.pg_cpu is None else f"{self.pg_cpu * 1000 / self.messages:.2f}"
        commits = "n/a" if self.commits is None else f"{self.commits / self.messages:.2f}"
        records, syncs, size = ("n/a", "n/a", "n/a") if self.wal is None else (
            f"{self.wal[0] / self.messages:.1f}", f"{self.wal[1] / self.messages:.2f}",
            f"{self.wal[2] / self.messages / 1024:.1f}",
        )  # fmt: skip
        return (
            f"| {self.name} | {self.messages} | {self.rate:.0f} | "
            f"{self.hato_cpu * 1000 / self.messages:.2f} | {pg_cpu} | {commits} | {records} "
            f"| {syncs} | {size} |"
        )


def _setup(mailboxes: Path, store: tuple[str, Path] | None, accounts: bool) -> MailSetup:
    users = ("warm", "m") if accounts else ()  # made by `hato user add` before the start
    return MailSetup(
        domains=(DomainSetup(DOMAIN, users=users, accept_any=True),),
        max_message_size=1024 * 1024,
        min_free_space=32 * 1024 * 1024,
        max_connections_per_ip=200,  # the load comes from one address, as in suite.py
        store=store,
        mailboxes=mailboxes,
        direct_local_delivery=False,  # through the queue: what the store carries
    )


def _delivered(mailboxes: Path) -> int:
    base = mailboxes / DOMAIN
    if not base.is_dir():
        return 0
    return sum(maildir.count(box) for box in base.iterdir() if box.is_dir())


def _counters(postgres: PostgresServer, database: str) -> tuple[int, int, int, int]:
    """The database's committed transactions (read-only ones included: every autocommit
    statement is one), and the cluster's WAL records and WAL syncs."""
    import psycopg

    with psycopg.connect(postgres.dsn, password=PASSWORD, autocommit=True) as conn:
        row = conn.execute(
            "SELECT (SELECT xact_commit FROM pg_stat_database WHERE datname = %s),"
            " wal_records, wal_sync, wal_bytes FROM pg_stat_wal",
            (database,),
        ).fetchone()
    assert row is not None
    return int(row[0] or 0), int(row[1]), int(row[2]), int(row[3])


def _statements(postgres: PostgresServer, database: str, reset: bool) -> list[tuple[int, str]]:
    """--statements: the cell's database's statements since the reset, with their calls
    (pg_stat_statements; BEGIN and COMMIT count as statements of their own)."""
    import psycopg

    with psycopg.connect(postgres.dsn_of(database), password=PASSWORD, autocommit=True) as c:
        if reset:
            c.execute("CREATE EXTENSION IF NOT EXISTS pg_stat_statements")
            c.execute("SELECT pg_stat_statements_reset()")
            return []
        rows = c.execute(
            "SELECT calls, query FROM pg_stat_statements s JOIN pg_database d ON d.oid = s.dbid"
            " WHERE d.datname = %s AND query NOT LIKE '%%pg_stat_statements%%'"
            " ORDER BY calls DESC",
            (database,),
        ).fetchall()
    return [(int(calls), " ".join(str(query).split())) for calls, query in rows]


def _load(nodes: list[ss.BenchHato], sessions: int, messages: int, user: str) -> None:
    """One smtp-source per node, all at once, the sessions and messages split evenly."""
    binary = find_peer("smtp-source") or "smtp-source"
    errors: list[str] = []

    def one(node: ss.BenchHato, s: int, m: int) -> None:
        args = ["-s", str(s), "-m", str(m), "-l", "10240", "-f", "bench@client.test"]
        args += ["-t", f"{user}@{DOMAIN}", f"{node.host}:{node.port}"]
        done = subprocess.run([binary, *args], capture_output=True, text=True, timeout=3600)
        if done.returncode != 0:
            errors.append(f"smtp-source against {node.host}: {done.stderr[-2000:]}")

    n = len(nodes)
    threads = [
        threading.Thread(
            target=one,
            args=(node, sessions // n + (i < sessions % n), messages // n + (i < messages % n)),
        )
        for i, node in enumerate(nodes)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if errors:
        raise RuntimeError("; ".join(errors))


def run_cell(
    name: str, work: Path, postgres: PostgresServer | None, args: argparse.Namespace, rnd: int
) -> Cell:
    count = int(name.split("-")[1])
    mailboxes = work / f"{name}-{rnd}-mail"
    store, database = None, ""
    if postgres is not None:
        import psycopg

        from hato.pgstore import migrate

        database = f"bench_{name.replace('-', '_')}_{rnd}"
        dsn = postgres.create_database(database)
        with psycopg.connect(dsn, password=PASSWORD, autocommit=True) as conn:
            migrate(conn)
        store = (dsn, postgres.password_file)
    nodes = []
    try:
        for n in range(count):
            setup = _setup(mailboxes, store, args.accounts and (n == 0 or store is None))
            if store is not None:
                setup = replace(setup, node=f"bench{n}")
            workers = ("[server]\n", f"[server]\nworkers = {args.workers}\n")
            node = ss.BenchHato(work / f"{name}-{rnd}-node{n}", setup, replace=(workers,))
            node.host = HOSTS[n]
            node.start()
            nodes.append(node)
        # Warm-up: connections, pools, caches; not counted.
        warm = max(len(nodes) * 20, args.sessions)
        _load(nodes, min(args.sessions, warm), warm, "warm")
        _wait(mailboxes, warm, name)
        settle(args.settle)
        before = _delivered(mailboxes)
        pids = [node.proc.pid for node in nodes if node.proc is not None]
        pg_pids = [postgres.proc.pid] if postgres is not None and postgres.proc else []
        cpu0, pg0 = tree_cpu(pids), tree_cpu(pg_pids)
        counters0 = _counters(postgres, database) if postgres is not None else (0, 0, 0, 0)
        if postgres is not None and args.statements:
            _statements(postgres, database, reset=True)
        spies = _spies(args.profile, f"{name}-{rnd}", pids)
        start = time.monotonic()
        _load(nodes, args.sessions, args.messages, "m")
        _wait(mailboxes, before + args.messages, name)
        seconds = time.monotonic() - start
        hato_cpu, pg_cpu = tree_cpu(pids) - cpu0, tree_cpu(pg_pids) - pg0
        for spy in spies:
            spy.send_signal(signal.SIGINT)
            spy.wait(timeout=60)
        time.sleep(1.0)  # PostgreSQL's statistics are flushed within a second of idleness
        counters = _counters(postgres, database) if postgres is not None else None
        statements = (
            _statements(postgres, database, reset=False)
            if postgres is not None and args.statements
            else []
        )
    finally:
        for node in nodes:
            node.stop()
    shutil.rmtree(mailboxes, ignore_errors=True)
    commits = None if counters is None else counters[0] - counters0[0]
    wal = None if counters is None else (
        counters[1] - counters0[1], counters[2] - counters0[2], counters[3] - counters0[3]
    )  # fmt: skip
    cell = Cell(
        name, args.messages, seconds, hato_cpu, pg_cpu if postgres else None, commits, wal,
        tuple(statements),
    )  # fmt: skip
    print(cell.row(), file=sys.stderr, flush=True)
    for calls, query in statements:
        print(f"    {calls / args.messages:6.3f}/msg  {query[:150]}", file=sys.stderr, flush=True)
    return cell


_SPY = ("record", "--nonblocking", "--subprocesses", "--rate", "250", "--format", "raw")


def _spies(profile: Path | None, cell: str, pids: list[int]) -> list[subprocess.Popen[bytes]]:
    """--profile: py-spy recording each node (its workers too) at 250 Hz without pausing it,
    as collapsed stacks (one line a stack and its count: grep-able, flamegraph.pl reads it)
    into PROFILE/CELL-nodeN.txt; py-spy's own CPU is outside the nodes' tree, so not counted,
    though it shares the machine's CPUs. Needs py-spy on PATH or beside Python."""
    if profile is None:
        return []
    profile.mkdir(parents=True, exist_ok=True)
    spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    return [
        subprocess.Popen(
            [spy, *_SPY, "-o", str(profile / f"{cell}-node{i}.txt"), "--pid", str(pid)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        for i, pid in enumerate(pids)
    ]


def _wait(mailboxes: Path, expect: int, name: str) -> None:
    deadline = time.monotonic() + 1800
    while _delivered(mailboxes) < expect:
        if time.monotonic() > deadline:
            raise RuntimeError(f"{name}: {_delivered(mailboxes)} of {expect} delivered in time")
        time.sleep(0.02)


def median_cells(cells: list[Cell]) -> list[Cell]:
    out = []
    for name in dict.fromkeys(c.name for c in cells):
        runs = sorted((c for c in cells if c.name == name), key=lambda c: c.rate)
        out.append(runs[len(runs) // 2])
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--messages", type=int, default=20000, help="per cell (all nodes)")
    parser.add_argument("--sessions", type=int, default=50, help="in all, split over the nodes")
    parser.add_argument(
        "--accounts",
        action="store_true",
        help="the recipients are accounts (as most mail's are), not only accepted",
    )
    parser.add_argument("--rounds", type=int, default=1, help="runs of every cell; medians")
    parser.add_argument("--settle", type=float, default=35.0, help="seconds before each run")
    parser.add_argument("--only", default=",".join(CELLS), help=f"cells among {CELLS}")
    parser.add_argument(
        "--statements",
        action="store_true",
        help="count every statement a message costs (pg_stat_statements, loaded for the run: "
        "costs some CPU) and print them per message",
    )
    parser.add_argument(
        "--profile", type=Path, help="record each node with py-spy into this folder"
    )
    parser.add_argument(
        "--workers", type=int, default=1, help="[server] workers of each node (0: one per CPU)"
    )
    args = parser.parse_args()
    cells = [c.strip() for c in args.only.split(",") if c.strip()]
    unknown = set(cells) - set(CELLS)
    if unknown:
        parser.error(f"unknown cells: {sorted(unknown)}")
    bindir = find_bindir()
    if bindir is None and any(c.startswith("pg-") for c in cells):
        print("PostgreSQL is not installed (/usr/lib/postgresql/N/bin)", file=sys.stderr)
        return 69
    work = Path(tempfile.mkdtemp(prefix="hato-store-bench-"))
    work.chmod(0o755)
    postgres = None
    results: list[Cell] = []
    try:
        if bindir is not None:
            loaded = ("shared_preload_libraries=pg_stat_statements",) if args.statements else ()
            postgres = PostgresServer(work / "pg", bindir, loaded)
            postgres.start()
        for rnd in range(args.rounds):
            for name in cells:
                pg = postgres if name.startswith("pg-") else None
                results.append(run_cell(name, work, pg, args, rnd))
    finally:
        if postgres is not None:
            postgres.stop()
        shutil.rmtree(work, ignore_errors=True)
    print(f"\n{machine()}; {args.messages} messages of 10 KiB a cell, {args.sessions} sessions, "
          f"workers = {args.workers}, median of {args.rounds} round(s)\n")  # fmt: skip
    print("| cell | messages | delivered msg/s | Hato CPU ms/msg | PostgreSQL CPU ms/msg "
          "| PostgreSQL commits/msg | WAL records/msg | WAL fsyncs/msg "
          "| WAL KiB/msg |")  # fmt: skip
    print("|---|---|---|---|---|---|---|---|---|")
    for cell in median_cells(results):
        print(cell.row())
    if len(results) > 1:
        rates = [c.rate for c in results]
        print(f"\n(all runs: {', '.join(f'{r:.0f}' for r in rates)} msg/s; "
              f"spread {statistics.pstdev(rates):.0f})")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
