//! What the in-process tests share: send a request to a router, read the answer.
#![allow(dead_code)]

use axum::Router;
use axum::body::Body;
use axum::http::{HeaderMap, Method, Request, StatusCode, header};
use http_body_util::BodyExt;
use serde_json::{Value, json};
use tower::ServiceExt;

/// One answer: status, headers, the raw body and, when it is JSON, the parsed body.
#[derive(Debug)]
pub struct Answer {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub bytes: Vec<u8>,
    pub body: Value,
}

impl Answer {
    pub fn code(&self) -> &str {
        self.body["error"]["code"].as_str().unwrap_or("<no error code>")
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.bytes).into_owned()
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// The `aggregate_id`s of the events of a page, in order.
    pub fn aggregate_ids(&self) -> Vec<String> {
        self.body["events"]
            .as_array()
            .expect("events")
            .iter()
            .map(|e| e["aggregate_id"].as_str().expect("aggregate_id").to_owned())
            .collect()
    }
}

/// A request builder with an optional bearer token.
pub struct Call {
    pub method: Method,
    pub uri: String,
    pub token: Option<String>,
    pub headers: Vec<(String, String)>,
    pub body: Body,
}

impl Call {
    pub fn get(uri: &str) -> Call {
        Call {
            method: Method::GET,
            uri: uri.to_owned(),
            token: None,
            headers: Vec::new(),
            body: Body::empty(),
        }
    }

    pub fn post(uri: &str, body: &Value) -> Call {
        Call::post_raw(uri, body.to_string())
    }

    pub fn post_raw(uri: &str, body: impl Into<Body>) -> Call {
        Call {
            method: Method::POST,
            uri: uri.to_owned(),
            token: None,
            headers: vec![("content-type".to_owned(), "application/json".to_owned())],
            body: body.into(),
        }
    }

    pub fn put(uri: &str, body: &Value) -> Call {
        Call {
            method: Method::PUT,
            ..Call::post(uri, body)
        }
    }

    pub fn token(mut self, token: &str) -> Call {
        self.token = Some(token.to_owned());
        self
    }

    pub fn header(mut self, name: &str, value: &str) -> Call {
        self.headers.push((name.to_owned(), value.to_owned()));
        self
    }

    pub async fn send(self, router: &Router) -> Answer {
        let mut request = Request::builder().method(self.method).uri(self.uri);
        for (name, value) in &self.headers {
            request = request.header(name, value);
        }
        if let Some(token) = &self.token {
            request = request.header(header::AUTHORIZATION, format!("Bearer {token}"));
        }
        let response = router
            .clone()
            .oneshot(request.body(self.body).expect("request"))
            .await
            .expect("the router never fails");
        let status = response.status();
        let headers = response.headers().clone();
        let bytes = response
            .into_body()
            .collect()
            .await
            .expect("body")
            .to_bytes()
            .to_vec();
        let body = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        Answer {
            status,
            headers,
            bytes,
            body,
        }
    }
}

pub fn event(event_type: &str) -> Value {
    json!({"aggregate_type": "Account", "event_type": event_type, "event_data": {"amount": 1}})
}

pub fn events(n: usize) -> Value {
    json!({ "events": (0..n).map(|_| event("MoneyDeposited")).collect::<Vec<_>>() })
}

/// Checks an error answer's status and code, and that it is our JSON error.
#[track_caller]
pub fn assert_error(answer: &Answer, status: StatusCode, code: &str) {
    assert_eq!(
        (answer.status, answer.code()),
        (status, code),
        "{}",
        answer.text()
    );
    assert_eq!(answer.header("content-type"), Some("application/json"));
    assert!(
        answer.body["error"]["message"]
            .as_str()
            .is_some_and(|m| !m.is_empty())
    );
}
