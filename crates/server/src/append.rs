//! The write endpoints: `POST /v1/aggregates/{aggregate_id}/events` (one aggregate) and
//! `POST /v1/events` (one atomic commit across aggregates).
//!
//! Both hand a [`Commit`] to the store, which validates it (`Commit::prepare`) before it looks
//! anything up; the status is 201 for a new write and 200 for an idempotent retry.
//! Both need the writer role (checked before the body is read) and aggregates within the
//! token's prefixes; a limited token's `duplicate_event_id` does not say where the id is held
//! (`Principal::conceal`).

use axum::extract::{FromRequest, RawQuery, Request, State};
use axum::http::StatusCode;
use axum::response::Response;
use factstore_core::{AppendedEvent, Commit, CommitOutcome, ExpectedVersion, NewEvent, StoreError};
use serde::{Deserialize, Serialize};

use crate::AppState;
use crate::auth::Writer;
use crate::error::ApiError;
use crate::extract::{AggregateIdPath, JsonBody, Params};
use crate::metrics::CommitSize;
use crate::render;

/// The body of an append to one aggregate (its id is in the path).
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AppendBody {
    #[serde(default)]
    pub expected_version: ExpectedVersion,
    /// 1 to 1000 events (by default), written at consecutive versions and positions.
    #[schema(min_items = 1)]
    pub events: Vec<NewEvent>,
}

/// The answer to an append to one aggregate.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub(crate) struct AppendResponse<'a> {
    /// The aggregate's version after its last event of this append.
    version: u64,
    /// The position of the last event of this append.
    position: u64,
    events: &'a [AppendedEvent],
}

fn status_of(outcome: &CommitOutcome) -> StatusCode {
    if outcome.created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    }
}

/// `POST /v1/aggregates/{aggregate_id}/events`
pub async fn append_to_aggregate(
    State(state): State<AppState>,
    Writer(principal): Writer,
    AggregateIdPath(aggregate_id): AggregateIdPath,
    RawQuery(query): RawQuery,
    request: Request,
) -> Result<Response, ApiError> {
    Params::parse(query.as_deref(), &[])?;
    // Before the body is read: a token that may not write here learns nothing from it.
    principal.check_aggregate(&aggregate_id)?;
    let JsonBody(body) = JsonBody::<AppendBody>::from_request(request, &state).await?;
    let commit = Commit::single(&aggregate_id, body.expected_version, body.events);
    let size = CommitSize::of(&commit);
    let outcome = state
        .store
        .commit(commit)
        .await
        .map_err(|e| principal.conceal(e))?;
    size.record(&outcome);
    let Some(append) = outcome.appends.first() else {
        return Err(StoreError::Internal("a commit of one append answered with no append".to_owned()).into());
    };
    // The shape of `AppendResponse`, written by hand (see `render::append_outcome`).
    Ok(render::json_bytes(
        status_of(&outcome),
        render::append_outcome(append.version, outcome.position, &append.events),
    ))
}

/// `POST /v1/events`
pub async fn commit(
    State(state): State<AppState>,
    Writer(principal): Writer,
    RawQuery(query): RawQuery,
    JsonBody(commit): JsonBody<Commit>,
) -> Result<Response, ApiError> {
    Params::parse(query.as_deref(), &[])?;
    principal.check_commit(&commit)?;
    let size = CommitSize::of(&commit);
    let outcome = state
        .store
        .commit(commit)
        .await
        .map_err(|e| principal.conceal(e))?;
    size.record(&outcome);
    render::json(status_of(&outcome), &outcome)
}

#[cfg(test)]
mod tests {
    use factstore_core::{AppendedEvent, Timestamp};
    use uuid::Uuid;

    use super::AppendResponse;
    use crate::render;

    #[test]
    fn the_hand_written_append_answer_is_what_serde_writes() {
        let at = |micros| Timestamp::from_micros(micros);
        let events: Vec<AppendedEvent> = [(1_700_000_000_000_001, 7), (1_700_000_000_000_001, 8), (-5, 9)]
            .into_iter()
            .map(|(micros, position)| AppendedEvent {
                event_id: Uuid::now_v7(),
                version: position - 4,
                position,
                recorded_at: at(micros),
            })
            .collect();
        for events in [&events[..], &events[..1], &[][..]] {
            let by_serde = serde_json::to_vec(&AppendResponse {
                version: 5,
                position: 9,
                events,
            })
            .expect("serialises");
            assert_eq!(
                String::from_utf8_lossy(&render::append_outcome(5, 9, events)),
                String::from_utf8_lossy(&by_serde)
            );
        }
    }
}
