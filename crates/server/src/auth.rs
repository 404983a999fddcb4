//! Who may do what: the `--auth` token file, the bearer-token check, roles and aggregate
//! prefixes.
//!
//! # The rules
//! - Without an [`Auth`] in [`ServerConfig`](crate::ServerConfig) everything is open: every
//!   request acts as [`Principal::unrestricted`] (an admin that sees every aggregate).
//! - With one, every request except [`OPEN_PATHS`] needs `Authorization: Bearer <token>` naming a
//!   token of the file: else 401 `unauthorized` (the [`authenticate`] middleware, applied to every
//!   route by [`app_with_state`](crate::app_with_state), so a new route is closed by default).
//!   `/metrics` needs any valid token.
//! - [`Role`]s nest: readers read, writers also append, admins also do everything else. A handler
//!   states the role it needs; outside it, 403 `forbidden`.
//! - A token with `aggregate_id_prefixes` sees only aggregates whose id starts with one of them:
//!   appends and one-aggregate reads outside are 403; cross-aggregate reads are filtered; an event
//!   read by id outside is 404 `event_not_found`, so its existence is not revealed; a commit's
//!   `condition` must be confined to the visible aggregates (it could otherwise probe for events
//!   the token may not see), else 403.
//! - A commit of such a token refused because an event id is taken answers `duplicate_event_id`
//!   with one reason whatever holds the id ([`Principal::conceal`]): the stored event may be in
//!   an aggregate it cannot see, where `GET /v1/events/{id}` answers 404.
//! - Whatever its role, a token with `aggregate_id_prefixes` may not use a route whose answer or
//!   effect is not confined to some aggregates ([`whole_store_reason`]): archiving and the
//!   storage figures, projections (a state folds events of every aggregate), persistent
//!   subscriptions (a group's events are not limited to some aggregates), and registering
//!   schemas or upcasters (they check and rewrite the events of every aggregate). 403, decided
//!   once for every route by the [`authenticate`] middleware from the matched route, before
//!   the handler runs. Reading schemas and upcasters is allowed (they describe event types, not
//!   aggregates, and a writer needs them), as are `/v1/head` (a position, which every page of
//!   events carries anyway) and `/metrics` (the server's counters; no aggregate is named).
//!
//! # Using it in a handler
//! Take a [`Principal`] (or [`Writer`] / [`Admin`], which check the role before the body is
//! read) as an extractor, and apply the rules that fit the endpoint:
//! ```ignore
//! async fn handler(State(state): State<AppState>, principal: Principal, /* … */) -> Result<Response, ApiError> {
//!     principal.require(Role::Reader)?;             // 403 below the role
//!     principal.check_aggregate(&aggregate_id)?;    // one aggregate: 403 outside the prefixes
//!     let scope = principal.restrict(&mut query);   // many aggregates: narrow the query…
//!     let mut page = state.store.read_events(query).await?;
//!     scope.retain(&mut page.events);               // …and drop what the store still returned
//!     # todo!()
//! }
//! ```
//! A stream (the live subscription) does the same: `let scope = principal.restrict_filter(&mut
//! filter);` once before it starts, then skips every event for which `scope.allows(&event)` is
//! false, exactly as it skips events its filter passes over (checkpoints move past them).
//! [`Scope`] is cheap to clone, `Send` and `'static`.
//!
//! # Tokens are secrets
//! Only a SHA-256 digest of each token is kept. A presented token is hashed and compared with
//! every digest in constant time, so neither the time taken nor an early exit tells how much of
//! a guess was right. Tokens never appear in errors, in `Debug` output or in logs (the request
//! log marks the `Authorization` header sensitive).

use std::fmt;
use std::path::Path;
use std::sync::Arc;

use axum::extract::{FromRequestParts, MatchedPath, Request, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, Method, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use factstore_core::{Commit, Event, EventFilter, EventQuery, StoreError};
use serde::Deserialize;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::AppState;
use crate::error::ApiError;

/// Paths any client may call without a token.
pub const OPEN_PATHS: &[&str] = &["/health", "/v1/openapi.json"];

/// What a token may do. Roles nest: each includes the ones before it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Role {
    /// Reads events, subscribes, reads projections; polls, acks and nacks persistent
    /// subscriptions.
    Reader,
    /// Also appends events and puts snapshots.
    Writer,
    /// Also manages projections, subscriptions, schemas and archiving.
    Admin,
}

