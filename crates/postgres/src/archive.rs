//! Archiving on PostgreSQL: the payloads of the oldest events move to objects in cold storage,
//! and reads fill them back in (see `docs/postgres.md`, "Archiving").
//!
//! # What moves
//! Only payloads. An archived event keeps its row in `events` with every indexed column, so
//! idempotency, expected versions, conditions and every query run exactly as before; its
//! `event_data` and `metadata` become NULL and `archived_chunk` names the chunk that holds them.
//! A chunk is the payloads of consecutive positions, encoded ([`encode`]), compressed (zstd)
//! and put as one object whose key names its positions and checksum.
//!
//! # The steps of one chunk
//! 1. Read the oldest hot events at or below the head recorded before `before` (a prefix of
//!    the hot positions: `recorded_at` never decreases along positions).
//! 2. Encode and compress them; put the object.
//! 3. Get the object back, decompress it and compare it byte for byte with what was put.
//! 4. In ONE transaction: insert the chunk's row, and set the payloads of its events to NULL
//!    with `archived_chunk` naming it (every one of them, or the transaction rolls back).
//!
//! A failure (or a crash) before step 4 commits leaves every event hot; the object left
//! behind is harmless and a later run overwrites it with the same bytes (the key names the
//! positions and the checksum). One run at a time, on any server: a run holds a transaction
//! advisory lock keyed by the schema from start to end.
//!
//! # Reads
//! A read that meets archived rows calls [`Archive::payloads`] with them before decoding: it
//! fetches each chunk through a cache of decoded chunks (least recently used first out, by
//! bytes), checks its checksum and positions, and hands the payloads to the decoder. A chunk
//! that cannot be fetched or does not check fails the read (`Unavailable`, naming the chunk):
//! an event is never returned without its data.

use std::collections::HashMap;
use std::sync::Arc;

use bytes::Bytes;
use factstore_core::{ArchiveOutcome, StorageStats, StoreError, Timestamp};
use factstore_engine::archive::ColdStore;
use parking_lot::Mutex;
use postgres_types::Type;
use tokio_postgres::{Client, Row};

use crate::PgError;
use crate::types::{JsonText, Ts};

/// zstd level: fast to compress, still most of the gain on JSON.
const ZSTD_LEVEL: i32 = 3;
/// The first bytes of an encoded chunk.
const MAGIC: &[u8; 8] = b"FSPGCHK1";
/// Metadata length meaning "no metadata".
const NO_METADATA: u32 = u32::MAX;

/// An event's data and metadata.
type Payload = (String, Option<String>);

/// How a store archives.
#[derive(Debug, Clone)]
pub struct ArchiveOptions {
    /// Where chunks go; `None`: archiving is not configured (and a database that has archived
    /// chunks does not open).
    pub cold: Option<Arc<dyn ColdStore>>,
    /// Bytes of decoded chunks kept in memory for reads; the chunk being read is kept whatever
    /// its size.
    pub cache_bytes_max: u64,
    /// The most events in one chunk.
    pub chunk_events_max: usize,
    /// The most payload bytes in one chunk (a single larger event still makes a chunk).
    pub chunk_bytes_max: usize,
}

impl Default for ArchiveOptions {
    fn default() -> ArchiveOptions {
        ArchiveOptions {
            cold: None,
            cache_bytes_max: 256 << 20,
            chunk_events_max: 100_000,
            chunk_bytes_max: 64 << 20,
        }
    }
}

/// A chunk's row in `factstore_archive_chunks`.
#[derive(Debug, Clone)]
struct ChunkRow {
    chunk_id: i64,
    first_position: i64,
    last_position: i64,
    bytes: i64,
    checksum: i64,
    object_key: String,
}

const CHUNK_COLUMNS: &str = "chunk_id, first_position, last_position, bytes, checksum, object_key";

impl ChunkRow {
    fn from_row(row: &Row) -> Result<ChunkRow, PgError> {
        Ok(ChunkRow {
            chunk_id: row.try_get(0)?,
            first_position: row.try_get(1)?,
            last_position: row.try_get(2)?,
            bytes: row.try_get(3)?,
            checksum: row.try_get(4)?,
            object_key: row.try_get(5)?,
        })
    }
}

/// The object key of a chunk: its positions and checksum, so that two puts under one key
/// always carry the same bytes.
fn object_key(first: i64, last: i64, checksum: u64) -> String {
    format!("pg-chunks/{first:020}-{last:020}-{checksum:016x}.chunk.zst")
}

