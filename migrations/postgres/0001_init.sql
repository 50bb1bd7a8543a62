-- Funkos, categories and the event log (the outbox every write appends to).
-- Booleans are integers and timestamps RFC 3339 text so the same SQL runs on SQLite and PostgreSQL.
-- Every text column uses the "C" collation: comparisons, ORDER BY and lower() then work on
-- bytes and ASCII as SQLite's do, whatever locale the database was created with.

CREATE TABLE categories (
    id          BIGSERIAL PRIMARY KEY,
    name        TEXT COLLATE "C" NOT NULL,
    name_key    TEXT COLLATE "C" NOT NULL,
    created_at  TEXT COLLATE "C" NOT NULL,
    updated_at  TEXT COLLATE "C" NOT NULL,
    is_deleted  BIGINT  NOT NULL DEFAULT 0
);
CREATE UNIQUE INDEX categories_live_name ON categories (name_key) WHERE is_deleted = 0;

CREATE TABLE funkos (
    id           BIGSERIAL PRIMARY KEY,
    name         TEXT COLLATE "C" NOT NULL,
    name_key     TEXT COLLATE "C" NOT NULL,
    description  TEXT COLLATE "C",
    -- lower-cased description (Unicode-aware, computed by the server) for `q` search
    description_key  TEXT COLLATE "C",
    price_cents  BIGINT  NOT NULL CHECK (price_cents BETWEEN 0 AND 100000000),
    stock        BIGINT  NOT NULL CHECK (stock BETWEEN 0 AND 1000000),
    image        TEXT COLLATE "C" NOT NULL,
    category_id  BIGINT  NOT NULL REFERENCES categories (id),
    created_at   TEXT COLLATE "C" NOT NULL,
    updated_at   TEXT COLLATE "C" NOT NULL,
    is_deleted   BIGINT  NOT NULL DEFAULT 0,
    version      BIGINT  NOT NULL DEFAULT 1
);
CREATE UNIQUE INDEX funkos_live_name ON funkos (name_key) WHERE is_deleted = 0;
CREATE INDEX funkos_category ON funkos (category_id);

-- The change stream. `id` is the cursor. Writes, and so appends, are serialised by an advisory
-- lock held to commit (see src/db/events.rs), so ids become visible in increasing order.
CREATE TABLE events (
    id          BIGSERIAL PRIMARY KEY,
    entity      TEXT COLLATE "C" NOT NULL,
    type        TEXT COLLATE "C" NOT NULL,
    data        TEXT COLLATE "C" NOT NULL,
    created_at  TEXT COLLATE "C" NOT NULL
);

-- `floor`: every event with an id above it is still in the log (raised by pruning).
CREATE TABLE stream_meta (
    key    TEXT PRIMARY KEY,
    value  BIGINT NOT NULL
);
