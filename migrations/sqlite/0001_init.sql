-- Funkos, categories and the event log (the outbox every write appends to).
-- Booleans are integers and timestamps RFC 3339 text so the same SQL runs on SQLite and PostgreSQL.

CREATE TABLE categories (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    name        TEXT    NOT NULL,
    name_key    TEXT    NOT NULL,
    created_at  TEXT    NOT NULL,
    updated_at  TEXT    NOT NULL,
    is_deleted  INTEGER NOT NULL DEFAULT 0
);
CREATE UNIQUE INDEX categories_live_name ON categories (name_key) WHERE is_deleted = 0;

CREATE TABLE funkos (
    id           INTEGER PRIMARY KEY AUTOINCREMENT,
    name         TEXT    NOT NULL,
    name_key     TEXT    NOT NULL,
    description  TEXT,
    -- lower-cased description (Unicode-aware, computed by the server) for `q` search
    description_key  TEXT,
    price_cents  INTEGER NOT NULL CHECK (price_cents BETWEEN 0 AND 100000000),
    stock        INTEGER NOT NULL CHECK (stock BETWEEN 0 AND 1000000),
    image        TEXT    NOT NULL,
    category_id  INTEGER NOT NULL REFERENCES categories (id),
    created_at   TEXT    NOT NULL,
    updated_at   TEXT    NOT NULL,
    is_deleted   INTEGER NOT NULL DEFAULT 0,
    version      INTEGER NOT NULL DEFAULT 1
);
CREATE UNIQUE INDEX funkos_live_name ON funkos (name_key) WHERE is_deleted = 0;
CREATE INDEX funkos_category ON funkos (category_id);

-- The change stream. `id` is the cursor; AUTOINCREMENT never reuses an id, even after pruning.
CREATE TABLE events (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    entity      TEXT NOT NULL,
    type        TEXT NOT NULL,
    data        TEXT NOT NULL,
    created_at  TEXT NOT NULL
);

-- `floor`: every event with an id above it is still in the log (raised by pruning).
CREATE TABLE stream_meta (
    key    TEXT PRIMARY KEY,
    value  INTEGER NOT NULL
);