/// The decoded payloads of a chunk: `payloads[i]` is that of position `first + i`.
#[derive(Debug)]
struct Chunk {
    chunk_id: i64,
    first: i64,
    payloads: Vec<Payload>,
    /// Encoded size, what the cache counts.
    bytes: u64,
}

/// The payloads a batch of rows needs, fetched before the rows are decoded.
#[derive(Debug, Default)]
pub struct Payloads {
    chunks: Vec<Arc<Chunk>>,
}

impl Payloads {
    /// No archived payloads (for rows that have none).
    pub fn none() -> Payloads {
        Payloads::default()
    }

    /// The event data and metadata of `position`, archived in chunk `chunk_id`.
    pub fn get(&self, chunk_id: i64, position: i64) -> Result<(&str, Option<&str>), PgError> {
        let chunk = self
            .chunks
            .iter()
            .find(|c| c.chunk_id == chunk_id)
            .ok_or_else(|| PgError::Corrupt(format!("archived chunk {chunk_id} was not fetched")))?;
        let payload = usize::try_from(position - chunk.first)
            .ok()
            .and_then(|i| chunk.payloads.get(i))
            .ok_or_else(|| {
                PgError::Corrupt(format!(
                    "event at position {position} names archived chunk {chunk_id}, which does not hold it"
                ))
            })?;
        Ok((&payload.0, payload.1.as_deref()))
    }
}

#[derive(Debug, Default)]
struct Cache {
    chunks: HashMap<i64, (Arc<Chunk>, u64)>,
    bytes: u64,
    tick: u64,
}

/// The archive of an open store: its cold store, the chunk rows seen, the cache.
#[derive(Debug)]
pub struct Archive {
    options: ArchiveOptions,
    /// Chunk rows never change once committed: kept once read.
    rows: Mutex<HashMap<i64, ChunkRow>>,
    cache: Mutex<Cache>,
    /// A gate per chunk being fetched: readers of one uncached chunk take turns, so the first
    /// fetches it and the others find it cached.
    fetching: Mutex<HashMap<i64, Arc<tokio::sync::Mutex<()>>>>,
}

impl Drop for Archive {
    fn drop(&mut self) {
        // A cold store may own a runtime, which panics when dropped on a runtime's thread (a
        // store is usually dropped in an async task).
        if let Some(cold) = self.options.cold.take() {
            let _ = std::thread::Builder::new()
                .name("factstore-archive-drop".into())
                .spawn(move || drop(cold));
        }
    }
}

impl Archive {
    pub fn new(options: ArchiveOptions) -> Archive {
        Archive {
            options,
            rows: Mutex::new(HashMap::new()),
            cache: Mutex::new(Cache::default()),
            fetching: Mutex::new(HashMap::new()),
        }
    }

    /// Refuses a database that has archived chunks when no cold store is configured: its
    /// oldest events would be unreadable.
    pub async fn check_configured(&self, client: &Client) -> Result<(), PgError> {
        if self.options.cold.is_some() {
            return Ok(());
        }
        let row = client
            .query_one(
                "SELECT count(*), coalesce(max(last_position), 0) FROM factstore_archive_chunks",
                &[],
            )
            .await?;
        let chunks: i64 = row.try_get(0)?;
        let last: i64 = row.try_get(1)?;
        if chunks > 0 {
            return Err(PgError::Config(format!(
                "the payloads of positions 1 to {last} of this store are in cold storage ({chunks} chunks): \
                 open it with the archive URL they were archived to (--archive-url)"
            )));
        }
        Ok(())
    }

    /// Whether the event in the [`EVENT_COLUMNS`](crate::sql::EVENT_COLUMNS) starting at
    /// column `at` of `row` is archived (its payloads are in a chunk).
    pub fn is_archived(row: &Row, at: usize) -> Result<bool, PgError> {
        Ok(row.try_get::<_, Option<i64>>(at + 14)?.is_some())
    }

    /// The archived chunks named by `rows` (event columns from column `at`) that are not in
    /// the cache, each with the event ids of its rows there.
    pub fn uncached(&self, rows: &[Row], at: usize) -> Result<Vec<(i64, Vec<uuid::Uuid>)>, PgError> {
        let mut out: Vec<(i64, Vec<uuid::Uuid>)> = Vec::new();
        for row in rows {
            let Some(chunk_id) = row.try_get::<_, Option<i64>>(at + 14)? else {
                continue;
            };
            if self.cache.lock().chunks.contains_key(&chunk_id) {
                continue;
            }
            let id: uuid::Uuid = row.try_get(at + 2)?;
            match out.iter_mut().find(|(c, _)| *c == chunk_id) {
                Some((_, ids)) => ids.push(id),
                None => out.push((chunk_id, vec![id])),
            }
        }
        Ok(out)
    }

