//! Counting events in response bodies without parsing them.
//!
//! A page of 10,000 events is about 4 MB of JSON; parsing it would cost the generator more CPU
//! than the server spends writing it. The server writes each event as `{"event_id":"…` (no
//! white space), so counting that needle with `memchr::memmem` counts events, and the page's
//! cursor is in the last few bytes. Bodies arrive in chunks of any size, so the scanners here
//! carry a needle's length of bytes across chunk boundaries instead of copying the body.
//!
//! The count is exact for the bench's own events; it over-counts only if an event's data or
//! metadata contains the text `{"event_id":"`. `--verify` parses everything and cross-checks.

use memchr::memmem::Finder;

/// Where each event of a page begins.
pub const EVENT_NEEDLE: &[u8] = br#"{"event_id":""#;
/// The first line of a server-sent event carrying an event.
pub const SSE_EVENT_NEEDLE: &[u8] = b"event: event\n";
/// The first line of the message sent once history has been delivered.
pub const SSE_CAUGHT_UP_NEEDLE: &[u8] = b"event: caught_up\n";

/// The longest needle: bounds the bytes carried across a chunk boundary.
const CARRY_MAX: usize = 32;

/// Finds one needle across a stream of chunks.
#[derive(Debug)]
pub struct StreamNeedle {
    finder: Finder<'static>,
    /// The last `needle.len() - 1` bytes seen (fewer at the start).
    carry: Vec<u8>,
}

impl StreamNeedle {
    pub fn new(needle: &'static [u8]) -> StreamNeedle {
        assert!(
            !needle.is_empty() && needle.len() <= CARRY_MAX,
            "needles are short and not empty"
        );
        StreamNeedle {
            finder: Finder::new(needle),
            carry: Vec::with_capacity(needle.len()),
        }
    }

    fn keep(&self) -> usize {
        self.finder.needle().len() - 1
    }

    /// The carried bytes followed by the start of `chunk`: exactly the window in which an
    /// occurrence that straddles the boundary lies (neither part alone can hold a needle).
    fn joint<'a>(&self, chunk: &[u8], buffer: &'a mut [u8; 2 * CARRY_MAX]) -> &'a [u8] {
        let head = &chunk[..chunk.len().min(self.keep())];
        let len = self.carry.len() + head.len();
        buffer[..self.carry.len()].copy_from_slice(&self.carry);
        buffer[self.carry.len()..len].copy_from_slice(head);
        &buffer[..len]
    }

    fn advance(&mut self, chunk: &[u8]) {
        let keep = self.keep();
        if chunk.len() >= keep {
            self.carry.clear();
            self.carry.extend_from_slice(&chunk[chunk.len() - keep..]);
        } else {
            self.carry.extend_from_slice(chunk);
            let excess = self.carry.len().saturating_sub(keep);
            self.carry.drain(..excess);
        }
    }

    /// Occurrences that end in `chunk`.
    pub fn count(&mut self, chunk: &[u8]) -> u64 {
        let mut buffer = [0u8; 2 * CARRY_MAX];
        let straddling = self.finder.find_iter(self.joint(chunk, &mut buffer)).count();
        let inside = self.finder.find_iter(chunk).count();
        self.advance(chunk);
        (straddling + inside) as u64
    }

    /// The offset in `chunk` just past the first occurrence that ends in it. The carry is not
    /// advanced: the caller stops searching for this needle once it is found.
    pub fn find_end(&mut self, chunk: &[u8]) -> Option<usize> {
        let mut buffer = [0u8; 2 * CARRY_MAX];
        let carried = self.carry.len();
        let needle = self.finder.needle().len();
        if let Some(at) = self.finder.find(self.joint(chunk, &mut buffer)) {
            return Some(at + needle - carried);
        }
        if let Some(at) = self.finder.find(chunk) {
            return Some(at + needle);
        }
        self.advance(chunk);
        None
    }
}