impl Role {
    /// The name used in the auth file and in messages.
    pub fn name(self) -> &'static str {
        match self {
            Role::Reader => "reader",
            Role::Writer => "writer",
            Role::Admin => "admin",
        }
    }

    fn parse(text: &str) -> Option<Role> {
        match text {
            "reader" => Some(Role::Reader),
            "writer" => Some(Role::Writer),
            "admin" => Some(Role::Admin),
            _ => None,
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A problem with the auth file; the message names the file and the entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuthFileError(String);

impl fmt::Display for AuthFileError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for AuthFileError {}

/// The auth file as written. Unknown keys are refused: a misspelt `aggregate_id_prefix` would
/// otherwise silently give a token every aggregate.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFile {
    #[serde(default)]
    token: Vec<RawToken>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawToken {
    token: String,
    role: String,
    #[serde(default)]
    aggregate_id_prefixes: Option<Vec<String>>,
}

/// One token of the file: its digest and what it grants.
struct TokenEntry {
    digest: [u8; 32],
    principal: Principal,
}

/// The tokens of an auth file, ready to check requests against.
pub struct Auth {
    tokens: Vec<TokenEntry>,
}

impl fmt::Debug for Auth {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Digests are not the tokens, but there is no reason to print them either.
        f.debug_struct("Auth")
            .field("tokens", &self.tokens.len())
            .finish()
    }
}

fn digest(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

/// The TOML error's message with every piece of the file left out: its display quotes the
/// offending line, and its message quotes values and keys (serde's "invalid type: integer
/// `123`", "unknown field `…`", "string \"…\""), any of which may be a token written in the
/// wrong place or without quotes. Kept: the names of our own fields and TOML's punctuation;
/// the position says where the rest is.
fn redact(message: &str) -> String {
    const OURS: &[&str] = &["token", "role", "aggregate_id_prefixes", "true", "false"];
    let mut out = String::with_capacity(message.len());
    let mut rest = message;
    while let Some(open) = rest.find(['`', '"']) {
        let (before, from) = rest.split_at(open);
        out.push_str(before);
        let quote = &from[..1];
        let Some(len) = from[1..].find(quote) else {
            // An unpaired quote: drop what follows rather than risk printing it.
            out.push_str("(not shown)");
            return out;
        };
        let inner = &from[1..1 + len];
        let punctuation = inner.len() <= 2 && !inner.chars().any(char::is_alphanumeric);
        if OURS.contains(&inner) || punctuation {
            out.push_str(&from[..len + 2]);
        } else {
            out.push_str("(not shown)");
        }
        rest = &from[len + 2..];
    }
    out.push_str(rest);
    out
}

/// The TOML error's position as "line L, column C", computed from its span rather than taken
/// from its display, which quotes the offending line — possibly a token.
fn position(text: &str, offset: usize) -> String {
    let before = text.get(..offset).unwrap_or(text);
    let line = before.matches('\n').count() + 1;
    let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    format!("line {line}, column {column}")
}

impl Auth {
    /// Reads and checks the auth file at `path`.
    pub fn load(path: &Path) -> Result<Auth, AuthFileError> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| AuthFileError(format!("cannot read the auth file {}: {e}", path.display())))?;
        Auth::parse(&text, &path.display().to_string())
    }

    /// Parses and checks an auth file's text; `origin` (the file name) starts every message.
    pub fn parse(text: &str, origin: &str) -> Result<Auth, AuthFileError> {
        let fail = |problem: String| AuthFileError(format!("auth file {origin}: {problem}"));
        let raw: RawFile = toml::from_str(text).map_err(|e| {
            let at = e.span().map(|span| format!(" at {}", position(text, span.start)));
            fail(format!(
                "{}{}",
                redact(e.message().trim_end()),
                at.unwrap_or_default()
            ))
        })?;
        if raw.token.is_empty() {
            return Err(fail(
                "it defines no token; add at least one [[token]] with token and role".to_owned(),
            ));
        }
        let mut tokens: Vec<TokenEntry> = Vec::with_capacity(raw.token.len());
        for (index, entry) in raw.token.into_iter().enumerate() {
            let number = index + 1;
            let entry_fail = |problem: String| fail(format!("token entry {number}: {problem}"));
            if entry.token.is_empty() {
                return Err(entry_fail("the token is empty".to_owned()));
            }
            if entry.token.chars().any(|c| c.is_whitespace() || c.is_control()) {
                return Err(entry_fail(
                    "the token contains white space or control characters, which an Authorization header cannot carry"
                        .to_owned(),
                ));
            }
            // The value is not repeated: a token put in the role's place would be printed.
            let role = Role::parse(&entry.role)
                .ok_or_else(|| entry_fail("unknown role (expected reader, writer or admin)".to_owned()))?;
            let prefixes = match entry.aggregate_id_prefixes {
                None => None,
                Some(list) if list.is_empty() => {
                    return Err(entry_fail(
                        "aggregate_id_prefixes is empty; leave it out to allow every aggregate".to_owned(),
                    ));
                }
                Some(list) => {
                    if list.iter().any(String::is_empty) {
                        return Err(entry_fail(
                            "aggregate_id_prefixes has an empty prefix; leave the list out to allow every aggregate"
                                .to_owned(),
                        ));
                    }
                    Some(Arc::from(list))
                }
            };
            let digest = digest(&entry.token);
            if let Some(first) = tokens.iter().position(|t| t.digest == digest) {
                return Err(fail(format!(
                    "token entries {} and {number} have the same token",
                    first + 1
                )));
            }
            if entry.token.len() < 16 {
                tracing::warn!(
                    "auth file {origin}: token entry {number} is shorter than 16 bytes; use a long random secret"
                );
            }
            tokens.push(TokenEntry {
                digest,
                principal: Principal { role, prefixes },
            });
        }
        Ok(Auth { tokens })
    }

    /// The number of tokens.
    pub fn len(&self) -> usize {
        self.tokens.len()
    }

    /// Whether there are no tokens (never, for a loaded file).
    pub fn is_empty(&self) -> bool {
        self.tokens.is_empty()
    }

    /// The principal of `token`, if it is one of the file's. Every digest is compared, in
    /// constant time, whichever matches.
    pub fn principal(&self, token: &str) -> Option<Principal> {
        let presented = digest(token);
        let mut found = None;
        for entry in &self.tokens {
            if bool::from(entry.digest.ct_eq(&presented)) {
                found = Some(&entry.principal);
            }
        }
        found.cloned()
    }

    /// The principal of a request's `Authorization: Bearer` header, or 401.
    pub fn authenticate(&self, headers: &HeaderMap) -> Result<Principal, ApiError> {
        let Some(value) = headers.get(header::AUTHORIZATION) else {
            return Err(ApiError::Unauthorized(
                "this server needs a token: send Authorization: Bearer <token>".to_owned(),
            ));
        };
        let token = value
            .to_str()
            .ok()
            .and_then(|text| {
                let (scheme, rest) = text.split_once(' ')?;
                scheme.eq_ignore_ascii_case("bearer").then(|| rest.trim())
            })
            .filter(|token| !token.is_empty())
            .ok_or_else(|| {
                ApiError::Unauthorized("the Authorization header must be 'Bearer <token>'".to_owned())
            })?;
        self.principal(token)
            .ok_or_else(|| ApiError::Unauthorized("the token is not valid".to_owned()))
    }
}

