//! SQL for reads: filters to `WHERE` clauses with typed parameters, rows to events.

use factstore_core::{Event, EventFields, EventFilter, Limits, Timestamp};
use postgres_types::{ToSql, Type};
use tokio_postgres::Row;
use uuid::Uuid;

use crate::PgError;
use crate::archive::Payloads;
use crate::types::{JsonText, Ts};

/// The columns of an event, in the order [`event_from_row`] reads them.
pub const EVENT_COLUMNS: &str = "position, aggregate_version, event_id, created_at, recorded_at, \
    event_version, aggregate_id, aggregate_type, event_type, created_by, correlation_id, causation_id, \
    event_data, metadata, archived_chunk";

/// A query under construction: its text and its parameters with their types, for
/// `query_typed` (one round trip: no separate prepare).
#[derive(Default)]
pub struct Query {
    pub text: String,
    params: Vec<(Box<dyn ToSql + Sync + Send>, Type)>,
}

impl Query {
    pub fn new(text: &str) -> Query {
        Query {
            text: text.to_owned(),
            params: Vec::new(),
        }
    }

    /// Adds a parameter and returns its placeholder.
    pub fn param(&mut self, value: impl ToSql + Sync + Send + 'static, ty: Type) -> String {
        self.params.push((Box::new(value), ty));
        format!("${}", self.params.len())
    }

    /// Appends ` AND <column> <op> $n`.
    pub fn and(&mut self, column: &str, op: &str, value: impl ToSql + Sync + Send + 'static, ty: Type) {
        let p = self.param(value, ty);
        self.text.push_str(&format!(" AND {column} {op} {p}"));
    }

    pub fn params(&self) -> Vec<(&(dyn ToSql + Sync), Type)> {
        self.params
            .iter()
            .map(|(value, ty)| (value.as_ref() as &(dyn ToSql + Sync), ty.clone()))
            .collect()
    }

    /// Appends the conditions of `filter`.
    pub fn filter(&mut self, filter: &EventFilter) {
        if !filter.event_types.is_empty() {
            let p = self.param(filter.event_types.clone(), Type::TEXT_ARRAY);
            self.text.push_str(&format!(" AND event_type = ANY({p})"));
        }
        for (column, value) in [
            ("aggregate_type", &filter.aggregate_type),
            ("aggregate_id", &filter.aggregate_id),
            ("correlation_id", &filter.correlation_id),
            ("causation_id", &filter.causation_id),
            ("created_by", &filter.created_by),
        ] {
            if let Some(value) = value {
                self.and(column, "=", value.clone(), Type::TEXT);
            }
        }
        if let Some(prefix) = &filter.aggregate_id_prefix {
            // The column's "C" collation lets the planner turn a constant prefix pattern into
            // a range on the (aggregate_id, aggregate_version) index.
            self.and("aggregate_id", "LIKE", like_prefix(prefix), Type::TEXT);
        }
    }

    /// Appends the `created_at` and `recorded_at` bounds.
    pub fn time_bounds(&mut self, from: Option<Timestamp>, to: Option<Timestamp>, as_of: Option<Timestamp>) {
        if let Some(from) = from {
            self.and("created_at", ">=", Ts(from), Type::TIMESTAMPTZ);
        }
        if let Some(to) = to {
            self.and("created_at", "<=", Ts(to), Type::TIMESTAMPTZ);
        }
        if let Some(as_of) = as_of {
            self.and("recorded_at", "<=", Ts(as_of), Type::TIMESTAMPTZ);
        }
    }
}

/// A `LIKE` pattern for "starts with `prefix`" (backslash is LIKE's escape character).
pub fn like_prefix(prefix: &str) -> String {
    let mut pattern = String::with_capacity(prefix.len() + 2);
    for c in prefix.chars() {
        if matches!(c, '\\' | '%' | '_') {
            pattern.push('\\');
        }
        pattern.push(c);
    }
    pattern.push('%');
    pattern
}

/// A position or version from the API as a `bigint` (they never reach 2^63 in a store; a
/// larger bound means "no bound").
pub fn big(value: u64) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
}

