//! What one client can make the server hold: response bodies cut into bounded chunks, and a
//! bounded number of live subscriptions.
//!
//! # Why
//! A client that sends a request and never reads the answer is free to a hostile caller and
//! costs the server whatever it has rendered for it. Every long body (a subscription, a page
//! of `GET /v1/events`, a poll of a persistent subscription) is therefore a pull stream of
//! chunks of about [`CHUNK_BYTES`], rendered only when hyper asks for the next one, and hyper's
//! own write buffer stops asking once [`WRITE_BUFFER_BYTES`] are waiting for the socket
//! (`serve.rs` sets it). A client that never reads thus holds at most one chunk in the
//! handler's hands plus one write buffer in hyper's, about 80 KiB, whatever it asked for; the
//! kernel's socket buffers come on top, outside the process's memory.
//!
//! Why 64 KiB: a catch-up then costs 16 writes per MiB, which is nothing next to rendering
//! the events, while 1,000 clients that stop reading hold about 80 MiB of chunks. A single event larger
//! than a chunk is still sent whole, alone in its chunk: an event is never split.
//!
//! # Accounting
//! Every chunk leaves as [`Bytes`] that count themselves in [`BodyBytes`] until hyper drops
//! them (written, or the connection closed): the exact bytes of responses rendered and not yet
//! handed to the kernel, exported as `factstore_response_bytes_pending`.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use bytes::Bytes;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::error::ApiError;

/// The size at which a long body is cut into its next chunk.
pub const CHUNK_BYTES: usize = 64 << 10;

/// Room kept in a chunk for what follows its events (a page's closing bytes, a subscription's
/// `caught_up`), so that its buffer never grows past [`CHUNK_BYTES`]: a `Vec` that overflows
/// doubles, and the chunk keeps the whole allocation.
const CHUNK_SLACK_BYTES: usize = 256;

/// hyper's write buffer per connection: it polls a body for more only while less than this is
/// waiting to be written. Also the largest request head it reads (hyper uses one bound for
/// both): 16 KiB, twice the 8 KiB most servers accept for a request line and its headers.
pub const WRITE_BUFFER_BYTES: usize = 16 << 10;

/// The default of `--max-subscribers`.
pub const SUBSCRIBERS_MAX_DEFAULT: usize = 1000;

/// Seconds a refused subscriber is told to wait (`Retry-After`).
pub const RETRY_AFTER_SECONDS: u32 = 5;

/// Chunks' worth of events one long read takes from the store at once when the shared
/// read-ahead allows: a store read costs about as much as rendering a few hundred events, so
/// reading one chunk's worth at a time would spend most of a page in reads.
pub const READ_AHEAD_CHUNKS: usize = 16;

/// Bytes of events that all long reads together may hold read and not yet rendered, beyond
/// the one chunk's worth each may always hold. A reader that keeps up takes
/// [`READ_AHEAD_CHUNKS`] chunks' worth from here per store read; readers that stop reading
/// can hold no more than this between them, and once it is taken every read goes a chunk at a
/// time.
pub const READ_AHEAD_BYTES: usize = 32 << 20;

/// The bounds of one app on what its clients hold.
#[derive(Debug)]
pub struct Budget {
    /// Places for live subscriptions (`GET /v1/subscribe`).
    pub subscribers: Slots,
    /// The response chunks rendered and not yet written.
    pub bodies: Arc<BodyBytes>,
    /// Bytes of events read ahead by long reads ([`READ_AHEAD_BYTES`]).
    pub read_ahead: Arc<Semaphore>,
}

impl Budget {
    pub fn new(subscribers_max: usize) -> Budget {
        Budget {
            subscribers: Slots::new(subscribers_max),
            bodies: Arc::new(BodyBytes::default()),
            read_ahead: Arc::new(Semaphore::new(READ_AHEAD_BYTES)),
        }
    }
}

/// Bytes of response chunks rendered and not yet written to a socket, for one app.
#[derive(Debug, Default)]
pub struct BodyBytes {
    pending: AtomicUsize,
}

impl BodyBytes {
    /// The bytes rendered and not yet written (or dropped with their connection).
    pub fn pending(&self) -> usize {
        self.pending.load(Ordering::Relaxed)
    }