    /// Fetches chunk `chunk_id` into the cache, or fails naming it.
    pub async fn warm(&self, client: &Client, chunk_id: i64) -> Result<(), PgError> {
        self.chunk(client, chunk_id).await.map(|_| ())
    }

    /// The payloads of the archived rows among `rows`, whose event columns start at column
    /// `at` (`archived_chunk` is the 15th of them).
    pub async fn payloads(&self, client: &Client, rows: &[Row], at: usize) -> Result<Payloads, PgError> {
        let mut ids: Vec<i64> = Vec::new();
        for row in rows {
            if let Some(id) = row.try_get::<_, Option<i64>>(at + 14)?
                && !ids.contains(&id)
            {
                ids.push(id);
            }
        }
        let mut payloads = Payloads::default();
        for id in ids {
            payloads.chunks.push(self.chunk(client, id).await?);
        }
        Ok(payloads)
    }

    async fn chunk(&self, client: &Client, chunk_id: i64) -> Result<Arc<Chunk>, PgError> {
        if let Some(chunk) = self.cached(chunk_id) {
            return Ok(chunk);
        }
        let gate = self.fetching.lock().entry(chunk_id).or_default().clone();
        let chunk = {
            let _turn = gate.lock().await;
            match self.cached(chunk_id) {
                Some(chunk) => Ok(chunk),
                None => self.fetch_chunk(client, chunk_id).await,
            }
        };
        let mut fetching = self.fetching.lock();
        // Only the map and this reader hold the gate: nobody waits at it.
        if Arc::strong_count(&gate) == 2 {
            fetching.remove(&chunk_id);
        }
        chunk
    }

    async fn fetch_chunk(&self, client: &Client, chunk_id: i64) -> Result<Arc<Chunk>, PgError> {
        let row = self.chunk_row(client, chunk_id).await?;
        let Some(cold) = self.options.cold.clone() else {
            return Err(PgError::Archive(format!(
                "archived chunk {chunk_id} (positions {} to {}) is in cold storage, but no archive URL is \
                 configured (--archive-url)",
                row.first_position, row.last_position
            )));
        };
        let chunk = tokio::task::spawn_blocking(move || fetch(&*cold, &row))
            .await
            .map_err(|e| PgError::Archive(format!("fetching archived chunk {chunk_id}: {e}")))??;
        let chunk = Arc::new(chunk);
        self.remember(chunk.clone());
        Ok(chunk)
    }

    async fn chunk_row(&self, client: &Client, chunk_id: i64) -> Result<ChunkRow, PgError> {
        if let Some(row) = self.rows.lock().get(&chunk_id) {
            return Ok(row.clone());
        }
        let rows = client
            .query_typed(
                &format!("SELECT {CHUNK_COLUMNS} FROM factstore_archive_chunks WHERE chunk_id = $1"),
                &[(&chunk_id, Type::INT8)],
            )
            .await?;
        let row = rows.first().ok_or_else(|| {
            PgError::Corrupt(format!("events name archived chunk {chunk_id}, which has no row"))
        })?;
        let row = ChunkRow::from_row(row)?;
        self.rows.lock().insert(chunk_id, row.clone());
        Ok(row)
    }

    fn cached(&self, chunk_id: i64) -> Option<Arc<Chunk>> {
        let mut cache = self.cache.lock();
        cache.tick += 1;
        let tick = cache.tick;
        cache.chunks.get_mut(&chunk_id).map(|(chunk, used)| {
            *used = tick;
            chunk.clone()
        })
    }

    fn remember(&self, chunk: Arc<Chunk>) {
        let mut cache = self.cache.lock();
        cache.tick += 1;
        let tick = cache.tick;
        let id = chunk.chunk_id;
        let bytes = chunk.bytes;
        if let Some((old, _)) = cache.chunks.insert(id, (chunk, tick)) {
            cache.bytes -= old.bytes;
        }
        cache.bytes += bytes;
        while cache.bytes > self.options.cache_bytes_max {
            let oldest = cache
                .chunks
                .iter()
                .filter(|(other, _)| **other != id)
                .min_by_key(|(_, (_, used))| *used)
                .map(|(other, _)| *other);
            let Some(oldest) = oldest else { break };
            if let Some((gone, _)) = cache.chunks.remove(&oldest) {
                cache.bytes -= gone.bytes;
            }
        }
    }