/// Who is asking: a role and, for a limited token, the aggregate id prefixes it may see.
///
/// As an extractor it is the principal the [`authenticate`] middleware found (or, without
/// `--auth`, [`Principal::unrestricted`]); it never fails on a server without auth.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    role: Role,
    /// `None`: every aggregate. Never an empty list.
    prefixes: Option<Arc<[String]>>,
}

impl Principal {
    /// An admin that sees every aggregate: every request of a server without `--auth`.
    pub fn unrestricted() -> Principal {
        Principal {
            role: Role::Admin,
            prefixes: None,
        }
    }

    /// A principal with `role`, limited to `prefixes` when given (for tests and embedders).
    pub fn new(role: Role, prefixes: Option<Vec<String>>) -> Principal {
        Principal {
            role,
            prefixes: prefixes.map(Arc::from),
        }
    }

    pub fn role(&self) -> Role {
        self.role
    }

    /// The aggregate id prefixes this principal is limited to; `None` for all aggregates.
    pub fn prefixes(&self) -> Option<&[String]> {
        self.prefixes.as_deref()
    }

    /// 403 unless this principal has at least `role`.
    pub fn require(&self, role: Role) -> Result<(), ApiError> {
        if self.role >= role {
            Ok(())
        } else {
            Err(ApiError::Forbidden(format!(
                "this needs the {role} role; the token's role is {}",
                self.role
            )))
        }
    }

