//! The result of a run, for people (aligned text) and for programs (one JSON object).
//!
//! A report names the workload, the server, every parameter and the head position before and
//! after, so that a saved result says how it was obtained.

use std::fmt::Write as _;

use serde::Serialize;
use serde::ser::{SerializeMap, Serializer};
use serde_json::Value;

use super::stats::PartReport;

/// Parameters in the order they were declared.
pub type Params = Vec<(&'static str, Value)>;

#[derive(Debug)]
pub struct Report {
    pub workload: &'static str,
    pub url: String,
    pub threads: usize,
    pub parameters: Params,
    pub head_before: u64,
    pub head_after: u64,
    /// Each part under its name: `append`, `read`, `read_all`, `subscribe`, `seed`...
    pub parts: Vec<(&'static str, PartReport)>,
}

struct Ordered<'a>(&'a [(&'static str, Value)]);

impl Serialize for Ordered<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut map = serializer.serialize_map(Some(self.0.len()))?;
        for (key, value) in self.0 {
            map.serialize_entry(key, value)?;
        }
        map.end()
    }
}

#[derive(Serialize)]
struct Head {
    before: u64,
    after: u64,
}

impl Serialize for Report {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut map = serializer.serialize_map(None)?;
        map.serialize_entry("workload", self.workload)?;
        map.serialize_entry("url", &self.url)?;
        map.serialize_entry("threads", &self.threads)?;
        map.serialize_entry("parameters", &Ordered(&self.parameters))?;
        map.serialize_entry(
            "head_position",
            &Head {
                before: self.head_before,
                after: self.head_after,
            },
        )?;
        for (name, part) in &self.parts {
            map.serialize_entry(name, part)?;
        }
        map.serialize_entry("failed", &self.failed())?;
        map.end()
    }
}

impl Report {
    /// Whether any request failed or `--verify` found a problem (conflicts are not failures).
    pub fn failed(&self) -> bool {
        self.parts.iter().any(|(_, part)| {
            part.errors > 0
                || part
                    .extra
                    .get("verify")
                    .and_then(|v| v.get("problems"))
                    .and_then(Value::as_u64)
                    .is_some_and(|n| n > 0)
        })
    }

    pub fn to_json(&self) -> String {
        serde_json::to_string(self).unwrap_or_else(|e| format!("{{\"error\":\"{e}\"}}"))
    }

    pub fn to_text(&self) -> String {
        let mut out = String::new();
        let threads = if self.threads == 1 { "thread" } else { "threads" };
        let _ = writeln!(
            out,
            "factstore bench {}: {} ({} {threads})",
            self.workload, self.url, self.threads
        );
        let _ = writeln!(out, "parameters");
        for (key, value) in &self.parameters {
            line(&mut out, 1, key, &plain(value));
        }
        line(
            &mut out,
            0,
            "head position",
            &format!("{} -> {}", group(self.head_before), group(self.head_after)),
        );
        for (name, part) in &self.parts {
            let _ = writeln!(out, "\n{name}");
            part_text(&mut out, part);
        }
        if self.failed() {
            let _ = writeln!(
                out,
                "\nFAILED: some requests failed or verification found problems"
            );
        }
        out
    }
}

const KEY_WIDTH: usize = 22;

fn line(out: &mut String, indent: usize, key: &str, value: &str) {
    let pad = "  ".repeat(indent);
    let width = KEY_WIDTH.saturating_sub(pad.len());
    let _ = writeln!(out, "{}", format!("{pad}{key:<width$} {value}").trim_end());
}

fn part_text(out: &mut String, part: &PartReport) {
    line(out, 1, "elapsed", &format!("{:.3} s", part.elapsed_s));
    let ok = if part.ok == part.requests {
        String::new()
    } else {
        format!("   ({} ok)", group(part.ok))
    };
    line(
        out,
        1,
        "requests",
        &format!(
            "{:>12}  {:>14} /s{ok}",
            group(part.requests),
            rate(part.requests_per_s)
        ),
    );
    line(
        out,
        1,
        "events",
        &format!("{:>12}  {:>14} /s", group(part.events), rate(part.events_per_s)),
    );
    match &part.latency_ms {
        Some(l) => line(
            out,
            1,
            "latency ms",
            &format!(
                "p50 {:.3}  p90 {:.3}  p99 {:.3}  p99.9 {:.3}  max {:.3}  (mean {:.3}, {} samples)",
                l.p50_ms,
                l.p90_ms,
                l.p99_ms,
                l.p999_ms,
                l.max_ms,
                l.mean_ms,
                group(l.samples)
            ),
        ),
        None => line(out, 1, "latency ms", "-"),
    }
    line(out, 1, "errors", &group(part.errors));
    for (kind, count) in &part.errors_by_kind {
        line(out, 2, kind, &group(*count));
    }
    if !part.error_samples.is_empty() {
        line(out, 1, "first errors", "");
        for sample in &part.error_samples {
            let _ = writeln!(out, "      {sample}");
        }
    }
    if part.conflicts > 0 {
        line(out, 1, "conflicts", &group(part.conflicts));
    }
    for (key, value) in &part.extra {
        nested(out, 1, key, value);
    }
}

fn nested(out: &mut String, indent: usize, key: &str, value: &Value) {
    match value {
        Value::Object(map) => {
            line(out, indent, key, "");
            for (key, value) in map {
                nested(out, indent + 1, key, value);
            }
        }
        Value::Array(items) if items.iter().all(|v| !v.is_object() && !v.is_array()) => {
            if items.is_empty() {
                line(out, indent, key, "-");
            } else {
                line(out, indent, key, "");
                for item in items {
                    let _ = writeln!(out, "{}{}", "  ".repeat(indent + 2), plain(item));
                }
            }
        }
        other => line(out, indent, key, &plain(other)),
    }
}

/// A value as a person reads it: strings unquoted, integers grouped by thousands.
fn plain(value: &Value) -> String {
    match value {
        Value::String(s) => s.clone(),
        Value::Number(n) => match (n.as_u64(), n.as_f64()) {
            (Some(n), _) => group(n),
            (None, Some(x)) => format!("{x:.1}"),
            _ => n.to_string(),
        },
        Value::Null => "-".to_owned(),
        other => other.to_string(),
    }
}

/// `1234567` as `1,234,567`.
pub fn group(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

fn rate(per_second: f64) -> String {
    let whole = per_second.trunc() as u64;
    let tenth = ((per_second.fract() * 10.0).round() as u64).min(9);
    format!("{}.{tenth}", group(whole))
}

#[cfg(test)]
mod tests {
    use super::super::stats::Stats;
    use super::*;
    use std::time::Duration;

    #[test]
    fn numbers_are_grouped() {
        assert_eq!(group(0), "0");
        assert_eq!(group(999), "999");
        assert_eq!(group(1000), "1,000");
        assert_eq!(group(1_234_567), "1,234,567");
        assert_eq!(rate(24_993.64), "24,993.6");
    }

    fn report(errors: bool) -> Report {
        let mut stats = Stats::new();
        stats.ok(Duration::from_millis(1), 1000);
        if errors {
            stats.failed("413 payload_too_large".into(), || "too big".into());
        }
        Report {
            workload: "append",
            url: "http://127.0.0.1:6180".into(),
            threads: 1,
            parameters: vec![("concurrency", 4.into()), ("batch", 1000.into())],
            head_before: 0,
            head_after: 1000,
            parts: vec![("append", stats.summary(Duration::from_secs(1)))],
        }
    }

    #[test]
    fn json_keeps_parameters_in_order_and_parts_by_name() {
        let text = report(false).to_json();
        assert!(
            text.contains(r#""parameters":{"concurrency":4,"batch":1000}"#),
            "{text}"
        );
        let value: Value = serde_json::from_str(&text).expect("JSON");
        assert_eq!(value["append"]["events"], 1000);
        assert_eq!(value["head_position"]["after"], 1000);
        assert_eq!(value["failed"], false);
    }

    #[test]
    fn text_shows_parameters_results_and_errors() {
        let text = report(true).to_text();
        assert!(text.contains("  concurrency          4\n"), "{text}");
        assert!(text.contains("1,000.0 /s"), "{text}");
        assert!(text.contains("413 payload_too_large"), "{text}");
        assert!(text.contains("too big"), "{text}");
        assert!(text.contains("FAILED"), "{text}");
    }
}
