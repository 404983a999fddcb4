//! `--verify`: parse everything that was only counted, and check the order of positions.
//!
//! Positions are global, dense and ordered (1, 2, 3… with no gap), so a reader of every event
//! from position `after` must see `after + 1, after + 2, …` exactly; with a filter it must see
//! them strictly increasing. The fast counters are cross-checked against the parsed events.

use serde::Deserialize;
use serde::de::IgnoredAny;
use serde_json::{Value, json};

/// Problems kept to show; the rest are only counted.
const SHOWN_MAX: usize = 10;

/// The positions one reader has seen, and what was wrong with them.
#[derive(Debug, Clone)]
pub struct Verifier {
    /// Every position must follow the previous one by exactly one (no filter).
    dense: bool,
    last: u64,
    pub checked: u64,
    pub problems: u64,
    pub shown: Vec<String>,
}

impl Verifier {
    /// A reader starting after position `after`.
    pub fn new(after: u64, dense: bool) -> Verifier {
        Verifier {
            dense,
            last: after,
            checked: 0,
            problems: 0,
            shown: Vec::new(),
        }
    }

    pub fn last_position(&self) -> u64 {
        self.last
    }

    pub fn problem(&mut self, text: impl FnOnce() -> String) {
        self.problems += 1;
        if self.shown.len() < SHOWN_MAX {
            self.shown.push(text());
        }
    }

    /// The next event's position.
    pub fn position(&mut self, position: u64) {
        self.checked += 1;
        let last = self.last;
        if self.dense && position != last + 1 {
            if position > last + 1 {
                self.problem(|| format!("gap: after position {last} came {position}"));
            } else {
                self.problem(|| format!("out of order: after position {last} came {position}"));
            }
        } else if !self.dense && position <= last {
            self.problem(|| format!("out of order: after position {last} came {position}"));
        }
        self.last = self.last.max(position);
    }

    /// A page of `GET /v1/events`, parsed in full; `counted` is what the fast scan found in it.
    /// Returns the page's `next_after_position` and `head_position`.
    pub fn events_page(&mut self, body: &[u8], counted: u64) -> Option<(u64, u64)> {
        #[derive(Deserialize)]
        struct Page {
            events: Vec<PageEvent>,
            next_after_position: u64,
            head_position: u64,
        }
        #[derive(Deserialize)]
        struct PageEvent {
            position: u64,
            #[serde(rename = "event_id")]
            _event_id: uuid::Uuid,
            #[serde(rename = "event_data")]
            _event_data: IgnoredAny,
        }
        let page: Page = match serde_json::from_slice(body) {
            Ok(page) => page,
            Err(e) => {
                self.problem(|| format!("a page is not valid JSON of the expected shape: {e}"));
                return None;
            }
        };
        if page.events.len() as u64 != counted {
            self.problem(|| {
                format!(
                    "the fast count found {counted} events in a page of {}",
                    page.events.len()
                )
            });
        }
        for event in &page.events {
            self.position(event.position);
        }
        if let Some(last) = page.events.last() {
            if self.dense && page.next_after_position != last.position {
                self.problem(|| {
                    format!(
                        "next_after_position {} is not the last position {} of its page",
                        page.next_after_position, last.position
                    )
                });
            } else if page.next_after_position < last.position {
                self.problem(|| {
                    format!(
                        "next_after_position {} is before the page's last position {}",
                        page.next_after_position, last.position
                    )
                });
            }
        }
        if page.head_position < page.next_after_position {
            self.problem(|| {
                format!(
                    "head_position {} is before next_after_position {}",
                    page.head_position, page.next_after_position
                )
            });
        }
        Some((page.next_after_position, page.head_position))
    }

    /// An `event` message of a subscription: its `id` must be the position in its data.
    pub fn sse_event(&mut self, id: Option<&str>, data: &str) {
        let value: Value = match serde_json::from_str(data) {
            Ok(value) => value,
            Err(e) => {
                self.problem(|| format!("an event's data is not JSON: {e}"));
                return;
            }
        };
        let Some(position) = value.get("position").and_then(Value::as_u64) else {
            self.problem(|| "an event has no position".to_owned());
            return;
        };
        if id.and_then(|id| id.parse::<u64>().ok()) != Some(position) {
            self.problem(|| format!("the id {id:?} of the event at position {position} is not its position"));
        }
        self.position(position);
    }

    pub fn merge(&mut self, other: &Verifier) {
        self.checked += other.checked;
        self.problems += other.problems;
        for text in &other.shown {
            if self.shown.len() < SHOWN_MAX {
                self.shown.push(text.clone());
            }
        }
    }

    pub fn to_json(&self) -> Value {
        json!({"checked_events": self.checked, "problems": self.problems, "first_problems": self.shown})
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ID: &str = "0192f3c4-5e6a-7b8c-9d0e-1f2a3b4c5d6e";

    fn page(positions: &[u64], next: u64, head: u64) -> Vec<u8> {
        let events: Vec<String> = positions
            .iter()
            .map(|p| format!(r#"{{"event_id":"{ID}","position":{p},"event_data":{{"a":[1]}}}}"#))
            .collect();
        format!(
            r#"{{"events":[{}],"next_after_position":{next},"head_position":{head}}}"#,
            events.join(",")
        )
        .into_bytes()
    }

    #[test]
    fn consecutive_pages_pass() {
        let mut verifier = Verifier::new(0, true);
        assert_eq!(verifier.events_page(&page(&[1, 2], 2, 3), 2), Some((2, 3)));
        assert_eq!(verifier.events_page(&page(&[3], 3, 3), 1), Some((3, 3)));
        assert_eq!(
            (verifier.checked, verifier.problems),
            (3, 0),
            "{:?}",
            verifier.shown
        );
    }

    #[test]
    fn a_gap_is_reported() {
        let mut verifier = Verifier::new(0, true);
        verifier.events_page(&page(&[1, 2], 2, 5), 2);
        verifier.events_page(&page(&[4, 5], 5, 5), 2);
        assert_eq!(verifier.problems, 1);
        assert_eq!(verifier.shown, ["gap: after position 2 came 4"]);
    }

    #[test]
    fn a_wrong_fast_count_and_a_bad_cursor_are_reported() {
        let mut verifier = Verifier::new(0, true);
        verifier.events_page(&page(&[1, 2], 1, 2), 3);
        assert_eq!(verifier.problems, 2, "{:?}", verifier.shown);
    }

    #[test]
    fn filtered_reads_need_only_increasing_positions() {
        let mut verifier = Verifier::new(0, false);
        verifier.events_page(&page(&[2, 7], 9, 9), 2);
        assert_eq!(verifier.problems, 0, "{:?}", verifier.shown);
        verifier.events_page(&page(&[7], 9, 9), 1);
        assert_eq!(verifier.shown, ["out of order: after position 7 came 7"]);
    }

    #[test]
    fn subscription_ids_must_be_positions() {
        let mut verifier = Verifier::new(0, true);
        verifier.sse_event(Some("1"), r#"{"position":1}"#);
        verifier.sse_event(Some("3"), r#"{"position":2}"#);
        verifier.sse_event(Some("4"), r#"{"position":4}"#);
        assert_eq!(verifier.problems, 2, "{:?}", verifier.shown);
        assert_eq!(verifier.last_position(), 4);
    }
}