    /// Archives the oldest events recorded before `before`, chunk by chunk (see the module
    /// docs); returns the totals archived so far.
    pub async fn archive(
        &self,
        pool: &deadpool_postgres::Pool,
        before: Timestamp,
    ) -> Result<ArchiveOutcome, StoreError> {
        let Some(cold) = self.options.cold.clone() else {
            return Err(StoreError::ArchiveNotConfigured);
        };
        let mut lock = pool.get().await.map_err(PgError::from)?;
        let lock = lock.transaction().await.map_err(PgError::from)?;
        // Held until this run ends (or its connection drops): one run at a time per schema.
        lock.batch_execute(
            "SELECT pg_advisory_xact_lock(hashtextextended('factstore.archive.' || current_schema(), 0))",
        )
        .await
        .map_err(PgError::from)?;
        let mut client = pool.get().await.map_err(PgError::from)?;
        while let Some(chunk) = self.next_chunk(&client, before).await? {
            let (first, last) = (chunk.first, chunk.last());
            let encoded = encode(&chunk);
            let checksum = xxhash_rust::xxh3::xxh3_64(&encoded);
            let key = object_key(first, last, checksum);
            let put = {
                let (cold, key, encoded) = (cold.clone(), key.clone(), encoded.clone());
                tokio::task::spawn_blocking(move || upload_verified(&*cold, &key, encoded))
            };
            let compressed_len = put
                .await
                .map_err(|e| PgError::Archive(format!("archiving positions {first} to {last}: {e}")))??;
            // The commit point: the chunk row and the payloads' removal, together.
            let tx = client.transaction().await.map_err(PgError::from)?;
            tx.execute(
                "INSERT INTO factstore_archive_chunks (chunk_id, first_position, last_position, event_count, \
                 bytes, compressed_bytes, checksum, object_key) VALUES ($1, $1, $2, $3, $4, $5, $6, $7)",
                &[
                    &first,
                    &last,
                    &(last - first + 1),
                    &(encoded.len() as i64),
                    &(compressed_len as i64),
                    &(checksum as i64),
                    &key,
                ],
            )
            .await
            .map_err(PgError::from)?;
            let updated = tx
                .execute(
                    "UPDATE events SET event_data = NULL, metadata = NULL, archived_chunk = $1 \
                     WHERE position BETWEEN $1 AND $2 AND archived_chunk IS NULL",
                    &[&first, &last],
                )
                .await
                .map_err(PgError::from)?;
            if updated != (last - first + 1) as u64 {
                // Dropping the transaction rolls it back: every event stays hot.
                return Err(PgError::Corrupt(format!(
                    "archiving positions {first} to {last} found {updated} hot events instead of {}",
                    last - first + 1
                ))
                .into());
            }
            tx.commit().await.map_err(PgError::from)?;
            tracing::info!(
                chunk = first,
                last_position = last,
                bytes = encoded.len(),
                compressed_bytes = compressed_len,
                "archived a chunk"
            );
        }
        lock.commit().await.map_err(PgError::from)?;
        let row = client
            .query_one(
                "SELECT coalesce(sum(event_count), 0)::bigint, coalesce(sum(bytes), 0)::bigint \
                 FROM factstore_archive_chunks",
                &[],
            )
            .await
            .map_err(PgError::from)?;
        let events: i64 = row.try_get(0).map_err(PgError::from)?;
        let bytes: i64 = row.try_get(1).map_err(PgError::from)?;
        Ok(ArchiveOutcome {
            archived_events: events as u64,
            archived_bytes: bytes as u64,
            // Every event at or below the head recorded before the cut moved, chunk by chunk.
            ..ArchiveOutcome::default()
        })
    }

