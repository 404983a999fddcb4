//! The administration endpoints: archiving to cold storage, and where the store's bytes are.

use std::time::Duration;

use reqwest::Method;
use reqwest::header::{ACCEPT, CONTENT_TYPE};
use serde::{Deserialize, Serialize};

use crate::client::{Client, decode};
use crate::error::{Error, Result};
use crate::query::Params;

/// How long an archive request may take: the server answers only when every segment is moved,
/// which for a large store means uploading gigabytes.
const ARCHIVE_TIMEOUT: Duration = Duration::from_secs(24 * 3600);

/// The answer of `POST /v1/admin/archive`: totals of every archive run so far.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ArchiveOutcome {
    /// Events whose only copy is in cold storage.
    pub archived_events: u64,
    /// Bytes of the log moved to cold storage, as they were on local disk.
    pub archived_bytes: u64,
    /// Events recorded before this run's cut that stay on local disk; 0 when every one moved.
    #[serde(default)]
    pub hot_before_cut: u64,
    /// Why `hot_before_cut` events stay (a code, e.g. `shares_segment_with_later_events`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hot_reason: Option<String>,
}

/// The answer of `GET /v1/admin/storage`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct StorageStats {
    /// Bytes of the server's local log and index files.
    pub hot_bytes: u64,
    /// Bytes of the (compressed) objects in cold storage.
    pub cold_bytes: u64,
    /// Events in the store.
    pub events: u64,
    /// Events whose only copy is in cold storage.
    pub archived_events: u64,
}

#[derive(Serialize)]
struct ArchiveBody<'a> {
    before: &'a str,
}

impl Client {
    /// `POST /v1/admin/archive`: moves the events recorded before `before` (an RFC 3339 time,
    /// or a date `YYYY-MM-DD` meaning the start of that day) to cold storage; resolves when the
    /// server is done. Not retried: a repeat is harmless but the first may still be running.
    /// `Error::Api` with code `archive_not_configured` when the server has no cold storage.
    pub async fn archive(&self, before: &str) -> Result<ArchiveOutcome> {
        let url = self.endpoint(&["v1", "admin", "archive"], &Params::default())?;
        let body = serde_json::to_vec(&ArchiveBody { before })
            .map_err(|e| Error::Config(format!("the request cannot be serialised: {e}")))?;
        let response = self
            .request(Method::POST, url)
            .timeout(ARCHIVE_TIMEOUT)
            .header(ACCEPT, "application/json")
            .header(CONTENT_TYPE, "application/json")
            .body(body)
            .send()
            .await
            .map_err(Error::Transport)?;
        let status = response.status();
        let bytes = response.bytes().await.map_err(Error::Transport)?;
        if !status.is_success() {
            return Err(Error::from_response(status, &bytes));
        }
        decode(&bytes, "the archive outcome")
    }

    /// `GET /v1/admin/storage`: hot and cold bytes, events and archived events.
    pub async fn storage(&self) -> Result<StorageStats> {
        let url = self.endpoint(&["v1", "admin", "storage"], &Params::default())?;
        let response = self
            .request(Method::GET, url)
            .timeout(Duration::from_secs(60))
            .header(ACCEPT, "application/json")
            .send()
            .await
            .map_err(Error::Transport)?;
        let status = response.status();
        let bytes = response.bytes().await.map_err(Error::Transport)?;
        if !status.is_success() {
            return Err(Error::from_response(status, &bytes));
        }
        decode(&bytes, "the storage numbers")
    }
}