    /// 403 for a token limited to aggregate prefixes; `why` says what of the route is not
    /// confined to some aggregates. See [`whole_store_reason`].
    pub fn require_unlimited(&self, why: &str) -> Result<(), ApiError> {
        if self.prefixes.is_some() {
            return Err(ApiError::Forbidden(format!(
                "a token limited to aggregate id prefixes may not use this route: {why}"
            )));
        }
        Ok(())
    }

    /// Whether this principal may see the aggregate `aggregate_id`.
    pub fn can_see(&self, aggregate_id: &str) -> bool {
        self.scope().allows_aggregate(aggregate_id)
    }

    /// 403 unless this principal may see and (with the role) write `aggregate_id`.
    pub fn check_aggregate(&self, aggregate_id: &str) -> Result<(), ApiError> {
        if self.can_see(aggregate_id) {
            Ok(())
        } else {
            Err(ApiError::Forbidden(format!(
                "the token may not use aggregate '{aggregate_id}' (it is limited to ids starting with {})",
                self.prefix_list()
            )))
        }
    }

    /// 403 unless every event the filter can match is in an aggregate this principal sees: its
    /// `aggregate_id` is visible, or its `aggregate_id_prefix` starts with one of the prefixes.
    /// For filters the store evaluates on our behalf without showing us the events (a commit's
    /// condition), where filtering the result afterwards is not possible.
    pub fn check_filter(&self, filter: &EventFilter) -> Result<(), ApiError> {
        let Some(prefixes) = &self.prefixes else {
            return Ok(());
        };
        let confined = match (&filter.aggregate_id, &filter.aggregate_id_prefix) {
            (Some(id), _) => self.can_see(id),
            (None, Some(asked)) => prefixes.iter().any(|p| asked.starts_with(p.as_str())),
            (None, None) => false,
        };
        if confined {
            Ok(())
        } else {
            Err(ApiError::Forbidden(format!(
                "the token is limited to aggregate ids starting with {}; the filter must be too \
                 (an aggregate_id or aggregate_id_prefix within them)",
                self.prefix_list()
            )))
        }
    }

    /// 403 unless every aggregate of the commit, and its condition, are within the prefixes.
    /// The role is the caller's to check ([`Role::Writer`]).
    pub fn check_commit(&self, commit: &Commit) -> Result<(), ApiError> {
        for append in &commit.appends {
            self.check_aggregate(&append.aggregate_id)?;
        }
        if let Some(condition) = &commit.condition {
            self.check_filter(&condition.filter)?;
        }
        Ok(())
    }

    /// What a commit's error may tell this principal. The reason of a `DuplicateEventId` says
    /// where the stored event is (in another aggregate, with other content, at other
    /// versions); for a token limited to prefixes that may be an aggregate it cannot see, so it
    /// reads one reason whatever holds the id. That the id is taken it learns from any refusal
    /// (the commit cannot succeed); the id is the one it sent.
    pub fn conceal(&self, error: StoreError) -> StoreError {
        match error {
            StoreError::DuplicateEventId { event_id, .. } if self.prefixes.is_some() => {
                StoreError::DuplicateEventId {
                    event_id,
                    reason: "a retry must repeat its original commit exactly, and a new event needs an id of its own"
                        .to_owned(),
                }
            }
            other => other,
        }
    }

    /// Narrows `query` to what this principal may see as far as one prefix can say it, and
    /// returns the [`Scope`] that must still filter what the store answers.
    pub fn restrict(&self, query: &mut EventQuery) -> Scope {
        self.restrict_filter(&mut query.filter)
    }

