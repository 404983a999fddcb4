//! `docs/http-api.md`, the API reference for people, against the OpenAPI document the server
//! serves: the same routes (one `### METHOD /path` section each), in each section every query
//! parameter and header of the route, its success statuses on the `Answers:` line and exactly
//! its error codes on the `Errors:` line; and the table of error codes holds every code of
//! `ErrorCode` with the status the routes answer it with.

#![allow(clippy::unwrap_used)]

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use factstore_server::app;
use factstore_testkit::model::ModelStore;
use http_body_util::BodyExt;
use serde_json::Value;
use tower::ServiceExt;

const DOC_PATH: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../docs/http-api.md");

const METHODS: [&str; 4] = ["GET", "PUT", "POST", "DELETE"];

async fn openapi() -> Value {
    let router = app(Arc::new(ModelStore::new()));
    let request = Request::builder()
        .uri("/v1/openapi.json")
        .body(Body::empty())
        .unwrap();
    let response = router.oneshot(request).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let bytes = response.into_body().collect().await.unwrap().to_bytes();
    serde_json::from_slice(&bytes).unwrap()
}

/// One route as the OpenAPI document describes it.
#[derive(Debug, Default)]
struct Operation {
    /// Query parameters and headers.
    params: BTreeSet<String>,
    successes: BTreeSet<String>,
    /// Error code → status.
    errors: BTreeMap<String, String>,
    takes_no_query: bool,
}

fn operations(doc: &Value) -> BTreeMap<(String, String), Operation> {
    let mut out = BTreeMap::new();
    for (path, item) in doc["paths"].as_object().unwrap() {
        for (method, op) in item.as_object().unwrap() {
            let mut operation = Operation {
                takes_no_query: op["description"]
                    .as_str()
                    .is_some_and(|d| d.contains("Takes no query parameters")),
                ..Operation::default()
            };
            for param in op["parameters"].as_array().into_iter().flatten() {
                if param["in"] != "path" {
                    operation
                        .params
                        .insert(param["name"].as_str().unwrap().to_owned());
                }
            }
            for (status, response) in op["responses"].as_object().unwrap() {
                if status.starts_with('2') {
                    operation.successes.insert(status.clone());
                    continue;
                }
                let codes = &response["content"]["application/json"]["schema"]["allOf"][1]["properties"]["error"]
                    ["properties"]["code"]["enum"];
                for code in codes.as_array().unwrap() {
                    operation
                        .errors
                        .insert(code.as_str().unwrap().to_owned(), status.clone());
                }
            }
            out.insert((method.to_uppercase(), path.clone()), operation);
        }
    }
    out
}

/// The text of every `### METHOD /path` section of the Markdown, by (METHOD, path).
fn sections(markdown: &str) -> BTreeMap<(String, String), String> {
    let mut out = BTreeMap::new();
    let mut current: Option<((String, String), String)> = None;
    for line in markdown.lines() {
        if line.starts_with("## ") || line.starts_with("### ") {
            if let Some((key, text)) = current.take() {
                assert!(out.insert(key.clone(), text).is_none(), "{key:?} twice");
            }
            if let Some(heading) = line.strip_prefix("### ")
                && let Some((method, path)) = heading.split_once(' ')
                && METHODS.contains(&method)
            {
                current = Some(((method.to_owned(), path.trim().to_owned()), String::new()));
            }
            continue;
        }
        if let Some((_, text)) = &mut current {
            text.push_str(line);
            text.push('\n');
        }
    }
    if let Some((key, text)) = current {
        out.insert(key, text);
    }
    out
}

/// The paragraph of `text` that begins with `label` (up to the next blank line).
fn paragraph<'a>(text: &'a str, label: &str, route: &(String, String)) -> &'a str {
    let start = text
        .find(&format!("\n{label}"))
        .map(|i| i + 1)
        .or_else(|| text.starts_with(label).then_some(0))
        .unwrap_or_else(|| panic!("{route:?}: no '{label}' paragraph"));
    let rest = &text[start..];
    &rest[..rest.find("\n\n").unwrap_or(rest.len())]
}

/// The words between backticks.
fn quoted(text: &str) -> BTreeSet<String> {
    text.split('`').skip(1).step_by(2).map(str::to_owned).collect()
}

