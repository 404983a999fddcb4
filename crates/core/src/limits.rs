//! Limits on what a client may send. Every one has the default of the API contract and may be
//! changed by the operator; validation names the limit that was exceeded.

/// The size limits of events and requests, in bytes of UTF-8 unless said otherwise.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    /// `aggregate_id`: 1 to this many bytes, no control characters. At most 65,535.
    pub aggregate_id_bytes_max: usize,
    /// `aggregate_type`: 1 to this many bytes. At most 255.
    pub aggregate_type_bytes_max: usize,
    /// `event_type`: 1 to this many bytes. At most 255.
    pub event_type_bytes_max: usize,
    /// `created_by`: at most this many bytes. At most 255.
    pub created_by_bytes_max: usize,
    /// `metadata.correlation_id` and `metadata.causation_id`: at most this many bytes. At most 255.
    pub link_id_bytes_max: usize,
    /// `event_data` plus `metadata` of one event.
    pub event_payload_bytes_max: usize,
    /// Events in one request.
    pub events_per_request_max: usize,
    /// The body of one request.
    pub request_bytes_max: usize,
    /// Events in one page of a read.
    pub page_events_max: usize,
}

impl Limits {
    /// The hard ceilings of the binary event form: configurable limits may not exceed them.
    pub const CEILING: Limits = Limits {
        aggregate_id_bytes_max: u16::MAX as usize,
        aggregate_type_bytes_max: u8::MAX as usize,
        event_type_bytes_max: u8::MAX as usize,
        created_by_bytes_max: u8::MAX as usize,
        link_id_bytes_max: u8::MAX as usize,
        event_payload_bytes_max: 64 << 20,
        events_per_request_max: 100_000,
        request_bytes_max: 256 << 20,
        page_events_max: 100_000,
    };

    /// Checks that every limit is positive and within [`Limits::CEILING`].
    pub fn check(&self) -> Result<(), String> {
        let pairs = [
            (
                "aggregate_id_bytes_max",
                self.aggregate_id_bytes_max,
                Self::CEILING.aggregate_id_bytes_max,
            ),
            (
                "aggregate_type_bytes_max",
                self.aggregate_type_bytes_max,
                Self::CEILING.aggregate_type_bytes_max,
            ),
            (
                "event_type_bytes_max",
                self.event_type_bytes_max,
                Self::CEILING.event_type_bytes_max,
            ),
            (
                "created_by_bytes_max",
                self.created_by_bytes_max,
                Self::CEILING.created_by_bytes_max,
            ),
            (
                "link_id_bytes_max",
                self.link_id_bytes_max,
                Self::CEILING.link_id_bytes_max,
            ),
            (
                "event_payload_bytes_max",
                self.event_payload_bytes_max,
                Self::CEILING.event_payload_bytes_max,
            ),
            (
                "events_per_request_max",
                self.events_per_request_max,
                Self::CEILING.events_per_request_max,
            ),
            (
                "request_bytes_max",
                self.request_bytes_max,
                Self::CEILING.request_bytes_max,
            ),
            (
                "page_events_max",
                self.page_events_max,
                Self::CEILING.page_events_max,
            ),
        ];
        for (name, value, ceiling) in pairs {
            if value == 0 || value > ceiling {
                return Err(format!(
                    "limit {name} must be between 1 and {ceiling}, not {value}"
                ));
            }
        }
        Ok(())
    }
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            aggregate_id_bytes_max: 255,
            aggregate_type_bytes_max: 50,
            event_type_bytes_max: 100,
            created_by_bytes_max: 255,
            link_id_bytes_max: 255,
            event_payload_bytes_max: 1 << 20,
            events_per_request_max: 1000,
            request_bytes_max: 16 << 20,
            page_events_max: 10_000,
        }
    }
}