    /// The next chunk to archive: the oldest hot events, at or below the head, recorded
    /// before `before`, within the chunk limits. `None` when there is none.
    async fn next_chunk(&self, client: &Client, before: Timestamp) -> Result<Option<NewChunk>, PgError> {
        let row = client
            .query_one(
                "SELECT (SELECT position FROM factstore_head WHERE id = 1), \
                 (SELECT coalesce(max(last_position), 0)::bigint FROM factstore_archive_chunks)",
                &[],
            )
            .await?;
        let head: i64 = row.try_get(0)?;
        let done: i64 = row.try_get(1)?;
        let limit = self.options.chunk_events_max.max(1) as i64;
        let rows = client
            .query_typed(
                "SELECT position, event_data, metadata FROM events WHERE position > $1 AND position <= $2 \
                 AND recorded_at < $3 ORDER BY position LIMIT $4",
                &[
                    (&done, Type::INT8),
                    (&head, Type::INT8),
                    (&Ts(before), Type::TIMESTAMPTZ),
                    (&limit, Type::INT8),
                ],
            )
            .await?;
        let mut chunk = NewChunk {
            first: done + 1,
            payloads: Vec::new(),
        };
        let mut bytes = 0usize;
        for row in &rows {
            let position: i64 = row.try_get(0)?;
            let data: Option<JsonText<'_>> = row.try_get(1)?;
            let metadata: Option<JsonText<'_>> = row.try_get(2)?;
            let expected = chunk.first + chunk.payloads.len() as i64;
            let Some(data) = data else {
                return Err(PgError::Corrupt(format!(
                    "event at position {position} has no data but is after the archived positions"
                )));
            };
            if position != expected {
                return Err(PgError::Corrupt(format!(
                    "position {expected} is missing from the events below the head"
                )));
            }
            let size = data.0.len() + metadata.map_or(0, |m| m.0.len());
            if !chunk.payloads.is_empty() && bytes + size > self.options.chunk_bytes_max {
                break;
            }
            bytes += size;
            chunk
                .payloads
                .push((data.0.to_owned(), metadata.map(|m| m.0.to_owned())));
        }
        Ok((!chunk.payloads.is_empty()).then_some(chunk))
    }

    /// Bytes and events, hot and cold. `hot_bytes` is the size of the `events` table with its
    /// indexes and TOAST (which keeps the rows of archived events, without their payloads).
    pub async fn storage(&self, client: &Client) -> Result<StorageStats, PgError> {
        let row = client
            .query_one(
                "SELECT (SELECT position FROM factstore_head WHERE id = 1), \
                 pg_total_relation_size('events'::regclass), \
                 coalesce(sum(event_count), 0)::bigint, coalesce(sum(compressed_bytes), 0)::bigint \
                 FROM factstore_archive_chunks",
                &[],
            )
            .await?;
        let head: i64 = row.try_get(0)?;
        let hot: i64 = row.try_get(1)?;
        let archived: i64 = row.try_get(2)?;
        let cold: i64 = row.try_get(3)?;
        Ok(StorageStats {
            hot_bytes: hot as u64,
            cold_bytes: cold as u64,
            events: head as u64,
            archived_events: archived as u64,
        })
    }
}

/// Payloads read for archiving: `payloads[i]` is that of position `first + i`.
#[derive(Debug)]
struct NewChunk {
    first: i64,
    payloads: Vec<Payload>,
}

impl NewChunk {
    fn last(&self) -> i64 {
        self.first + self.payloads.len() as i64 - 1
    }
}

/// The encoded form of a chunk: `MAGIC`, first position (u64 LE), event count (u32 LE), then
/// per event its data length (u32 LE) and bytes, and its metadata length (u32 LE, `u32::MAX`
/// for none) and bytes.
fn encode(chunk: &NewChunk) -> Bytes {
    let size: usize = chunk
        .payloads
        .iter()
        .map(|(d, m)| 8 + d.len() + m.as_ref().map_or(0, String::len))
        .sum();
    let mut out = Vec::with_capacity(20 + size);
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&(chunk.first as u64).to_le_bytes());
    out.extend_from_slice(&(chunk.payloads.len() as u32).to_le_bytes());
    for (data, metadata) in &chunk.payloads {
        out.extend_from_slice(&(data.len() as u32).to_le_bytes());
        out.extend_from_slice(data.as_bytes());
        match metadata {
            Some(m) => {
                out.extend_from_slice(&(m.len() as u32).to_le_bytes());
                out.extend_from_slice(m.as_bytes());
            }
            None => out.extend_from_slice(&NO_METADATA.to_le_bytes()),
        }
    }
    Bytes::from(out)
}