#[tokio::test]
async fn the_reference_documents_exactly_the_served_routes_parameters_and_errors() {
    let doc = openapi().await;
    let markdown = std::fs::read_to_string(DOC_PATH).unwrap();
    let documented = sections(&markdown);
    let served = operations(&doc);

    let missing: Vec<_> = served.keys().filter(|k| !documented.contains_key(*k)).collect();
    assert!(
        missing.is_empty(),
        "served but not in docs/http-api.md: {missing:?}"
    );
    let extra: Vec<_> = documented.keys().filter(|k| !served.contains_key(*k)).collect();
    assert!(extra.is_empty(), "in docs/http-api.md but not served: {extra:?}");

    for (route, operation) in &served {
        let text = &documented[route];
        let named = quoted(text);
        for param in &operation.params {
            assert!(
                named.contains(param),
                "{route:?}: the parameter `{param}` is not described"
            );
        }
        if operation.takes_no_query {
            let flowing = text.split_whitespace().collect::<Vec<_>>().join(" ");
            assert!(
                flowing.contains("Takes no query parameters"),
                "{route:?}: say that it takes no query parameters"
            );
        }
        let answers = paragraph(text, "Answers:", route);
        let statuses: BTreeSet<String> = answers
            .split(|c: char| !c.is_ascii_alphanumeric())
            .filter(|w| w.len() == 3 && w.starts_with('2') && w.bytes().all(|b| b.is_ascii_digit()))
            .map(str::to_owned)
            .collect();
        assert_eq!(statuses, operation.successes, "{route:?}: the success statuses");
        let errors = paragraph(text, "Errors:", route);
        let codes = quoted(errors);
        let served_codes: BTreeSet<String> = operation.errors.keys().cloned().collect();
        assert_eq!(codes, served_codes, "{route:?}: the error codes");
        if served_codes.is_empty() {
            assert!(errors.starts_with("Errors: none"), "{route:?}: {errors}");
        }
    }
}

#[tokio::test]
async fn the_table_of_errors_holds_every_code_with_its_status() {
    let doc = openapi().await;
    let markdown = std::fs::read_to_string(DOC_PATH).unwrap();
    let enumerated: BTreeSet<String> = doc["components"]["schemas"]["ErrorCode"]["enum"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c.as_str().unwrap().to_owned())
        .collect();
    // `| 409 | `code` | when |` rows of the section "Errors".
    let start = markdown.find("\n## Errors\n").expect("a section ## Errors");
    let section = &markdown[start + 1..];
    let section = &section[..section[3..].find("\n## ").map_or(section.len(), |i| i + 3)];
    let mut table = BTreeMap::new();
    for row in section.lines().filter(|l| l.starts_with("| ")) {
        let cells: Vec<&str> = row.split('|').map(str::trim).collect();
        if let (Some(status), Some(code)) = (cells.get(1), cells.get(2))
            && let Some(code) = code.strip_prefix('`').and_then(|c| c.strip_suffix('`'))
        {
            assert!(
                table.insert(code.to_owned(), (*status).to_owned()).is_none(),
                "`{code}` twice in the table"
            );
        }
    }
    let listed: BTreeSet<String> = table.keys().cloned().collect();
    assert_eq!(listed, enumerated, "the codes of the table and of ErrorCode");
    for operation in operations(&doc).values() {
        for (code, status) in &operation.errors {
            assert_eq!(&table[code], status, "the status of `{code}`");
        }
    }
}

#[test]
fn sections_are_split_at_route_headings() {
    let markdown = "# T\n## Events\nintro\n### GET /v1/head\nhead text\n\n### POST /v1/events\ncommit\n## Other\n### A heading\nnot a route\n";
    let found = sections(markdown);
    let keys: Vec<_> = found.keys().cloned().collect();
    assert_eq!(
        keys,
        vec![
            ("GET".to_owned(), "/v1/head".to_owned()),
            ("POST".to_owned(), "/v1/events".to_owned())
        ]
    );
    assert_eq!(found[&("POST".to_owned(), "/v1/events".to_owned())], "commit\n");
    assert_eq!(
        quoted("Errors: `a`, `b_c`."),
        BTreeSet::from(["a".to_owned(), "b_c".to_owned()])
    );
}
