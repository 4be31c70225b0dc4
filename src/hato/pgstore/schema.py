"""The shared database's schema: numbered migrations, applied by `hato store migrate`, checked at
every start.

Theory of operation: `schema_version` holds one row per migration applied (its number, when,
what). A migration runs in one transaction together with its row, under a transaction-level
advisory lock, so two nodes (or an admin twice) migrating at once apply each step exactly once,
and a migration that fails leaves the database as it was (PostgreSQL's DDL is transactional).
A server refuses to start against a database whose newest applied migration is not the one its
code was written for: older means "run hato store migrate", newer means this node runs older
code than another node migrated to (upgrade this node). Both are said in one line.

Migrations are only ever appended; a released one is never edited.
"""

from __future__ import annotations

from typing import Any

import psycopg

# pg_advisory_xact_lock key: "hato" in ASCII, so it is recognisable in pg_locks.
_LOCK = 0x6861746F

MIGRATIONS: tuple[tuple[int, str, str], ...] = (
    (
        1,
        "accounts, users' public keys and key policies, sending limits and holds",
        """
CREATE TABLE users (
    address text PRIMARY KEY,           -- canonical: lower-case local part "@" lower-case domain
    password_hash text NOT NULL,        -- argon2id PHC string
    scram_salt bytea,                   -- RFC 5802 §3 / RFC 7677 SCRAM-SHA-256 credentials
    scram_iterations integer,
    scram_stored_key bytea,
    scram_server_key bytea
);
CREATE TABLE keys (
    address text PRIMARY KEY,           -- lower-case local part "@" lower-case domain
    local text NOT NULL,
    domain text NOT NULL,
    kind text NOT NULL,                 -- "openpgp" | "smime"
    data bytea NOT NULL,                -- public only
    fingerprint text NOT NULL,
    expires text,                       -- ISO 8601 UTC, NULL: never
    algorithm text NOT NULL,
    wkd_hash text NOT NULL,
    imported text NOT NULL
);
CREATE INDEX keys_wkd ON keys (domain, wkd_hash);
CREATE TABLE key_policies (
    address text PRIMARY KEY,
    policy text NOT NULL
);
CREATE TABLE sent (                     -- one row per message, reserved at MAIL FROM
    id bigserial PRIMARY KEY,
    "user" text NOT NULL,
    minute bigint NOT NULL,
    recipients integer NOT NULL DEFAULT 0,
    pending boolean NOT NULL DEFAULT true
);
CREATE INDEX sent_user ON sent ("user", minute);
CREATE INDEX sent_minute ON sent (minute);
CREATE TABLE send_accounts (
    "user" text PRIMARY KEY,
    held_until double precision,        -- NULL: not held; wall-clock end ('Infinity': released)
    alerted_until double precision NOT NULL DEFAULT 0
);
""",
    ),
    (
        2,
        "the queue: messages, recipient rows with leases, bodies in chunks",
        """
CREATE TABLE queue_messages (
    queue_id text PRIMARY KEY,
    mail_from text NOT NULL,
    received_at double precision NOT NULL,
    size bigint NOT NULL,
    prefix bytea NOT NULL,
    params text NOT NULL,               -- JSON
    body bytea,                         -- a small body inline; NULL: in queue_body_chunks
    delay_warned boolean NOT NULL DEFAULT false
);
CREATE TABLE queue_body_chunks (        -- a large body, streamed in and out in chunks
    queue_id text NOT NULL REFERENCES queue_messages ON DELETE CASCADE,
    seq integer NOT NULL,
    data bytea NOT NULL,
    PRIMARY KEY (queue_id, seq)
);
CREATE TABLE queue_recipients (         -- one row per recipient (exactly once)
    row_id bigserial PRIMARY KEY,
    queue_id text NOT NULL REFERENCES queue_messages ON DELETE CASCADE,
    address text NOT NULL,
    original text NOT NULL,
    status text NOT NULL CHECK (status IN ('queued', 'delivered', 'failed', 'held')),
    attempts integer NOT NULL DEFAULT 0,
    next_attempt double precision NOT NULL,
    last_reply text,
    lease_owner text,                   -- the node delivering it, until lease_until
    lease_until double precision,
    recovered boolean NOT NULL DEFAULT false,
    updated_at double precision NOT NULL,
    notify text,
    orcpt text
);
CREATE INDEX queue_recipients_due ON queue_recipients (next_attempt) WHERE status = 'queued';
CREATE INDEX queue_recipients_message ON queue_recipients (queue_id);
CREATE INDEX queue_recipients_lease ON queue_recipients (lease_owner) WHERE lease_owner IS NOT NULL;
""",
    ),
    (
        3,
        "AUTH failure counters and client blocks, shared by the nodes",
        """
CREATE TABLE auth_failures (
    kind text NOT NULL CHECK (kind IN ('client', 'account')),
    key text NOT NULL,                  -- the client (IPv4 address or IPv6 /64) or account
    at double precision NOT NULL        -- wall clock
);
CREATE INDEX auth_failures_key ON auth_failures (kind, key, at);
CREATE TABLE auth_blocks (
    client text PRIMARY KEY,
    until double precision NOT NULL     -- wall clock
);
""",
    ),
    (
        4,
        "the nodes' heartbeats, DMARC/TLS report data, the marks of `hato store copy`",
        """
CREATE TABLE nodes (                    -- one row per node, written every few seconds
    name text PRIMARY KEY,              -- [store] node, else the host name
    address text NOT NULL,              -- its listeners, for the admin
    pid integer NOT NULL,
    version text NOT NULL,
    started timestamptz NOT NULL,
    last_seen timestamptz NOT NULL,     -- the database's clock: no skew between nodes
    every double precision NOT NULL,    -- seconds between its heartbeats
    stopped timestamptz                 -- stopped cleanly then; NULL: running (or died)
);
CREATE TABLE report_dmarc (             -- reports/postgres.py: equal events of an hour, counted
    hour bigint NOT NULL, source_ip text NOT NULL, header_from text NOT NULL,
    envelope_from text NOT NULL, spf_domain text NOT NULL, spf_result text NOT NULL,
    dkim text NOT NULL, dkim_aligned boolean NOT NULL, spf_aligned boolean NOT NULL,
    disposition text NOT NULL, reason text NOT NULL, policy_domain text NOT NULL,
    p text NOT NULL, sp text NOT NULL, pct integer NOT NULL, adkim text NOT NULL,
    aspf text NOT NULL, fo text NOT NULL, count bigint NOT NULL,
    UNIQUE (hour, source_ip, header_from, envelope_from, spf_domain, spf_result, dkim,
            dkim_aligned, spf_aligned, disposition, reason, policy_domain, p, sp, pct, adkim,
            aspf, fo)
);
CREATE TABLE report_tls (
    hour bigint NOT NULL, policy_domain text NOT NULL, policy_type text NOT NULL,
    policy_strings text NOT NULL, mx_host text NOT NULL, receiving_ip text NOT NULL,
    failure text NOT NULL, detail text NOT NULL, count bigint NOT NULL,
    UNIQUE (hour, policy_domain, policy_type, policy_strings, mx_host, receiving_ip, failure,
            detail)
);
CREATE TABLE report_sent (kind text PRIMARY KEY, until double precision NOT NULL);
CREATE TABLE report_runs (              -- one node sends the reports of an interval
    run_end double precision PRIMARY KEY,
    node text NOT NULL
);
CREATE TABLE store_copies (             -- `hato store copy`: what was copied from where
    source text NOT NULL,
    item text NOT NULL,
    copied_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (source, item)
);
""",
    ),
    (
        5,
        "NOTIFY hato_directory on every change to accounts, keys and key policies",
        # boot/pgcache.py: each node caches its account and key look-ups until told of a
        # change. A statement trigger, so that every writer (hato user, hato key, the WKD
        # upload, hato store copy, an admin's psql) notifies, in its own transaction:
        # PostgreSQL delivers the notification at COMMIT, never for a rolled-back change.
        """
CREATE FUNCTION hato_directory_changed() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('hato_directory', TG_TABLE_NAME);
    RETURN NULL;
END
$$;
CREATE TRIGGER users_notify AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON users
    FOR EACH STATEMENT EXECUTE FUNCTION hato_directory_changed();
CREATE TRIGGER keys_notify AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON keys
    FOR EACH STATEMENT EXECUTE FUNCTION hato_directory_changed();
CREATE TRIGGER key_policies_notify AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON key_policies
    FOR EACH STATEMENT EXECUTE FUNCTION hato_directory_changed();
""",
    ),
)
SCHEMA_VERSION = MIGRATIONS[-1][0]
"""The schema this code reads and writes."""