    /// [`Principal::restrict`] for a bare filter (subscriptions, projections).
    ///
    /// Narrowing only ever replaces `aggregate_id_prefix` by a longer prefix that still covers
    /// every visible aggregate the filter matched, so the store answers a subset of what it
    /// would have, and a superset of what the principal may see; the returned scope removes
    /// the rest. When one token prefix covers everything visible the scope passes everything
    /// and the store does all the work.
    pub fn restrict_filter(&self, filter: &mut EventFilter) -> Scope {
        let Some(prefixes) = &self.prefixes else {
            return Scope::everything();
        };
        if let Some(id) = &filter.aggregate_id {
            return if self.can_see(id) {
                Scope::everything()
            } else {
                self.scope()
            };
        }
        let asked = filter.aggregate_id_prefix.as_deref().unwrap_or("");
        if prefixes.iter().any(|p| asked.starts_with(p.as_str())) {
            return Scope::everything();
        }
        let relevant: Vec<&str> = prefixes
            .iter()
            .map(String::as_str)
            .filter(|p| p.starts_with(asked))
            .collect();
        match relevant.as_slice() {
            // Nothing visible can match; the scope drops whatever the store finds.
            [] => self.scope(),
            [only] => {
                filter.aggregate_id_prefix = Some((*only).to_owned());
                Scope::everything()
            }
            several => {
                let common = common_prefix(several);
                if common.len() > asked.len() {
                    filter.aggregate_id_prefix = Some(common.to_owned());
                }
                self.scope()
            }
        }
    }

    /// The post-filter of this principal, without narrowing anything.
    pub fn scope(&self) -> Scope {
        Scope {
            prefixes: self.prefixes.clone(),
        }
    }

    fn prefix_list(&self) -> String {
        match &self.prefixes {
            None => "anything".to_owned(),
            Some(prefixes) => prefixes
                .iter()
                .map(|p| format!("'{p}'"))
                .collect::<Vec<_>>()
                .join(", "),
        }
    }
}

/// The longest common prefix of `strings` (at least one), on a character boundary.
fn common_prefix<'a>(strings: &[&'a str]) -> &'a str {
    let Some((first, rest)) = strings.split_first() else {
        return "";
    };
    let mut end = first.len();
    for other in rest {
        let mut agreed = 0;
        for ((at, a), b) in first.char_indices().zip(other.chars()) {
            if a != b {
                break;
            }
            agreed = at + a.len_utf8();
        }
        end = end.min(agreed);
    }
    // Every `agreed` is a character boundary of `first`, and so is the smallest.
    first.get(..end).unwrap_or("")
}

/// Which events a principal may see, applied to what a store answered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Scope {
    prefixes: Option<Arc<[String]>>,
}

impl Scope {
    /// A scope that passes every event.
    pub fn everything() -> Scope {
        Scope { prefixes: None }
    }

    /// Whether this scope passes every event, so a caller may skip calling it.
    pub fn is_everything(&self) -> bool {
        self.prefixes.is_none()
    }

    /// Whether `event` may be shown.
    pub fn allows(&self, event: &Event) -> bool {
        self.allows_aggregate(event.aggregate_id())
    }

    /// Whether events of `aggregate_id` may be shown.
    pub fn allows_aggregate(&self, aggregate_id: &str) -> bool {
        match &self.prefixes {
            None => true,
            Some(prefixes) => prefixes.iter().any(|p| aggregate_id.starts_with(p.as_str())),
        }
    }

    /// Removes the events that may not be shown. A page's `next_after_position` stays as the
    /// store set it: it moves past removed events as past any filtered-out event.
    pub fn retain(&self, events: &mut Vec<Event>) {
        if !self.is_everything() {
            events.retain(|event| self.allows(event));
        }
    }
}

impl FromRequestParts<AppState> for Principal {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        if let Some(principal) = parts.extensions.get::<Principal>() {
            return Ok(principal.clone());
        }
        match &state.config.auth {
            None => Ok(Principal::unrestricted()),
            // A router built without the middleware still checks the token: fail closed.
            Some(auth) => auth.authenticate(&parts.headers),
        }
    }
}

/// A [`Principal`] with at least [`Role::Writer`], checked before later extractors (the body)
/// run.
#[derive(Debug, Clone)]
pub struct Writer(pub Principal);

impl FromRequestParts<AppState> for Writer {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let principal = Principal::from_request_parts(parts, state).await?;
        principal.require(Role::Writer)?;
        Ok(Writer(principal))
    }
}

