//! Reading requests: the JSON body, the ids in the path, the query parameters.
//!
//! axum's own extractors answer their failures in their own words and shapes (plain text,
//! lenient percent-decoding); these answer every failure as an [`ApiError`], so that a bad
//! request of any kind comes out as our JSON error with a message naming the problem.

use std::borrow::Cow;

use axum::body::Bytes;
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::request::Parts;
use axum::http::{StatusCode, header};
use factstore_core::append::validate_aggregate_id;
use factstore_core::time::Bound;
use factstore_core::{Direction, POSITION_MAX, Timestamp};
use serde::de::DeserializeOwned;
use uuid::Uuid;

use crate::AppState;
use crate::error::ApiError;
use factstore_core::json::PARSER_DEPTH_MAX;

/// A JSON body deserialised with serde_json; every failure is a JSON `ApiError`.
///
/// A body with no `Content-Type` or with `application/json` (any parameters, such as
/// `charset=utf-8`) is read; any other media type is 415 `unsupported_media_type`, because a
/// body declared as something else is most likely not what the client meant to send.
/// A body over the request limit is 413 `payload_too_large`.
#[derive(Debug)]
pub struct JsonBody<T>(pub T);

impl<T: DeserializeOwned> FromRequest<AppState> for JsonBody<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &AppState) -> Result<Self, ApiError> {
        check_content_type(req.headers().get(header::CONTENT_TYPE))?;
        let limit = state.store.limits().request_bytes_max;
        let too_large =
            || ApiError::PayloadTooLarge(format!("the request body may be at most {limit} bytes"));
        // A body announced over the limit is refused at once, not after waiting for it.
        let announced = req
            .headers()
            .get(header::CONTENT_LENGTH)
            .and_then(|value| value.to_str().ok())
            .and_then(|text| text.parse::<u64>().ok());
        if announced.is_some_and(|length| length > limit as u64) {
            return Err(too_large());
        }
        let bytes = Bytes::from_request(req, state).await.map_err(|rejection| {
            if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
                too_large()
            } else {
                ApiError::invalid(format!("could not read the request body: {rejection}"))
            }
        })?;
        parse_json(&bytes).map(JsonBody)
    }
}

fn check_content_type(value: Option<&header::HeaderValue>) -> Result<(), ApiError> {
    let Some(value) = value else {
        return Ok(());
    };
    let text = value.to_str().unwrap_or("");
    let media_type = text.split(';').next().unwrap_or("").trim();
    if media_type.eq_ignore_ascii_case("application/json") {
        Ok(())
    } else {
        Err(ApiError::UnsupportedMediaType(format!(
            "the request body must be JSON (Content-Type: application/json), not '{text}'"
        )))
    }
}

/// Parses a body as JSON into `T`, naming what is wrong when it cannot.
pub fn parse_json<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Err(ApiError::invalid(
            "the request body is empty; a JSON object is expected",
        ));
    }
    let text = std::str::from_utf8(bytes).map_err(|e| {
        ApiError::invalid(format!(
            "the request body is not valid UTF-8 (at byte {})",
            e.valid_up_to()
        ))
    })?;
    // Through `Whole`, so that an integer field takes `1526.0` as JSON Schema's `integer` does.
    let mut deserializer = serde_json::Deserializer::from_str(text);
    T::deserialize(crate::whole::Whole(&mut deserializer))
        .and_then(|value| deserializer.end().map(|()| value))
        .map_err(|e| {
            use serde_json::error::Category;
            // serde_json's own limit, outside event_data and metadata (raw text, which the
            // core limits lower).
            if e.to_string().starts_with("recursion limit exceeded") {
                return ApiError::invalid(format!(
                    "the request body nests arrays and objects more than {PARSER_DEPTH_MAX} levels deep"
                ));
            }
            match e.classify() {
                Category::Syntax | Category::Eof | Category::Io => {
                    ApiError::invalid(format!("the request body is not valid JSON: {e}"))
                }
                Category::Data => ApiError::invalid(format!("invalid request body: {e}")),
            }
        })
}