_VERSION_TABLE = """
CREATE TABLE IF NOT EXISTS schema_version (
    version integer PRIMARY KEY,
    description text NOT NULL,
    applied_at timestamptz NOT NULL DEFAULT now()
)
"""


class SchemaMismatch(Exception):
    """The database's schema is not the one this code was written for; the message says which
    way and what to do, in one line."""


def current_version(conn: psycopg.Connection[Any]) -> int:
    """The newest migration applied (0: none, or no schema_version table yet)."""
    row = conn.execute("SELECT to_regclass('schema_version') IS NOT NULL").fetchone()
    if row is None or not row[0]:
        return 0
    found = conn.execute("SELECT coalesce(max(version), 0) FROM schema_version").fetchone()
    return int(found[0]) if found else 0


def migrate(conn: psycopg.Connection[Any]) -> list[tuple[int, str]]:
    """Apply the migrations the database lacks, each in its own transaction; the ones applied.

    Raises SchemaMismatch if the database is newer than this code."""
    applied: list[tuple[int, str]] = []
    for version, description, sql in MIGRATIONS:
        with conn.transaction():
            conn.execute("SELECT pg_advisory_xact_lock(%s)", (_LOCK,))
            conn.execute(_VERSION_TABLE)
            have = current_version(conn)
            if have > SCHEMA_VERSION:
                raise SchemaMismatch(_newer(have))
            if have >= version:
                continue
            conn.execute(sql.encode())
            conn.execute(
                "INSERT INTO schema_version (version, description) VALUES (%s, %s)",
                (version, description),
            )
            applied.append((version, description))
    return applied


def check_schema(conn: psycopg.Connection[Any]) -> None:
    """Raise SchemaMismatch unless the database is at SCHEMA_VERSION."""
    have = current_version(conn)
    if have == SCHEMA_VERSION:
        return
    if have > SCHEMA_VERSION:
        raise SchemaMismatch(_newer(have))
    what = "has no Hato schema" if have == 0 else f"has schema version {have}"
    raise SchemaMismatch(
        f"the PostgreSQL store {what}, this Hato needs version {SCHEMA_VERSION}: "
        "run `hato store migrate` (once, from any node)"
    )


def _newer(have: int) -> str:
    return (
        f"the PostgreSQL store has schema version {have}, newer than this Hato's "
        f"{SCHEMA_VERSION}: another node runs a newer Hato; upgrade this one"
    )
