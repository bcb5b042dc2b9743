"""The ledger's SQLite schema: its DDL and version.

Why a module of its own: the tables are the store's file format, read by every part of the
store (ingest, trust queries, integrity checks); a change here is a format change and bumps
`SCHEMA_VERSION`, which `ensure_schema` checks when `Store.open` opens a file.
"""

from __future__ import annotations

import sqlite3

from qudag.dag.records import StoreError

SCHEMA_VERSION = 2


# The committed size of the segment file (dag/segment.py): bytes past it belong to no row.
SEGMENT_TABLE = """
CREATE TABLE IF NOT EXISTS segment (
    k    INTEGER PRIMARY KEY CHECK (k = 0),
    size INTEGER NOT NULL
);
INSERT OR IGNORE INTO segment (k, size) VALUES (0, 0);
"""

SCHEMA = (
    """
CREATE TABLE IF NOT EXISTS vertices (
    n      INTEGER PRIMARY KEY,          -- local insertion number; never leaves this store
    id     BLOB NOT NULL UNIQUE CHECK (length(id) = 32),
    author BLOB NOT NULL,
    seq    INTEGER NOT NULL,
    ts_ms  INTEGER NOT NULL,
    kind   TEXT NOT NULL,
    depth  INTEGER NOT NULL,             -- 0 without parents, else 1 + deepest parent
    raw    BLOB NOT NULL,                -- the exact wire bytes; empty if held elsewhere
    seg_off INTEGER,                     -- where the segment file holds them (NULL: in raw)
    seg_len INTEGER
);
CREATE INDEX IF NOT EXISTS vertices_author_seq ON vertices (author, seq);
CREATE INDEX IF NOT EXISTS vertices_depth_id ON vertices (depth, id);
CREATE TABLE IF NOT EXISTS edges (
    child  INTEGER NOT NULL REFERENCES vertices (n),
    parent INTEGER NOT NULL REFERENCES vertices (n),
    PRIMARY KEY (child, parent)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS edges_parent ON edges (parent, child);
CREATE TABLE IF NOT EXISTS tips (
    n INTEGER PRIMARY KEY REFERENCES vertices (n)
);
CREATE TABLE IF NOT EXISTS authors (
    author     BLOB PRIMARY KEY,
    public_key BLOB NOT NULL,
    identity   INTEGER NOT NULL REFERENCES vertices (n),
    flagged    INTEGER NOT NULL DEFAULT 0   -- 1 once two vertices share (author, seq)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS orphans (
    k           INTEGER PRIMARY KEY AUTOINCREMENT,   -- arrival order: evict the smallest
    id          BLOB NOT NULL UNIQUE,
    raw         BLOB NOT NULL,
    received_ms INTEGER NOT NULL,
    verified    INTEGER NOT NULL               -- signature already checked on arrival
);
CREATE TABLE IF NOT EXISTS orphan_missing (
    missing BLOB NOT NULL,
    orphan  INTEGER NOT NULL REFERENCES orphans (k) ON DELETE CASCADE,
    PRIMARY KEY (missing, orphan)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS orphan_missing_orphan ON orphan_missing (orphan);
CREATE TABLE IF NOT EXISTS templates (
    n            INTEGER PRIMARY KEY REFERENCES vertices (n),
    task         TEXT NOT NULL,
    task_version INTEGER NOT NULL,
    fitness      REAL NOT NULL                 -- the author's claim
);
CREATE INDEX IF NOT EXISTS templates_task ON templates (task, task_version);
CREATE TABLE IF NOT EXISTS verifications (
    template BLOB NOT NULL,                    -- template vertex id
    verifier BLOB NOT NULL,                    -- key id of who re-measured it
    fitness  REAL NOT NULL,                    -- re-measured fitness
    verdict  TEXT NOT NULL CHECK (verdict IN ('valid', 'invalid')),
    ts_ms    INTEGER NOT NULL,
    vertex   INTEGER REFERENCES vertices (n)   -- the attestation; NULL if recorded locally
);
CREATE INDEX IF NOT EXISTS verifications_template ON verifications (template, verifier);
"""
    + SEGMENT_TABLE
)

# The published tasks of a ledger (`task` vertices, issue 15) are listed by the node's
# `/api/tasks` route and `run --task PREFIX`: a partial index holds only their rows, so the
# listing costs what the tasks cost, not a scan of every vertex.
LATER_INDEXES = {
    "vertices_kind_task": "CREATE INDEX IF NOT EXISTS vertices_kind_task ON vertices (n) "
    "WHERE kind = 'task';",
}


# Version 1 -> 2: vertex bytes may live in the segment file. Old rows keep theirs in `raw`
# (every read takes either), so the upgrade rewrites nothing.
UPGRADE_1_TO_2 = (
    "ALTER TABLE vertices ADD COLUMN seg_off INTEGER",
    "ALTER TABLE vertices ADD COLUMN seg_len INTEGER",
    *(statement for statement in SEGMENT_TABLE.split(";") if statement.strip()),
    f"PRAGMA user_version={SCHEMA_VERSION}",
)


def ensure_schema(db: sqlite3.Connection) -> None:
    """Create the tables in a new file (atomically), upgrade a version 1 file, or check an
    existing file's version; raise `StoreError` for a version this code does not know."""
    version = db.execute("PRAGMA user_version").fetchone()[0]
    if version not in (0, 1, SCHEMA_VERSION):
        raise StoreError(f"ledger schema version {version} is not {SCHEMA_VERSION}")
    if version == 0:  # new file: create the schema atomically
        db.executescript(f"BEGIN IMMEDIATE;{SCHEMA}PRAGMA user_version={SCHEMA_VERSION};COMMIT;")
    elif version == 1:
        db.execute("BEGIN IMMEDIATE")
        try:
            # Another process may have upgraded the file between our read and the lock.
            if db.execute("PRAGMA user_version").fetchone()[0] == 1:
                for statement in UPGRADE_1_TO_2:
                    db.execute(statement)
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise
    # Indexes added within a version: created in older files of that version too (an index
    # is not a format change: code without it reads the file unchanged). Only when missing:
    # opening a file must not wait for the write lock of a process that holds it.
    have = {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type = 'index'")}
    missing = "".join(ddl for name, ddl in LATER_INDEXES.items() if name not in have)
    if missing:
        db.executescript(f"BEGIN IMMEDIATE;{missing}COMMIT;")
