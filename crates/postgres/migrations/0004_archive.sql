-- factstore schema, version 4: archiving to cold storage. See docs/postgres.md, "Archiving".

-- An archived event keeps its row and every indexed column (ids, positions, versions, types,
-- times, links), so that idempotency, expected versions, conditions and every query work
-- unchanged; only its payload leaves: event_data and metadata become NULL and archived_chunk
-- names the chunk whose object holds them. NULL while the event is hot.
ALTER TABLE events ALTER COLUMN event_data DROP NOT NULL;
ALTER TABLE events ADD COLUMN archived_chunk bigint;
ALTER TABLE events ADD CONSTRAINT events_payload_somewhere
    CHECK ((archived_chunk IS NULL) = (event_data IS NOT NULL));

-- One row per archived chunk: the payloads of the events at positions first_position to
-- last_position (consecutive, all of them), in one object in cold storage. Archived chunks
-- cover positions 1 to max(last_position) with no gap: archiving takes the oldest hot events.
-- chunk_id is first_position.
CREATE TABLE factstore_archive_chunks (
    chunk_id bigint PRIMARY KEY,
    first_position bigint NOT NULL CHECK (first_position > 0),
    last_position bigint NOT NULL,
    event_count bigint NOT NULL CHECK (event_count = last_position - first_position + 1),
    -- The encoded chunk before compression, and the object's size.
    bytes bigint NOT NULL,
    compressed_bytes bigint NOT NULL,
    -- xxh3-64 of the encoded chunk (before compression), as a signed bigint.
    checksum bigint NOT NULL,
    object_key text NOT NULL,
    archived_at timestamptz NOT NULL DEFAULT now(),
    CHECK (chunk_id = first_position),
    CHECK (last_position >= first_position)
);