/// Counts the events of a page (of `GET /v1/events` or of an aggregate) and keeps its last
/// bytes, where the cursor is.
#[derive(Debug)]
pub struct PageScan {
    events: StreamNeedle,
    tail: Vec<u8>,
    pub count: u64,
    pub bytes: u64,
}

/// Bytes kept from the end of a page: the cursor fields fit easily.
const TAIL_MAX: usize = 160;

impl Default for PageScan {
    fn default() -> PageScan {
        PageScan::new()
    }
}

impl PageScan {
    pub fn new() -> PageScan {
        PageScan {
            events: StreamNeedle::new(EVENT_NEEDLE),
            tail: Vec::with_capacity(2 * TAIL_MAX),
            count: 0,
            bytes: 0,
        }
    }

    pub fn feed(&mut self, chunk: &[u8]) {
        self.count += self.events.count(chunk);
        self.bytes += chunk.len() as u64;
        if chunk.len() >= TAIL_MAX {
            self.tail.clear();
            self.tail.extend_from_slice(&chunk[chunk.len() - TAIL_MAX..]);
        } else {
            self.tail.extend_from_slice(chunk);
            let excess = self.tail.len().saturating_sub(TAIL_MAX);
            self.tail.drain(..excess);
        }
    }

    /// The number after `"<field>":` in the page's last bytes; `Some(None)` for `null`,
    /// `None` when the field is not there.
    pub fn tail_field(&self, field: &str) -> Option<Option<u64>> {
        let key = format!("\"{field}\":");
        let at = memchr::memmem::rfind(&self.tail, key.as_bytes())? + key.len();
        let rest = &self.tail[at..];
        if rest.starts_with(b"null") {
            return Some(None);
        }
        let digits = rest.iter().take_while(|b| b.is_ascii_digit()).count();
        std::str::from_utf8(&rest[..digits]).ok()?.parse().ok().map(Some)
    }
}

/// Follows a subscription's catch-up: counts event messages until `caught_up`, then reads the
/// position that message carries.
#[derive(Debug)]
pub struct CatchUpScan {
    events: StreamNeedle,
    caught_up: StreamNeedle,
    /// The bytes after `event: caught_up\n`, once it has been seen.
    after: Option<Vec<u8>>,
    pub count: u64,
    pub bytes: u64,
}

/// What a subscription's catch-up looks like so far.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CatchUp {
    /// History is still arriving.
    Pending,
    /// `caught_up` arrived, with the position of its `data` (`None` if it had none readable).
    Done(Option<u64>),
}

impl Default for CatchUpScan {
    fn default() -> CatchUpScan {
        CatchUpScan::new()
    }
}

/// Bytes read after `caught_up` while looking for the end of its message.
const CAUGHT_UP_MESSAGE_MAX: usize = 4096;

impl CatchUpScan {
    pub fn new() -> CatchUpScan {
        CatchUpScan {
            events: StreamNeedle::new(SSE_EVENT_NEEDLE),
            caught_up: StreamNeedle::new(SSE_CAUGHT_UP_NEEDLE),
            after: None,
            count: 0,
            bytes: 0,
        }
    }

    pub fn feed(&mut self, chunk: &[u8]) -> CatchUp {
        self.bytes += chunk.len() as u64;
        let after = match &mut self.after {
            Some(after) => {
                after.extend_from_slice(chunk);
                after
            }
            None => match self.caught_up.find_end(chunk) {
                None => {
                    self.count += self.events.count(chunk);
                    return CatchUp::Pending;
                }
                Some(end) => {
                    // Event messages before `caught_up` end before it begins; the caught-up line
                    // itself never matches the event needle.
                    self.count += self.events.count(&chunk[..end]);
                    self.after.insert(chunk[end..].to_vec())
                }
            },
        };
        match memchr::memmem::find(after, b"\n\n") {
            Some(end) => CatchUp::Done(caught_up_position(&after[..end])),
            None if after.len() > CAUGHT_UP_MESSAGE_MAX => CatchUp::Done(None),
            None => CatchUp::Pending,
        }
    }
}

