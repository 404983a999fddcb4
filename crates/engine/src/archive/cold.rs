//! Cold storage behind a narrow, blocking trait, and its `object_store` implementation.
//!
//! The engine is free of async: archiving and reads of archived segments run on blocking
//! threads. [`ObjectColdStore`] owns a small tokio runtime and runs each request's future on it,
//! waiting on a channel, so a caller never blocks inside an async task and never needs a
//! runtime of its own.

use std::fmt::Debug;
use std::future::Future;
use std::io;
use std::sync::Arc;

use bytes::Bytes;
use object_store::aws::AmazonS3Builder;
use object_store::local::LocalFileSystem;
use object_store::path::Path as ObjectPath;
use object_store::{GetOptions, ObjectStore, PutOptions, PutPayload};

/// Objects in cold storage, named by keys relative to the store's prefix
/// (`segments/0000000001.seg.zst`). Every call blocks until the request is done.
pub trait ColdStore: Send + Sync + Debug {
    /// Stores `bytes` under `key`, replacing what is there. Atomic: readers see the old object
    /// or the whole new one.
    fn put(&self, key: &str, bytes: Bytes) -> io::Result<()>;
    /// The whole object under `key`; `ErrorKind::NotFound` when there is none.
    fn get(&self, key: &str) -> io::Result<Bytes>;
    /// Where the objects live, for messages (`s3://bucket/prefix`).
    fn describe(&self) -> String;
}

/// [`ColdStore`] over any `object_store` backend: S3 (and S3-compatible servers), the local
/// file system, or memory in tests.
#[derive(Debug)]
pub struct ObjectColdStore {
    store: Arc<dyn ObjectStore>,
    prefix: ObjectPath,
    url: String,
    runtime: tokio::runtime::Runtime,
}

impl ObjectColdStore {
    /// Opens the store that `url` names: `s3://bucket/prefix` (credentials, region and
    /// `AWS_ENDPOINT_URL` from the usual AWS environment variables; plain `http://` endpoints
    /// are allowed when the endpoint says so or `AWS_ALLOW_HTTP=true`) or `file:///path`
    /// (the folder is created when missing).
    pub fn from_url(url: &str) -> io::Result<ObjectColdStore> {
        let invalid = |reason: String| io::Error::new(io::ErrorKind::InvalidInput, reason);
        if let Some(rest) = url.strip_prefix("s3://") {
            let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
            if bucket.is_empty() {
                return Err(invalid(format!("archive URL {url} names no bucket")));
            }
            let mut builder = AmazonS3Builder::from_env().with_bucket_name(bucket);
            if let Ok(endpoint) = std::env::var("AWS_ENDPOINT_URL") {
                let http = endpoint.starts_with("http://");
                builder = builder.with_endpoint(endpoint);
                if http {
                    builder = builder.with_allow_http(true);
                }
            }
            let store = builder
                .build()
                .map_err(|e| invalid(format!("archive URL {url}: {e}")))?;
            ObjectColdStore::new(Arc::new(store), prefix, url)
        } else if let Some(path) = url.strip_prefix("file://") {
            if !path.starts_with('/') {
                return Err(invalid(format!(
                    "archive URL {url}: a file:// URL takes an absolute path (file:///var/archive)"
                )));
            }
            std::fs::create_dir_all(path)
                .map_err(|e| io::Error::new(e.kind(), format!("archive folder {path}: {e}")))?;
            let store = LocalFileSystem::new_with_prefix(path)
                .map_err(|e| invalid(format!("archive URL {url}: {e}")))?;
            ObjectColdStore::new(Arc::new(store), "", url)
        } else {
            Err(invalid(format!(
                "archive URL {url} is not supported: use s3://bucket/prefix or file:///path"
            )))
        }
    }

    /// A cold store over `store`, with keys under `prefix`.
    pub fn new(store: Arc<dyn ObjectStore>, prefix: &str, url: &str) -> io::Result<ObjectColdStore> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("factstore-archive")
            .enable_all()
            .build()?;
        Ok(ObjectColdStore {
            store,
            prefix: ObjectPath::from(prefix.trim_matches('/')),
            url: url.to_owned(),
            runtime,
        })
    }

    fn path(&self, key: &str) -> ObjectPath {
        let mut path = self.prefix.clone();
        for part in key.split('/') {
            path = path.clone().join(part);
        }
        path
    }

    /// Runs `future` on the store's runtime and waits for it on this (non-async) thread.
    fn run<T: Send + 'static>(
        &self,
        future: impl Future<Output = object_store::Result<T>> + Send + 'static,
    ) -> io::Result<T> {
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        self.runtime.spawn(async move {
            let _ = tx.send(future.await);
        });
        let url = self.url.clone();
        rx.recv()
            .map_err(|_| io::Error::other(format!("{url}: the archive runtime stopped")))?
            .map_err(|e| match e {
                object_store::Error::NotFound { .. } => {
                    io::Error::new(io::ErrorKind::NotFound, e.to_string())
                }
                other => io::Error::other(format!("{url}: {other}")),
            })
    }
}

impl ColdStore for ObjectColdStore {
    fn put(&self, key: &str, bytes: Bytes) -> io::Result<()> {
        let store = self.store.clone();
        let path = self.path(key);
        self.run(async move {
            store
                .put_opts(&path, PutPayload::from_bytes(bytes), PutOptions::default())
                .await
                .map(|_| ())
        })
    }

    fn get(&self, key: &str) -> io::Result<Bytes> {
        let store = self.store.clone();
        let path = self.path(key);
        self.run(async move { store.get_opts(&path, GetOptions::default()).await?.bytes().await })
    }

    fn describe(&self) -> String {
        self.url.clone()
    }
}