/// A [`Principal`] with [`Role::Admin`], checked before later extractors (the body) run.
#[derive(Debug, Clone)]
pub struct Admin(pub Principal);

impl FromRequestParts<AppState> for Admin {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let principal = Principal::from_request_parts(parts, state).await?;
        principal.require(Role::Admin)?;
        Ok(Admin(principal))
    }
}

/// Why a token limited to aggregate prefixes may not use the route `method` `route` (its
/// pattern, as `/v1/projections/{name}`), or `None` when it may. The one list of such routes:
/// a route added under these paths is covered without more code, and `tests/auth.rs` requires
/// a decision for every route of the router.
pub fn whole_store_reason(method: &Method, route: &str) -> Option<&'static str> {
    if route.starts_with("/v1/admin/") {
        Some("archiving, backups and the storage figures concern the whole store")
    } else if route == "/v1/projections" || route.starts_with("/v1/projections/") {
        Some("a projection's states fold events of every aggregate")
    } else if route == "/v1/subscriptions" || route.starts_with("/v1/subscriptions/") {
        Some("a persistent subscription's events are not limited to some aggregates")
    } else if method == Method::PUT
        && (route.starts_with("/v1/schemas/") || route.starts_with("/v1/upcasters/"))
    {
        Some("a schema or upcaster applies to the events of every aggregate")
    } else {
        None
    }
}