/// Percent-decodes `input` strictly: a `%` must be followed by two hex digits, and the result
/// must be UTF-8. With `plus_as_space` (query strings), `+` stands for a space.
pub fn percent_decode(input: &str, plus_as_space: bool) -> Result<Cow<'_, str>, String> {
    let needs_decoding = input.contains('%') || (plus_as_space && input.contains('+'));
    if !needs_decoding {
        return Ok(Cow::Borrowed(input));
    }
    let bytes = input.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut at = 0;
    while let Some(&byte) = bytes.get(at) {
        match byte {
            b'%' => {
                let hex = |offset: usize| bytes.get(at + offset).and_then(|b| (*b as char).to_digit(16));
                let (Some(high), Some(low)) = (hex(1), hex(2)) else {
                    return Err(format!("'{input}' has a '%' not followed by two hex digits"));
                };
                out.push((high * 16 + low) as u8);
                at += 3;
            }
            b'+' if plus_as_space => {
                out.push(b' ');
                at += 1;
            }
            other => {
                out.push(other);
                at += 1;
            }
        }
    }
    String::from_utf8(out)
        .map(Cow::Owned)
        .map_err(|_| format!("'{input}' is not UTF-8 once percent-decoded"))
}

/// The percent-decoded path segment at `index` (`/v1/aggregates/{id}` has the id at 3).
///
/// Read from the raw path rather than through axum's `Path`, which decodes leniently (it keeps
/// a malformed `%zz` as it is) where we answer 400.
pub(crate) fn path_segment(parts: &Parts, index: usize, name: &str) -> Result<String, ApiError> {
    let raw = parts.uri.path().split('/').nth(index).unwrap_or("");
    percent_decode(raw, false)
        .map(Cow::into_owned)
        .map_err(|problem| ApiError::invalid(format!("{name} in the path: {problem}")))
}

/// The `{aggregate_id}` of `/v1/aggregates/{aggregate_id}/…`, decoded and validated.
#[derive(Debug)]
pub struct AggregateIdPath(pub String);

impl FromRequestParts<AppState> for AggregateIdPath {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let id = path_segment(parts, 3, "aggregate_id")?;
        validate_aggregate_id(&id, state.store.limits())?;
        Ok(AggregateIdPath(id))
    }
}

/// The `{event_id}` of `/v1/events/{event_id}`, a UUID.
#[derive(Debug)]
pub struct EventIdPath(pub Uuid);

impl FromRequestParts<AppState> for EventIdPath {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _state: &AppState) -> Result<Self, ApiError> {
        let text = path_segment(parts, 3, "event_id")?;
        Uuid::try_parse(&text)
            .map(EventIdPath)
            .map_err(|_| ApiError::invalid(format!("event_id must be a UUID, not '{text}'")))
    }
}

/// The query parameters of one request, checked against the names its endpoint knows.
///
/// An unknown name is refused rather than ignored: a misspelt filter (`event_types=`) would
/// otherwise silently return every event. A name given twice is refused too, since it is not
/// clear which one the client meant.
#[derive(Debug, Default)]
pub struct Params {
    pairs: Vec<(String, String)>,
}