/// The position in the `data: {"position":p}` line of the rest of a `caught_up` message.
fn caught_up_position(rest: &[u8]) -> Option<u64> {
    let text = std::str::from_utf8(rest).ok()?;
    let data = text.lines().find_map(|line| line.strip_prefix("data:"))?;
    let value: serde_json::Value = serde_json::from_str(data.trim()).ok()?;
    value.get("position")?.as_u64()
}

/// One server-sent event, fully parsed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SseMessage {
    /// The `event:` field (`message` when absent, as the SSE standard says).
    pub event: String,
    pub id: Option<String>,
    pub data: String,
}

/// A complete server-sent events parser, for `--verify` and for the live subscriber (which
/// needs every event's position and time); slower than the counting scan.
#[derive(Debug, Default)]
pub struct SseParser {
    buffer: Vec<u8>,
    /// Where the next search for a line end starts (earlier bytes hold no complete line).
    scanned: usize,
    current: SseMessage,
    has_fields: bool,
}

impl SseParser {
    pub fn feed(&mut self, chunk: &[u8]) {
        self.buffer.extend_from_slice(chunk);
    }

    /// The next complete message, if the fed bytes hold one. Comments (`: keep-alive`) are
    /// skipped.
    pub fn next_message(&mut self) -> Result<Option<SseMessage>, String> {
        let mut start = 0;
        let result = loop {
            let Some(newline) = memchr::memchr(b'\n', &self.buffer[start.max(self.scanned)..]) else {
                self.scanned = self.buffer.len();
                break Ok(None);
            };
            let end = start.max(self.scanned) + newline;
            let raw = &self.buffer[start..end];
            let raw = raw.strip_suffix(b"\r").unwrap_or(raw);
            let line = match std::str::from_utf8(raw) {
                Ok(line) => line.to_owned(),
                Err(_) => break Err("a server-sent event line is not UTF-8".to_owned()),
            };
            start = end + 1;
            self.scanned = start;
            if line.is_empty() {
                if self.has_fields {
                    self.has_fields = false;
                    let mut message = std::mem::take(&mut self.current);
                    if message.event.is_empty() {
                        message.event = "message".to_owned();
                    }
                    break Ok(Some(message));
                }
                continue;
            }
            if line.starts_with(':') {
                continue;
            }
            let (field, value) = match line.split_once(':') {
                Some((field, value)) => (
                    field.to_owned(),
                    value.strip_prefix(' ').unwrap_or(value).to_owned(),
                ),
                None => (line.clone(), String::new()),
            };
            self.has_fields = true;
            match field.as_str() {
                "event" => self.current.event = value,
                "id" => self.current.id = Some(value),
                "data" => {
                    if !self.current.data.is_empty() {
                        self.current.data.push('\n');
                    }
                    self.current.data.push_str(&value);
                }
                _ => {}
            }
        };
        self.buffer.drain(..start);
        self.scanned -= start;
        result
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Feeds `body` split at every pair of cut points, so every boundary case is met.
    fn splits(body: &[u8]) -> Vec<Vec<&[u8]>> {
        let mut all = vec![vec![body]];
        for i in 0..=body.len() {
            for j in i..=body.len() {
                all.push(vec![&body[..i], &body[i..j], &body[j..]]);
            }
        }
        all
    }

    fn page(positions: &[u64], next: u64, head: u64) -> Vec<u8> {
        let events: Vec<String> = positions
            .iter()
            .map(|p| format!(r#"{{"event_id":"0192f3c4-5e6a-7b8c-9d0e-1f2a3b4c5d6e","position":{p},"event_data":{{}}}}"#))
            .collect();
        format!(
            r#"{{"events":[{}],"next_after_position":{next},"head_position":{head}}}"#,
            events.join(",")
        )
        .into_bytes()
    }

    #[test]
    fn page_scan_counts_events_across_any_chunking() {
        let body = page(&[5, 6, 7], 7, 9);
        for chunks in splits(&body) {
            let mut scan = PageScan::new();
            for chunk in &chunks {
                scan.feed(chunk);
            }
            assert_eq!(scan.count, 3, "chunks {chunks:?}");
            assert_eq!(scan.bytes, body.len() as u64);
            assert_eq!(scan.tail_field("next_after_position"), Some(Some(7)));
            assert_eq!(scan.tail_field("head_position"), Some(Some(9)));
        }
    }

    #[test]
    fn page_scan_reads_null_and_missing_cursors() {
        let mut scan = PageScan::new();
        scan.feed(br#"{"aggregate_id":"a","version":0,"events":[],"next_from_version":null}"#);
        assert_eq!(scan.count, 0);
        assert_eq!(scan.tail_field("next_from_version"), Some(None));
        assert_eq!(scan.tail_field("next_after_position"), None);
    }

    #[test]
    fn a_needle_is_found_where_it_straddles_chunks() {
        let mut needle = StreamNeedle::new(b"abc");
        assert_eq!(needle.find_end(b"xxa"), None);
        assert_eq!(needle.find_end(b"bcabc"), Some(2));
        let mut needle = StreamNeedle::new(b"abc");
        assert_eq!(needle.count(b"a"), 0);
        assert_eq!(needle.count(b"b"), 0);
        assert_eq!(needle.count(b"cabcab"), 2);
        assert_eq!(needle.count(b"c"), 1);
    }

    fn stream(positions: &[u64], caught_up: u64, live: &[u64]) -> Vec<u8> {
        let mut out = String::from(": keep-alive\n\n");
        for p in positions.iter() {
            out.push_str(&format!(
                "event: event\nid: {p}\ndata: {{\"event_id\":\"x\",\"position\":{p}}}\n\n"
            ));
        }
        out.push_str(&format!(
            "event: caught_up\nid: {caught_up}\ndata: {{\"position\":{caught_up}}}\n\n"
        ));
        for p in live {
            out.push_str(&format!("event: event\nid: {p}\ndata: {{\"position\":{p}}}\n\n"));
        }
        out.into_bytes()
    }

    #[test]
    fn catch_up_counts_only_history_across_any_chunking() {
        let body = stream(&[1, 2], 2, &[3]);
        for chunks in splits(&body) {
            let mut scan = CatchUpScan::new();
            let mut outcome = CatchUp::Pending;
            for chunk in &chunks {
                outcome = scan.feed(chunk);
                if outcome != CatchUp::Pending {
                    break;
                }
            }
            assert_eq!(outcome, CatchUp::Done(Some(2)), "chunks {chunks:?}");
            assert_eq!(scan.count, 2, "chunks {chunks:?}");
        }
    }

    #[test]
    fn catch_up_of_an_empty_store() {
        let mut scan = CatchUpScan::new();
        assert_eq!(scan.feed(&stream(&[], 0, &[])), CatchUp::Done(Some(0)));
        assert_eq!(scan.count, 0);
    }

    #[test]
    fn the_parser_reads_messages_across_any_chunking() {
        let body = stream(&[1, 2], 2, &[3]);
        for chunks in splits(&body) {
            let mut parser = SseParser::default();
            let mut messages = Vec::new();
            for chunk in &chunks {
                parser.feed(chunk);
                while let Some(message) = parser.next_message().expect("parse") {
                    messages.push(message);
                }
            }
            let summary: Vec<(&str, Option<&str>)> = messages
                .iter()
                .map(|m| (m.event.as_str(), m.id.as_deref()))
                .collect();
            assert_eq!(
                summary,
                [
                    ("event", Some("1")),
                    ("event", Some("2")),
                    ("caught_up", Some("2")),
                    ("event", Some("3"))
                ]
            );
            assert_eq!(messages[2].data, r#"{"position":2}"#);
        }
    }
}