/// Middleware: with auth configured, every request but [`OPEN_PATHS`] needs a valid token (else
/// 401); a token limited to aggregate prefixes is refused the routes of [`whole_store_reason`]
/// (403); the [`Principal`] is put in the request's extensions for the handler.
pub async fn authenticate(State(state): State<AppState>, mut request: Request, next: Next) -> Response {
    if let Some(auth) = &state.config.auth
        && !OPEN_PATHS.contains(&request.uri().path())
    {
        let principal = match auth.authenticate(request.headers()) {
            Ok(principal) => principal,
            Err(error) => return error.into_response(),
        };
        let whole_store = request
            .extensions()
            .get::<MatchedPath>()
            .and_then(|route| whole_store_reason(request.method(), route.as_str()));
        if let Some(why) = whole_store
            && let Err(error) = principal.require_unlimited(why)
        {
            return error.into_response();
        }
        request.extensions_mut().insert(principal);
    }
    next.run(request).await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Auth, String> {
        Auth::parse(text, "auth.toml").map_err(|e| e.to_string())
    }

    #[test]
    fn a_good_file_gives_each_token_its_role_and_prefixes() {
        let auth = parse(
            r#"
            [[token]]
            token = "reader-secret-0123456789"
            role = "reader"

            [[token]]
            token = "writer-secret-0123456789"
            role = "writer"
            aggregate_id_prefixes = ["account:", "order:"]
            "#,
        )
        .expect("valid");
        assert_eq!(auth.len(), 2);
        let reader = auth.principal("reader-secret-0123456789").expect("known");
        assert_eq!((reader.role(), reader.prefixes()), (Role::Reader, None));
        let writer = auth.principal("writer-secret-0123456789").expect("known");
        assert_eq!(writer.role(), Role::Writer);
        assert_eq!(
            writer.prefixes(),
            Some(&["account:".to_owned(), "order:".to_owned()][..])
        );
        assert!(auth.principal("writer-secret-012345678").is_none());
        assert!(auth.principal("").is_none());
        assert!(!format!("{auth:?}").contains("secret"));
    }

    #[test]
    fn bad_files_name_the_file_and_the_entry() {
        let cases = [
            ("", "defines no token"),
            (
                "[[token]]\ntoken = \"abc\"\nrole = \"root\"\n",
                "token entry 1: unknown role (expected reader, writer or admin)",
            ),
            (
                "[[token]]\ntoken = \"a\"\nrole = \"admin\"\n[[token]]\ntoken = \"\"\nrole = \"admin\"\n",
                "token entry 2: the token is empty",
            ),
            (
                "[[token]]\ntoken = \"same\"\nrole = \"admin\"\n[[token]]\ntoken = \"same\"\nrole = \"reader\"\n",
                "token entries 1 and 2 have the same token",
            ),
            (
                "[[token]]\ntoken = \"a\"\nrole = \"admin\"\naggregate_id_prefix = [\"x\"]\n",
                "unknown field (not shown), expected one of `token`, `role`, `aggregate_id_prefixes` at line 4",
            ),
            (
                "[[tokens]]\ntoken = \"a\"\nrole = \"admin\"\n",
                "unknown field (not shown), expected `token` at line 1",
            ),
            (
                "[[token]]\ntoken = \"a\"\nrole = \"admin\"\naggregate_id_prefixes = []\n",
                "token entry 1: aggregate_id_prefixes is empty",
            ),
            (
                "[[token]]\ntoken = \"a\"\nrole = \"admin\"\naggregate_id_prefixes = [\"\"]\n",
                "empty prefix",
            ),
            ("[[token]]\ntoken = \"a b\"\nrole = \"admin\"\n", "white space"),
            ("[[token]]\nrole = \"admin\"\n", "missing field `token`"),
            ("[[token]\n", "line 1"),
        ];
        for (text, expected) in cases {
            let error = parse(text).expect_err(text);
            assert!(error.starts_with("auth file auth.toml: "), "{error}");
            assert!(error.contains(expected), "{text:?}: {error}");
        }
    }

    #[test]
    fn errors_never_quote_a_token() {
        let error = parse("[[token]]\ntoken = \"top-secret-value\"\nrole = 5\n").expect_err("bad role type");
        assert!(!error.contains("top-secret-value"), "{error}");
        assert!(error.contains("line 3"), "{error}");
    }

    /// toml's message for a bare value quotes the value ("unquoted string"…), and its display
    /// the whole line: a token written without quotes must still never be printed.
    #[test]
    fn a_token_written_without_quotes_is_never_printed() {
        let cases = [
            "[[token]]\ntoken = top-secret-value-123\nrole = \"admin\"\n",
            "[[token]]\ntoken = top-secret-value-123 # comment\nrole = \"admin\"\n",
            "[[token]]\ntoken = 'top-secret-value-123\nrole = \"admin\"\n",
            "[[token]]\ntoken = \"top-secret-value-123\nrole = \"admin\"\n",
            "[[token]]\ntoken = top-secret-value-123\n",
            "[[token]]\ntoken = 12345top-secret-value-123\nrole = \"admin\"\n",
            "[[token]]\ntoken = [\"top-secret-value-123\"]\nrole = \"admin\"\n",
            "[[token]]\ntoken = \"ok\"\nrole = top-secret-value-123\n",
            "[[token]]\ntop-secret-value-123\nrole = \"admin\"\n",
            "[[token]]\ntoken = \"a\"\nrole = \"admin\"\naggregate_id_prefixes = [top-secret-value-123]\n",
            "[[token]]\ntoken = 1234567890123\nrole = \"admin\"\n",
            "[[token]]\ntoken = 12345.678\nrole = \"admin\"\n",
            "[[token]]\ntoken = 0x7f3a9b\nrole = \"admin\"\n",
            "[[token]]\ntoken = 2024-01-01T00:00:00Z\nrole = \"admin\"\n",
            "[[token]]\ntoken = true\nrole = \"admin\"\n",
            "[[token]]\ntop_secret_value_123 = \"admin\"\n",
            "[[token]]\ntoken = \"a\"\nrole = \"admin\"\naggregate_id_prefixes = \"top-secret-value-123\"\n",
            "[[token]]\ntoken = \"a\"\nrole = \"top-secret-value-123\"\n",
            "[[token]]\ntoken = \"a\"\ntoken = \"top-secret-value-123\"\nrole = \"admin\"\n",
            "[[token]]\n\"top-secret-value-123\" = 1\n",
        ];
        for text in cases {
            let error = parse(text).expect_err(text);
            assert!(!error.contains("top-secret"), "{text:?}: {error}");
            assert!(
                !error.contains("value-123") && !error.contains("value_123"),
                "{text:?}: {error}"
            );
            for number in [
                "1234567890123",
                "12345.678",
                "0x7f3a9b",
                "7f3a9b",
                "8263098",
                "2024-01-01",
            ] {
                assert!(!error.contains(number), "{text:?}: {error}");
            }
            assert!(
                error.contains("line ") || error.contains("token entry 1"),
                "{text:?}: {error}"
            );
        }
    }

    #[test]
    fn roles_nest() {
        let writer = Principal::new(Role::Writer, None);
        assert!(writer.require(Role::Reader).is_ok());
        assert!(writer.require(Role::Writer).is_ok());
        assert!(matches!(writer.require(Role::Admin), Err(ApiError::Forbidden(_))));
        assert!(Principal::unrestricted().require(Role::Admin).is_ok());
    }

    fn limited(prefixes: &[&str]) -> Principal {
        Principal::new(
            Role::Reader,
            Some(prefixes.iter().map(|p| (*p).to_owned()).collect()),
        )
    }

    fn restricted(principal: &Principal, id: Option<&str>, prefix: Option<&str>) -> (EventFilter, Scope) {
        let mut filter = EventFilter {
            aggregate_id: id.map(str::to_owned),
            aggregate_id_prefix: prefix.map(str::to_owned),
            ..EventFilter::default()
        };
        let scope = principal.restrict_filter(&mut filter);
        (filter, scope)
    }

    #[test]
    fn restricting_narrows_the_prefix_when_it_can() {
        let one = limited(&["account:"]);
        let (filter, scope) = restricted(&one, None, None);
        assert_eq!(filter.aggregate_id_prefix.as_deref(), Some("account:"));
        assert!(scope.is_everything());
        let (filter, scope) = restricted(&one, None, Some("account:EU-"));
        assert_eq!(filter.aggregate_id_prefix.as_deref(), Some("account:EU-"));
        assert!(scope.is_everything());
        let (filter, scope) = restricted(&one, None, Some("acc"));
        assert_eq!(filter.aggregate_id_prefix.as_deref(), Some("account:"));
        assert!(scope.is_everything());
        let (filter, scope) = restricted(&one, None, Some("order:"));
        assert_eq!(filter.aggregate_id_prefix.as_deref(), Some("order:"));
        assert!(!scope.allows_aggregate("order:1"));

        let several = limited(&["account:EU-", "account:US-", "order:"]);
        let (filter, scope) = restricted(&several, None, None);
        assert_eq!(filter.aggregate_id_prefix, None);
        assert!(scope.allows_aggregate("order:1") && !scope.allows_aggregate("account:UK-1"));
        let (filter, scope) = restricted(&several, None, Some("account:"));
        assert_eq!(filter.aggregate_id_prefix.as_deref(), Some("account:"));
        assert!(!scope.is_everything());
        let (filter, _) = restricted(&limited(&["account:EU-", "account:US-"]), None, None);
        assert_eq!(filter.aggregate_id_prefix.as_deref(), Some("account:"));
        let (filter, scope) = restricted(&several, None, Some("account:US"));
        assert_eq!(filter.aggregate_id_prefix.as_deref(), Some("account:US-"));
        assert!(scope.is_everything());

        let (_, scope) = restricted(&several, Some("order:9"), None);
        assert!(scope.is_everything());
        let (_, scope) = restricted(&several, Some("account:UK-1"), None);
        assert!(!scope.allows_aggregate("account:UK-1"));
    }

    #[test]
    fn common_prefixes_respect_characters() {
        assert_eq!(common_prefix(&["abc", "abd"]), "ab");
        assert_eq!(common_prefix(&["abc", "ab"]), "ab");
        assert_eq!(common_prefix(&["ab", "abc"]), "ab");
        assert_eq!(common_prefix(&["é1", "è1"]), "");
        assert_eq!(common_prefix(&["éa", "éb", "éc"]), "é");
        assert_eq!(common_prefix(&["x"]), "x");
    }

    #[test]
    fn conditions_must_stay_inside_the_prefixes() {
        let p = limited(&["seat:"]);
        let filter = |id: Option<&str>, prefix: Option<&str>| EventFilter {
            aggregate_id: id.map(str::to_owned),
            aggregate_id_prefix: prefix.map(str::to_owned),
            ..EventFilter::default()
        };
        assert!(p.check_filter(&filter(None, Some("seat:A"))).is_ok());
        assert!(p.check_filter(&filter(Some("seat:1"), None)).is_ok());
        assert!(p.check_filter(&filter(None, None)).is_err());
        assert!(p.check_filter(&filter(None, Some("se"))).is_err());
        assert!(p.check_filter(&filter(Some("order:1"), Some("seat:"))).is_err());
        assert!(
            Principal::unrestricted()
                .check_filter(&filter(None, None))
                .is_ok()
        );
    }
}