fn unsigned(value: i64, what: &str) -> Result<u64, PgError> {
    u64::try_from(value).map_err(|_| PgError::Corrupt(format!("negative {what} {value}")))
}

/// Decodes a row of [`EVENT_COLUMNS`]. Lengths are checked against the ceilings of the binary
/// event form, so that a row written by hand cannot make the encoder panic.
/// Archived payloads come from `payloads` ([`crate::archive::Archive::payloads`] of the rows).
pub fn event_from_row<'a>(row: &'a Row, payloads: &'a Payloads) -> Result<Event, PgError> {
    event_from_row_at(row, 0, payloads)
}

/// Decodes the [`EVENT_COLUMNS`] that start at column `at` of a row.
pub fn event_from_row_at<'a>(row: &'a Row, at: usize, payloads: &'a Payloads) -> Result<Event, PgError> {
    let position: i64 = row.try_get(at)?;
    let version: i64 = row.try_get(at + 1)?;
    let event_id: Uuid = row.try_get(at + 2)?;
    let created_at: Ts = row.try_get(at + 3)?;
    let recorded_at: Ts = row.try_get(at + 4)?;
    let event_version: i32 = row.try_get(at + 5)?;
    let aggregate_id: &str = row.try_get(at + 6)?;
    let aggregate_type: &str = row.try_get(at + 7)?;
    let event_type: &str = row.try_get(at + 8)?;
    let created_by: Option<&str> = row.try_get(at + 9)?;
    let correlation_id: Option<&str> = row.try_get(at + 10)?;
    let causation_id: Option<&str> = row.try_get(at + 11)?;
    let event_data: Option<JsonText<'_>> = row.try_get(at + 12)?;
    let metadata: Option<JsonText<'_>> = row.try_get(at + 13)?;
    let archived_chunk: Option<i64> = row.try_get(at + 14)?;
    let (event_data, metadata) = match (archived_chunk, event_data) {
        (None, Some(data)) => (data.0, metadata.map(|m| m.0)),
        (Some(chunk), _) => payloads.get(chunk, position)?,
        (None, None) => {
            return Err(PgError::Corrupt(format!(
                "event at position {position} has no data"
            )));
        }
    };
    let ceiling = &Limits::CEILING;
    let too_long = aggregate_id.len() > ceiling.aggregate_id_bytes_max
        || aggregate_type.len() > ceiling.aggregate_type_bytes_max
        || event_type.len() > ceiling.event_type_bytes_max
        || created_by.is_some_and(|s| s.len() > ceiling.created_by_bytes_max)
        || correlation_id.is_some_and(|s| s.len() > ceiling.link_id_bytes_max)
        || causation_id.is_some_and(|s| s.len() > ceiling.link_id_bytes_max)
        || u32::try_from(event_data.len()).is_err()
        || metadata.is_some_and(|m| u32::try_from(m.len()).is_err());
    if too_long || event_version < 1 {
        return Err(PgError::Corrupt(format!(
            "event at position {position} has a field out of range"
        )));
    }
    Ok(Event::from_fields(&EventFields {
        position: unsigned(position, "position")?,
        version: unsigned(version, "version")?,
        event_id,
        created_at: created_at.0,
        recorded_at: recorded_at.0,
        event_version: event_version as u32,
        aggregate_id,
        aggregate_type,
        event_type,
        created_by,
        correlation_id,
        causation_id,
        event_data,
        metadata,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefix_patterns_escape_like_wildcards() {
        assert_eq!(like_prefix("acc:"), "acc:%");
        assert_eq!(like_prefix("a_b%c\\"), "a\\_b\\%c\\\\%");
    }

    #[test]
    fn filters_become_parameterised_conditions() {
        let mut q = Query::new("SELECT 1 FROM events WHERE true");
        q.filter(&EventFilter {
            event_types: vec!["A".into(), "B".into()],
            aggregate_id_prefix: Some("x_".into()),
            created_by: Some("u".into()),
            ..EventFilter::default()
        });
        assert_eq!(
            q.text,
            "SELECT 1 FROM events WHERE true AND event_type = ANY($1) AND created_by = $2 \
             AND aggregate_id LIKE $3"
        );
        assert_eq!(q.params().len(), 3);
    }
}