impl Params {
    /// Parses a raw query string, accepting only the names in `known`.
    pub fn parse(query: Option<&str>, known: &[&str]) -> Result<Params, ApiError> {
        let mut pairs: Vec<(String, String)> = Vec::new();
        for piece in query.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
            let (raw_name, raw_value) = piece.split_once('=').unwrap_or((piece, ""));
            let name = percent_decode(raw_name, true)
                .map_err(|problem| ApiError::invalid(format!("query parameter name: {problem}")))?;
            if !known.contains(&name.as_ref()) {
                let hint = if known.is_empty() {
                    "this endpoint takes none".to_owned()
                } else {
                    format!("known parameters: {}", known.join(", "))
                };
                return Err(ApiError::invalid(format!(
                    "unknown query parameter '{name}' ({hint})"
                )));
            }
            if pairs.iter().any(|(n, _)| *n == name) {
                return Err(ApiError::invalid(format!(
                    "query parameter '{name}' is given more than once"
                )));
            }
            let value = percent_decode(raw_value, true)
                .map_err(|problem| ApiError::invalid(format!("query parameter '{name}': {problem}")))?;
            pairs.push((name.into_owned(), value.into_owned()));
        }
        Ok(Params { pairs })
    }

    /// The decoded value of `name`, when given.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.pairs
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    /// A whole number from 0 to [`POSITION_MAX`] (every number parameter is a position, a
    /// version, a count or a duration, and none may go beyond what PostgreSQL's `bigint` holds).
    pub fn u64(&self, name: &str) -> Result<Option<u64>, ApiError> {
        let Some(text) = self.get(name) else {
            return Ok(None);
        };
        // `str::parse` would accept a leading '+'; only plain digits are a number here.
        if !text.is_empty() && text.bytes().all(|b| b.is_ascii_digit()) {
            return match text.parse::<u64>() {
                Ok(value) if value <= POSITION_MAX => Ok(Some(value)),
                _ => Err(ApiError::invalid(format!(
                    "{name} may be at most {POSITION_MAX}, got '{text}'"
                ))),
            };
        }
        if text.starts_with('-') {
            return Err(ApiError::invalid(format!(
                "{name} must not be negative, got '{text}'"
            )));
        }
        Err(ApiError::invalid(format!(
            "{name} must be a whole number of 0 or more, got '{text}'"
        )))
    }

    /// A version: a whole number of 1 or more.
    pub fn version(&self, name: &str) -> Result<Option<u64>, ApiError> {
        match self.u64(name)? {
            Some(0) => Err(ApiError::invalid(format!(
                "{name} must be at least 1 (versions start at 1)"
            ))),
            other => Ok(other),
        }
    }

    /// `limit`: 1 to `max`, `default` when absent.
    pub fn limit(&self, default: usize, max: usize) -> Result<usize, ApiError> {
        match self.u64("limit")? {
            None => Ok(default.min(max)),
            Some(limit) if limit >= 1 && limit <= max as u64 => Ok(limit as usize),
            Some(limit) => Err(ApiError::invalid(format!(
                "limit must be between 1 and {max}, got {limit}"
            ))),
        }
    }

    /// A time: RFC 3339, or a date `YYYY-MM-DD` standing for the start or the end of that day.
    pub fn time(&self, name: &str, bound: Bound) -> Result<Option<Timestamp>, ApiError> {
        let Some(text) = self.get(name) else {
            return Ok(None);
        };
        Timestamp::parse_bound(text, bound).map(Some).map_err(|_| {
            ApiError::invalid(format!(
                "{name} must be an RFC 3339 time (2024-01-15T14:00:00Z) or a date (2024-01-15), got '{text}'"
            ))
        })
    }

    /// `true` or `false`.
    pub fn bool(&self, name: &str) -> Result<Option<bool>, ApiError> {
        match self.get(name) {
            None => Ok(None),
            Some("true") => Ok(Some(true)),
            Some("false") => Ok(Some(false)),
            Some(other) => Err(ApiError::invalid(format!(
                "{name} must be true or false, got '{other}'"
            ))),
        }
    }

    /// `direction`: `forward` (the default) or `backward`.
    pub fn direction(&self) -> Result<Direction, ApiError> {
        match self.get("direction") {
            None | Some("forward") => Ok(Direction::Forward),
            Some("backward") => Ok(Direction::Backward),
            Some(other) => Err(ApiError::invalid(format!(
                "direction must be forward or backward, got '{other}'"
            ))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percent_decoding_is_strict() {
        assert_eq!(
            percent_decode("account%3AACC-001", false).as_deref(),
            Ok("account:ACC-001")
        );
        assert_eq!(percent_decode("a+b", false).as_deref(), Ok("a+b"));
        assert_eq!(percent_decode("a+b%2B", true).as_deref(), Ok("a b+"));
        assert_eq!(percent_decode("%C3%A9", false).as_deref(), Ok("é"));
        assert!(percent_decode("a%zz", false).is_err());
        assert!(percent_decode("a%4", false).is_err());
        assert!(percent_decode("%FF", false).is_err());
    }

    #[test]
    fn params_refuse_unknown_and_repeated_names() {
        assert!(Params::parse(Some("limit=5&&"), &["limit"]).is_ok());
        let err = Params::parse(Some("limt=5"), &["limit"]);
        assert!(matches!(err, Err(ApiError::InvalidRequest(m)) if m.contains("'limt'")));
        let err = Params::parse(Some("limit=5&limit=6"), &["limit"]);
        assert!(matches!(err, Err(ApiError::InvalidRequest(m)) if m.contains("more than once")));
    }

    #[test]
    fn numbers_are_plain_digits() {
        let params = Params::parse(Some("a=%2B5&b=-1&c=12"), &["a", "b", "c"]).expect("parses");
        assert!(params.u64("a").is_err());
        assert!(matches!(params.u64("b"), Err(ApiError::InvalidRequest(m)) if m.contains("negative")));
        assert_eq!(params.u64("c"), Ok(Some(12)));
    }

    #[test]
    fn numbers_stop_at_the_largest_bigint() {
        let params = Params::parse(
            Some("a=9223372036854775807&b=9223372036854775808&c=99999999999999999999"),
            &["a", "b", "c"],
        )
        .expect("parses");
        assert_eq!(params.u64("a"), Ok(Some(9_223_372_036_854_775_807)));
        for name in ["b", "c"] {
            assert!(
                matches!(params.u64(name), Err(ApiError::InvalidRequest(m)) if m.starts_with(&format!("{name} may be at most 9223372036854775807"))),
                "{name}"
            );
        }
    }
}