    /// `out` as a chunk of a body, counted here and in the gauge until it is dropped.
    pub fn chunk(self: &Arc<BodyBytes>, out: Vec<u8>) -> Bytes {
        let len = out.len();
        self.pending.fetch_add(len, Ordering::Relaxed);
        crate::metrics::body_bytes_add(len);
        Bytes::from_owner(Counted {
            bytes: out,
            owner: self.clone(),
        })
    }
}

/// A chunk's bytes and the counter they are owed to.
struct Counted {
    bytes: Vec<u8>,
    owner: Arc<BodyBytes>,
}

impl AsRef<[u8]> for Counted {
    fn as_ref(&self) -> &[u8] {
        &self.bytes
    }
}

impl Drop for Counted {
    fn drop(&mut self) {
        self.owner.pending.fetch_sub(self.bytes.len(), Ordering::Relaxed);
        crate::metrics::body_bytes_sub(self.bytes.len());
    }
}

/// The live subscriptions a server allows at once (`--max-subscribers`).
#[derive(Debug)]
pub struct Slots {
    semaphore: Arc<Semaphore>,
    max: usize,
}

/// One live subscription's place; freed when dropped (the stream ends or its client leaves).
#[derive(Debug)]
pub struct Slot {
    _permit: OwnedSemaphorePermit,
}

impl Slots {
    pub fn new(max: usize) -> Slots {
        Slots {
            semaphore: Arc::new(Semaphore::new(max.min(Semaphore::MAX_PERMITS))),
            max,
        }
    }

    /// A place for one more subscription, or 503 with `Retry-After` when all are taken.
    pub fn take(&self) -> Result<Slot, ApiError> {
        self.semaphore
            .clone()
            .try_acquire_owned()
            .map(|permit| Slot { _permit: permit })
            .map_err(|_| {
                ApiError::Overloaded(format!(
                    "the server already serves its most live subscriptions ({}); retry later",
                    self.max
                ))
            })
    }

    /// Places free now.
    pub fn available(&self) -> usize {
        self.semaphore.available_permits()
    }
}

/// Whether `next` more bytes fit in a chunk that holds `len`: always the first thing, else as
/// long as the chunk stays within [`CHUNK_BYTES`] less the room for its closing bytes.
pub fn fits(len: usize, next: usize) -> bool {
    len == 0 || len + next + CHUNK_SLACK_BYTES <= CHUNK_BYTES
}

/// How many events to read next so that their JSON fills about one chunk, from the bytes and
/// events rendered so far (`first` before anything is known). At least 1, at most `max`.
pub fn batch_for(bytes_seen: usize, events_seen: usize, first: usize, max: usize) -> usize {
    let batch = match bytes_seen.checked_div(events_seen) {
        Some(average) => CHUNK_BYTES / average.max(1),
        None => first,
    };
    batch.clamp(1, max.max(1))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunks_count_until_dropped() {
        let bytes = Arc::new(BodyBytes::default());
        let a = bytes.chunk(vec![1; 100]);
        let b = bytes.chunk(vec![2; 50]);
        assert_eq!(bytes.pending(), 150);
        assert_eq!(&a[..3], &[1, 1, 1]);
        let slice = a.slice(10..20);
        drop(a);
        assert_eq!(bytes.pending(), 150, "a slice keeps its chunk");
        drop(slice);
        drop(b);
        assert_eq!(bytes.pending(), 0);
    }

    #[test]
    fn slots_refuse_beyond_the_maximum_and_free_on_drop() {
        let slots = Slots::new(2);
        let one = slots.take().expect("first");
        let _two = slots.take().expect("second");
        assert!(matches!(slots.take(), Err(ApiError::Overloaded(_))));
        drop(one);
        assert!(slots.take().is_ok());
    }

    #[test]
    fn batches_aim_at_one_chunk() {
        assert_eq!(batch_for(0, 0, 16, 1000), 16);
        assert_eq!(batch_for(1000 * 1024, 1000, 16, 1000), 64);
        assert_eq!(batch_for(10 << 20, 5, 16, 1000), 1, "huge events go one by one");
        assert_eq!(
            batch_for(100, 100, 16, 1000),
            1000,
            "tiny events up to the maximum"
        );
        assert_eq!(batch_for(100, 100, 16, 7), 7);
    }
}
