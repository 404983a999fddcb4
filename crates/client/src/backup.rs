//! `POST /v1/admin/backup`: a copy of the whole store in a folder of the server's machine.

use std::time::Duration;

use reqwest::Method;
use reqwest::header::{ACCEPT, CONTENT_TYPE};
use serde::{Deserialize, Serialize};

use crate::client::{Client, decode};
use crate::error::{Error, Result};
use crate::query::Params;

/// How long a backup request may take: the server answers once every file is copied and
/// synced, which for a large store on another file system means copying gigabytes.
const BACKUP_TIMEOUT: Duration = Duration::from_secs(24 * 3600);

/// The answer of `POST /v1/admin/backup`: what the backup holds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BackupOutcome {
    /// The folder on the server's machine, as given.
    pub to: String,
    /// The last position in the backup: every event up to it is in it.
    pub head_position: u64,
    /// Files of the backup, and their bytes.
    pub files: u64,
    pub bytes: u64,
    /// Files hard-linked to the store's own rather than copied.
    pub linked_files: u64,
    /// Segments whose events are in cold storage only: restoring needs the same archive URL.
    pub archived_segments: u64,
    /// How long the copy took.
    pub duration_ms: u64,
}

#[derive(Serialize)]
struct BackupBody<'a> {
    to: &'a str,
}

impl Client {
    /// `POST /v1/admin/backup`: copies the whole store, while it serves, into `to`, an absolute
    /// path on the server's machine of a folder that does not exist or is empty; resolves when
    /// the backup is complete and durable. Not retried: a repeat finds the folder not empty.
    /// `Error::Api` with code `backup_target_not_empty`, `backup_not_supported` (a server on
    /// PostgreSQL) or `backup_failed` (the folder then holds an incomplete copy).
    pub async fn backup(&self, to: &str) -> Result<BackupOutcome> {
        let url = self.endpoint(&["v1", "admin", "backup"], &Params::default())?;
        let body = serde_json::to_vec(&BackupBody { to })
            .map_err(|e| Error::Config(format!("the request cannot be serialised: {e}")))?;
        let response = self
            .request(Method::POST, url)
            .timeout(BACKUP_TIMEOUT)
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
        decode(&bytes, "the backup outcome")
    }
}
