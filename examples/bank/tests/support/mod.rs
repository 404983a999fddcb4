//! Test support: a factstore server in-process on a free port (the embedded engine in a
//! temporary folder), and calling the example's router without a socket.
#![allow(dead_code, clippy::unwrap_used)]

use std::sync::Arc;

use axum::Router;
use axum::body::Body;
use axum::http::{Request, StatusCode};
use factstore_engine::store::EmbeddedStore;
use factstore_engine::{Engine, EngineOptions};
use factstore_server::{AppState, ServerConfig};
use http_body_util::BodyExt;
use serde_json::Value;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tower::ServiceExt;

pub struct Factstore {
    pub url: String,
    engine: Arc<Engine>,
    state: AppState,
    task: JoinHandle<std::io::Result<()>>,
    _dir: tempfile::TempDir,
}

impl Factstore {
    pub async fn start() -> Factstore {
        let dir = tempfile::tempdir().unwrap();
        let engine = Arc::new(Engine::open(dir.path(), EngineOptions::default()).unwrap());
        let store = Arc::new(EmbeddedStore::new(engine.clone()));
        let state = AppState::new(store, ServerConfig::default());
        let app = factstore_server::app_with_state(state.clone());
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let token = state.shutdown.clone();
        let task = tokio::spawn(factstore_server::serve(listener, app, async move {
            token.cancelled().await
        }));
        Factstore {
            url,
            engine,
            state,
            task,
            _dir: dir,
        }
    }

    pub async fn stop(self) {
        self.state.shutdown.cancel();
        self.task.await.unwrap().unwrap();
        let engine = self.engine;
        tokio::task::spawn_blocking(move || engine.close()).await.unwrap();
    }
}

/// One request to `app`: the status and the JSON body (`null` when empty).
pub async fn call(
    app: &Router,
    method: &str,
    path: &str,
    body: Option<&str>,
    headers: &[(&str, &str)],
) -> (StatusCode, Value) {
    let mut request = Request::builder().method(method).uri(path);
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let request = match body {
        Some(body) => request
            .header("content-type", "application/json")
            .body(Body::from(body.to_owned()))
            .unwrap(),
        None => request.body(Body::empty()).unwrap(),
    };
    let response = app.clone().oneshot(request).await.unwrap();
    let status = response.status();
    let bytes = response.into_body().collect().await.unwrap().to_bytes();
    let value = if bytes.is_empty() {
        Value::Null
    } else {
        serde_json::from_slice(&bytes)
            .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into_owned()))
    };
    (status, value)
}