fn decode(bytes: &[u8]) -> Result<(i64, Vec<Payload>), String> {
    struct Reader<'a>(&'a [u8]);
    impl<'a> Reader<'a> {
        fn take(&mut self, n: usize) -> Result<&'a [u8], String> {
            if self.0.len() < n {
                return Err("the chunk ends early".into());
            }
            let (head, rest) = self.0.split_at(n);
            self.0 = rest;
            Ok(head)
        }
        fn u32(&mut self) -> Result<u32, String> {
            let b = self.take(4)?;
            Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        }
        fn text(&mut self, n: u32) -> Result<String, String> {
            let b = self.take(n as usize)?;
            String::from_utf8(b.to_vec()).map_err(|_| "a payload is not UTF-8".to_owned())
        }
    }
    let mut r = Reader(bytes);
    if r.take(8)? != MAGIC {
        return Err("not a chunk (bad magic)".into());
    }
    let mut first = [0u8; 8];
    first.copy_from_slice(r.take(8)?);
    let first = i64::try_from(u64::from_le_bytes(first)).map_err(|_| "bad first position".to_owned())?;
    let count = r.u32()?;
    let mut payloads = Vec::with_capacity(count.min(1 << 20) as usize);
    for _ in 0..count {
        let len = r.u32()?;
        let data = r.text(len)?;
        let len = r.u32()?;
        let metadata = if len == NO_METADATA {
            None
        } else {
            Some(r.text(len)?)
        };
        payloads.push((data, metadata));
    }
    if !r.0.is_empty() {
        return Err("bytes after the last event".into());
    }
    Ok((first, payloads))
}

/// A cold-storage failure as a client may read it (archive errors reach clients as 503): the
/// object's key and the kind of failure, not cold storage's URL nor the error's text, which
/// may name it; those are logged here.
fn cold_failure(cold: &dyn ColdStore, key: &str, what: &str, error: &std::io::Error) -> String {
    tracing::warn!(place = %format!("{}/{key}", cold.describe()), %error, "cold storage: {what} failed");
    format!("{what} {key}: {}", factstore_engine::error::describe_io(error))
}

/// Compresses and puts `encoded` under `key`, gets it back and compares; returns the
/// object's size.
fn upload_verified(cold: &dyn ColdStore, key: &str, encoded: Bytes) -> Result<u64, PgError> {
    let compressed = zstd::bulk::compress(&encoded, ZSTD_LEVEL)
        .map_err(|e| PgError::Archive(format!("cannot compress {key}: {e}")))?;
    let compressed_len = compressed.len() as u64;
    cold.put(key, Bytes::from(compressed))
        .map_err(|e| PgError::Archive(cold_failure(cold, key, "cannot put", &e)))?;
    let back = cold
        .get(key)
        .map_err(|e| PgError::Archive(cold_failure(cold, key, "cannot read back", &e)))?;
    let back = zstd::bulk::decompress(&back, encoded.len())
        .map_err(|e| PgError::Archive(format!("the copy at {key} does not decompress: {e}")))?;
    if back != encoded {
        return Err(PgError::Archive(format!(
            "the copy at {key} differs from what was put"
        )));
    }
    Ok(compressed_len)
}

/// Gets a chunk's object, checks it against its row and decodes it.
fn fetch(cold: &dyn ColdStore, row: &ChunkRow) -> Result<Chunk, PgError> {
    let id = row.chunk_id;
    let key = &row.object_key;
    let fail = |reason: String| {
        PgError::Archive(format!(
            "archived chunk {id} (positions {} to {}): {reason}",
            row.first_position, row.last_position
        ))
    };
    let compressed = cold
        .get(key)
        .map_err(|e| fail(cold_failure(cold, key, "cannot get", &e)))?;
    let encoded = zstd::bulk::decompress(&compressed, usize::try_from(row.bytes).unwrap_or(0))
        .map_err(|e| fail(format!("does not decompress: {e}")))?;
    if encoded.len() as i64 != row.bytes || xxhash_rust::xxh3::xxh3_64(&encoded) as i64 != row.checksum {
        return Err(fail("checksum mismatch".into()));
    }
    let (first, payloads) = decode(&encoded).map_err(fail)?;
    if first != row.first_position || first + payloads.len() as i64 - 1 != row.last_position {
        return Err(fail("holds other positions than its row says".into()));
    }
    Ok(Chunk {
        chunk_id: id,
        first,
        payloads,
        bytes: encoded.len() as u64,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunks_encode_and_decode() {
        let chunk = NewChunk {
            first: 7,
            payloads: vec![
                ("{\"a\":1}".into(), None),
                ("[]".into(), Some("{\"m\":\"é\"}".into())),
                (String::new(), Some(String::new())),
            ],
        };
        let encoded = encode(&chunk);
        let (first, payloads) = decode(&encoded).expect("decodes");
        assert_eq!(first, 7);
        assert_eq!(payloads, chunk.payloads);
        assert!(decode(&encoded[..encoded.len() - 1]).is_err());
    }
}
