-- factstore schema, version 1: events, the head row, snapshots. See docs/postgres.md.

-- The one-row table that serializes commits: a writer locks it (SELECT ... FOR UPDATE), takes
-- the positions after `position`, inserts its events, moves `position` and commits, all in one
-- transaction. `recorded_at` is the commit time of the last commit, in microseconds since the
-- Unix epoch, so that the next commit never records an earlier time.
CREATE TABLE factstore_head (
    id smallint PRIMARY KEY CHECK (id = 1),
    position bigint NOT NULL CHECK (position >= 0),
    recorded_at timestamptz
);
INSERT INTO factstore_head (id, position, recorded_at) VALUES (1, 0, NULL);

-- One row per event. Text columns use the "C" collation: byte order, as the embedded engine
-- compares them, and prefix searches (LIKE 'p%') can use the btree indexes.
-- event_data and metadata are `json`, not `jsonb`: json keeps the exact text the client sent
-- (compacted by the server), which the API returns byte for byte; jsonb would reorder keys.
CREATE TABLE events (
    event_id uuid PRIMARY KEY,
    position bigint NOT NULL CHECK (position > 0),
    aggregate_id text COLLATE "C" NOT NULL,
    aggregate_version bigint NOT NULL CHECK (aggregate_version > 0),
    aggregate_type text COLLATE "C" NOT NULL,
    event_type text COLLATE "C" NOT NULL,
    event_version integer NOT NULL CHECK (event_version > 0),
    event_data json NOT NULL,
    created_at timestamptz NOT NULL,
    recorded_at timestamptz NOT NULL,
    created_by text COLLATE "C",
    metadata json,
    -- Copies of metadata.correlation_id and metadata.causation_id, for their indexes.
    correlation_id text COLLATE "C",
    causation_id text COLLATE "C",
    CONSTRAINT events_position_key UNIQUE (position),
    CONSTRAINT events_aggregate_version_key UNIQUE (aggregate_id, aggregate_version)
);

-- Reads by filter walk these in position order (keyset pagination on position).
CREATE INDEX events_event_type_idx ON events (event_type, position);
CREATE INDEX events_aggregate_type_idx ON events (aggregate_type, position);
CREATE INDEX events_correlation_id_idx ON events (correlation_id, position) WHERE correlation_id IS NOT NULL;
CREATE INDEX events_causation_id_idx ON events (causation_id, position) WHERE causation_id IS NOT NULL;
CREATE INDEX events_created_by_idx ON events (created_by, position) WHERE created_by IS NOT NULL;
-- recorded_at never decreases along position, and created_at mostly follows it: block ranges
-- (BRIN) index both at almost no cost per insert.
CREATE INDEX events_recorded_at_idx ON events USING brin (recorded_at);
CREATE INDEX events_created_at_idx ON events USING brin (created_at);

-- Snapshots: a cache of an aggregate's folded state, at most one per (aggregate, version).
CREATE TABLE snapshots (
    aggregate_id text COLLATE "C" NOT NULL,
    version bigint NOT NULL CHECK (version > 0),
    snapshot_type text COLLATE "C" NOT NULL,
    snapshot_version integer NOT NULL CHECK (snapshot_version > 0),
    state json NOT NULL,
    created_at timestamptz NOT NULL,
    PRIMARY KEY (aggregate_id, version)
);
