-- factstore schema, version 2: the state beside the events that servers on one database
-- share: the schema registry, projections, persistent-subscription groups, and the leader.
-- See docs/postgres.md ("Shared state").

-- The leader: the one server that runs projections and persistent subscriptions. A server
-- becomes leader by taking a session advisory lock, then bumps epoch; state writes carry the
-- epoch they were made under and are refused once it changed (fencing).
CREATE TABLE factstore_leader (
    id smallint PRIMARY KEY CHECK (id = 1),
    epoch bigint NOT NULL,
    node text,
    url text,
    since timestamptz
);
INSERT INTO factstore_leader (id, epoch) VALUES (1, 0);

-- The schema registry: one row per change, in order. Any server appends, holding a
-- transaction advisory lock and only when it has read every row before (seq = the last + 1),
-- so the rows are one history without gaps; other servers read the rows after the last they
-- saw. `record` is the change as JSON (the exact text written).
CREATE TABLE factstore_schema_records (
    seq bigint PRIMARY KEY CHECK (seq > 0),
    record json NOT NULL,
    recorded_at timestamptz NOT NULL DEFAULT now()
);

-- Projections: one row per generation (its existence), and its log of records in order.
-- Rewriting a log (compaction) replaces its rows in one transaction.
CREATE TABLE factstore_projection_generations (
    name text COLLATE "C" NOT NULL,
    generation bigint NOT NULL CHECK (generation >= 0),
    PRIMARY KEY (name, generation)
);
CREATE TABLE factstore_projection_records (
    name text COLLATE "C" NOT NULL,
    generation bigint NOT NULL,
    seq bigint NOT NULL CHECK (seq >= 0),
    record bytea NOT NULL,
    PRIMARY KEY (name, generation, seq),
    FOREIGN KEY (name, generation) REFERENCES factstore_projection_generations (name, generation)
        ON DELETE CASCADE
);

-- Persistent-subscription groups: each group's log of records in order. A group exists while
-- it has rows: it is created with its first records in one transaction.
CREATE TABLE factstore_group_records (
    group_name text COLLATE "C" NOT NULL,
    seq bigint NOT NULL CHECK (seq >= 0),
    record bytea NOT NULL,
    PRIMARY KEY (group_name, seq)
);
