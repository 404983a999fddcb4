//! Backups with the real binary: `factstore backup` while four writers append and a
//! projection folds, then `factstore verify` of the backup, `factstore restore`, and
//! `factstore serve` of the restored folder.
//!
//! - Every event acknowledged before the backup request was sent is in the backup, at its
//!   position; the restored store holds positions 1 to the backup's `head_position` with no
//!   gap, each event exactly as the live store had it (id, position, version, recorded_at,
//!   data); `verify` passes on the backup and on the restored folder.
//! - The restored projection's states equal a fold of the restored events; the subscription
//!   group is where it was (its checkpoint, nothing acked delivered again); the snapshot and
//!   the schema are there. Archived segments stay archived: the backup holds the archive
//!   manifest and the restored server reads them through the same `--archive-url`.
//! - Refusals: a non-empty target (409 `backup_target_not_empty`), a token limited to
//!   aggregate prefixes even with the admin role (403), a reader (403), a relative path (400),
//!   a restore into a non-empty folder, a restore from a folder that is no complete backup.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::process::{Command, Output};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::{Value, json};

mod common;
use common::{BIN, ServeProcess, assert_verify_ok};

const ADMIN: &str = "admin-token-0123456789";
const PREFIXED_ADMIN: &str = "prefixed-admin-token-0123456789";
const READER: &str = "reader-token-0123456789";

fn cli(url: &str, token: &str, args: &[&str]) -> Output {
    Command::new(BIN)
        .args(args)
        .env("FACTSTORE_URL", url)
        .env("FACTSTORE_TOKEN", token)
        .output()
        .expect("run factstore")
}

fn offline(args: &[&str]) -> Output {
    Command::new(BIN)
        .args(args)
        .env_remove("FACTSTORE_DATA_DIR")
        .env_remove("FACTSTORE_ARCHIVE_URL")
        .output()
        .expect("run factstore")
}

fn text(output: &Output) -> String {
    format!(
        "status {:?}\nstdout: {}\nstderr: {}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

fn auth_file(dir: &Path) -> String {
    let path = dir.join("auth.toml");
    std::fs::write(
        &path,
        format!(
            "[[token]]\ntoken = \"{ADMIN}\"\nrole = \"admin\"\n\n\
             [[token]]\ntoken = \"{PREFIXED_ADMIN}\"\nrole = \"admin\"\naggregate_id_prefixes = [\"acc:\"]\n\n\
             [[token]]\ntoken = \"{READER}\"\nrole = \"reader\"\n"
        ),
    )
    .expect("write the auth file");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).expect("chmod");
    }
    path.display().to_string()
}

fn client() -> reqwest::Client {
    let mut headers = reqwest::header::HeaderMap::new();
    headers.insert(
        reqwest::header::AUTHORIZATION,
        format!("Bearer {ADMIN}").parse().expect("header"),
    );
    reqwest::Client::builder()
        .default_headers(headers)
        .timeout(Duration::from_secs(30))
        .build()
        .expect("client")
}

async fn expect_status(response: reqwest::Response, status: u16, what: &str) -> Value {
    let got = response.status().as_u16();
    let body: Value = response.json().await.unwrap_or(Value::Null);
    assert_eq!(got, status, "{what}: {body}");
    body
}

async fn append(client: &reqwest::Client, url: &str, aggregate: &str, amounts: &[i64]) -> Option<Vec<Value>> {
    let events: Vec<Value> = amounts
        .iter()
        .map(|amount| {
            json!({"aggregate_type": "Account", "event_type": "Deposited", "event_data": {"amount": amount}})
        })
        .collect();
    let response = client
        .post(format!("{url}/v1/aggregates/{aggregate}/events"))
        .json(&json!({ "events": events }))
        .send()
        .await
        .ok()?;
    if !response.status().is_success() {
        return None;
    }
    let body: Value = response.json().await.ok()?;
    body["events"].as_array().cloned()
}

/// Appends until `stop`, recording every event acknowledged (`event_id`, `position`, ...).
async fn writer(
    client: reqwest::Client,
    url: String,
    worker: usize,
    acked: Arc<Mutex<Vec<Value>>>,
    stop: Instant,
) {
    let mut rng = StdRng::from_os_rng();
    while Instant::now() < stop {
        let aggregate = format!("acc:{worker}:{}", rng.random_range(0..4));
        let amounts: Vec<i64> = (0..rng.random_range(1..=4))
            .map(|_| rng.random_range(1..100))
            .collect();
        match append(&client, &url, &aggregate, &amounts).await {
            Some(events) => acked.lock().expect("lock").extend(events),
            None => return,
        }
    }
}

async fn read_all(client: &reqwest::Client, url: &str) -> Vec<Value> {
    let mut all = Vec::new();
    let mut after = 0u64;
    loop {
        let page: Value = client
            .get(format!("{url}/v1/events?after_position={after}&limit=10000"))
            .send()
            .await
            .expect("read")
            .json()
            .await
            .expect("json");
        let events = page["events"].as_array().expect("events").clone();
        let next = page["next_after_position"].as_u64().expect("next");
        let done = events.is_empty() || next >= page["head_position"].as_u64().expect("head");
        all.extend(events);
        if done {
            return all;
        }
        after = next;
    }
}

const ACCOUNTS: &str = "accounts";

fn accounts_definition() -> Value {
    json!({"key": "aggregate_id", "on": {"Deposited": [
        {"op": "inc", "path": "/n"},
        {"op": "add", "path": "/sum", "from": "/event_data/amount"},
        {"op": "append", "path": "/positions", "from": "/position"}]}})
}

/// The states of `accounts` for `events`, folded here.
fn fold(events: &[Value]) -> BTreeMap<String, Value> {
    let mut by_account: BTreeMap<String, (u64, i64, Vec<u64>)> = BTreeMap::new();
    for event in events {
        let entry = by_account
            .entry(event["aggregate_id"].as_str().expect("id").to_owned())
            .or_default();
        entry.0 += 1;
        entry.1 += event["event_data"]["amount"].as_i64().expect("amount");
        entry.2.push(event["position"].as_u64().expect("position"));
    }
    by_account
        .into_iter()
        .map(|(id, (n, sum, positions))| (id, json!({"n": n, "sum": sum, "positions": positions})))
        .collect()
}

async fn states(client: &reqwest::Client, url: &str) -> BTreeMap<String, Value> {
    let mut out = BTreeMap::new();
    let mut after: Option<String> = None;
    loop {
        let mut uri = format!("{url}/v1/projections/{ACCOUNTS}/state?limit=1000");
        if let Some(after) = &after {
            uri.push_str(&format!("&after_key={after}"));
        }
        let page: Value = client
            .get(uri)
            .send()
            .await
            .expect("states")
            .json()
            .await
            .expect("json");
        for entry in page["states"].as_array().expect("states") {
            out.insert(
                entry["key"].as_str().expect("key").to_owned(),
                entry["state"].clone(),
            );
        }
        match page["next_after_key"].as_str() {
            Some(next) => after = Some(next.to_owned()),
            None => return out,
        }
    }
}

async fn projection_position(client: &reqwest::Client, url: &str) -> u64 {
    let status: Value = client
        .get(format!("{url}/v1/projections/{ACCOUNTS}"))
        .send()
        .await
        .expect("status")
        .json()
        .await
        .expect("json");
    assert_ne!(status["status"], "failed", "{status}");
    status["position"].as_u64().expect("position")
}

async fn wait_caught_up(client: &reqwest::Client, url: &str, head: u64) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while projection_position(client, url).await < head {
        assert!(
            Instant::now() < deadline,
            "the projection did not catch up with {head}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn poll(client: &reqwest::Client, url: &str) -> Vec<u64> {
    let body = expect_status(
        client
            .post(format!("{url}/v1/subscriptions/billing/poll"))
            .json(&json!({"consumer": "c", "max": 1000, "wait_ms": 0}))
            .send()
            .await
            .expect("poll"),
        200,
        "poll",
    )
    .await;
    body["events"]
        .as_array()
        .expect("events")
        .iter()
        .map(|e| e["position"].as_u64().expect("position"))
        .collect()
}

async fn group_checkpoint(client: &reqwest::Client, url: &str) -> u64 {
    let body = expect_status(
        client
            .get(format!("{url}/v1/subscriptions/billing"))
            .send()
            .await
            .expect("group"),
        200,
        "the group",
    )
    .await;
    body["checkpoint"].as_u64().expect("checkpoint")
}

/// Small segments and memtables, so that the backup links sealed segments and index runs,
/// and archiving has sealed, indexed segments to move.
fn serve(data: &Path, cold: &str, auth: &str) -> ServeProcess {
    ServeProcess::start(
        data,
        &[
            "--auth",
            auth,
            "--archive-url",
            cold,
            "--segment-bytes",
            "16KiB",
            "--memtable-events",
            "200",
            "--snapshot-every",
            "5",
        ],
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backup_taken_under_load_restores_every_acknowledged_event_projection_and_group() {
    let dir = tempfile::tempdir().expect("tempdir");
    let auth = auth_file(dir.path());
    let cold = format!("file://{}", dir.path().join("cold").display());
    std::fs::create_dir(dir.path().join("cold")).expect("cold folder");
    let data = dir.path().join("data");
    let server = serve(&data, &cold, &auth);
    let url = server.url.clone();
    let client = client();

    // Before the load: a schema, a projection, a group that has acked what exists, a
    // snapshot, and archived segments.
    expect_status(
        client
            .put(format!("{url}/v1/schemas/Deposited/versions/1"))
            .json(&json!({"type": "object", "required": ["amount"]}))
            .send()
            .await
            .expect("schema"),
        201,
        "the schema",
    )
    .await;
    expect_status(
        client
            .put(format!("{url}/v1/projections/{ACCOUNTS}"))
            .json(&accounts_definition())
            .send()
            .await
            .expect("projection"),
        201,
        "the projection",
    )
    .await;
    for i in 0..150 {
        append(&client, &url, &format!("acc:seed:{}", i % 5), &[1, 2, 3])
            .await
            .expect("seed");
    }
    let seeded = read_all(&client, &url).await.len() as u64;
    expect_status(
        client
            .put(format!("{url}/v1/subscriptions/billing"))
            .json(&json!({"start": "beginning"}))
            .send()
            .await
            .expect("group"),
        201,
        "the group",
    )
    .await;
    let deadline = Instant::now() + Duration::from_secs(30);
    while group_checkpoint(&client, &url).await < seeded {
        assert!(Instant::now() < deadline, "the group did not reach {seeded}");
        let positions = poll(&client, &url).await;
        if !positions.is_empty() {
            let acked = client
                .post(format!("{url}/v1/subscriptions/billing/ack"))
                .json(&json!({ "positions": positions }))
                .send()
                .await
                .expect("ack");
            assert_eq!(acked.status().as_u16(), 204);
        }
    }
    let group_at = group_checkpoint(&client, &url).await;
    expect_status(
        client
            .put(format!("{url}/v1/aggregates/acc:seed:0/snapshots"))
            .json(&json!({"version": 3, "state": {"sum": 6}, "snapshot_type": "Account"}))
            .send()
            .await
            .expect("snapshot"),
        201,
        "the snapshot",
    )
    .await;
    let archived = cli(&url, ADMIN, &["archive", "--before", "2999-01-01", "--json"]);
    assert!(archived.status.success(), "{}", text(&archived));

    // Four writers, and the backup in the middle of their work.
    let acked = Arc::new(Mutex::new(Vec::new()));
    let stop = Instant::now() + Duration::from_secs(4);
    let writers: Vec<_> = (0..4)
        .map(|w| tokio::spawn(writer(client.clone(), url.clone(), w, acked.clone(), stop)))
        .collect();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let backup_dir = dir.path().join("backup");
    let acked_before: Vec<Value> = acked.lock().expect("lock").clone();
    let backup = {
        let (url, to) = (url.clone(), backup_dir.display().to_string());
        tokio::task::spawn_blocking(move || cli(&url, ADMIN, &["backup", "--to", &to, "--json"]))
            .await
            .expect("backup")
    };
    assert!(backup.status.success(), "{}", text(&backup));
    let outcome: Value = serde_json::from_slice(&backup.stdout).expect("the outcome");
    let head = outcome["head_position"].as_u64().expect("head_position");
    assert!(outcome["linked_files"].as_u64() > Some(0), "{outcome}");
    assert!(outcome["archived_segments"].as_u64() > Some(0), "{outcome}");
    for writer in writers {
        writer.await.expect("writer");
    }
    assert!(
        acked_before.len() > 100 && acked.lock().expect("lock").len() > acked_before.len(),
        "the writers appended before and during the backup"
    );
    let live = read_all(&client, &url).await;
    assert!(live.len() as u64 > head, "events were appended after the backup");
    server.kill();

    // Every event acknowledged before the request is in the backup.
    let mut acked_positions = BTreeSet::new();
    for event in &acked_before {
        let position = event["position"].as_u64().expect("position");
        assert!(
            position <= head,
            "acknowledged position {position} is past the backup's head {head}"
        );
        acked_positions.insert(position);
    }
    let verify = offline(&[
        "verify",
        "--data-dir",
        &backup_dir.display().to_string(),
        "--archive-url",
        &cold,
    ]);
    assert!(verify.status.success(), "verify of the backup: {}", text(&verify));

    // Restore, serve, compare.
    let restored = dir.path().join("restored");
    let restore = offline(&[
        "restore",
        "--from",
        &backup_dir.display().to_string(),
        "--data-dir",
        &restored.display().to_string(),
        "--archive-url",
        &cold,
    ]);
    assert!(restore.status.success(), "{}", text(&restore));
    assert!(
        String::from_utf8_lossy(&restore.stdout).contains("ok: no problems found"),
        "{}",
        text(&restore)
    );
    let again = offline(&[
        "restore",
        "--from",
        &backup_dir.display().to_string(),
        "--data-dir",
        &restored.display().to_string(),
    ]);
    assert!(
        !again.status.success(),
        "a restore into a non-empty folder: {}",
        text(&again)
    );
    assert!(
        String::from_utf8_lossy(&again.stderr).contains("not empty"),
        "{}",
        text(&again)
    );

    let server = serve(&restored, &cold, &auth);
    let url = server.url.clone();
    let events = read_all(&client, &url).await;
    assert_eq!(
        events.len() as u64,
        head,
        "the restored store holds positions 1 to {head}"
    );
    for (i, event) in events.iter().enumerate() {
        assert_eq!(
            event["position"].as_u64(),
            Some(i as u64 + 1),
            "positions are dense"
        );
        assert_eq!(
            event,
            &live[i],
            "the event at position {} is the live store's",
            i + 1
        );
    }
    let by_position: BTreeMap<u64, &Value> = events
        .iter()
        .map(|e| (e["position"].as_u64().expect("position"), e))
        .collect();
    for event in &acked_before {
        let stored = by_position[&event["position"].as_u64().expect("position")];
        assert_eq!(stored["event_id"], event["event_id"]);
        assert_eq!(stored["version"], event["version"]);
        assert_eq!(stored["recorded_at"], event["recorded_at"]);
    }
    assert!(acked_positions.len() == acked_before.len());

    wait_caught_up(&client, &url, head).await;
    assert_eq!(
        states(&client, &url).await,
        fold(&events),
        "the projection is a fold of the restored events"
    );
    assert_eq!(
        group_checkpoint(&client, &url).await,
        group_at,
        "the group is where it was"
    );
    let redelivered = poll(&client, &url).await;
    assert!(
        redelivered.first().is_some_and(|p| *p == group_at + 1),
        "the group delivers from its checkpoint on: {:?}",
        &redelivered[..redelivered.len().min(5)]
    );
    let snapshot = expect_status(
        client
            .get(format!("{url}/v1/aggregates/acc:seed:0/snapshots/latest"))
            .send()
            .await
            .expect("snapshot"),
        200,
        "the snapshot",
    )
    .await;
    assert_eq!(snapshot["state"], json!({"sum": 6}));
    expect_status(
        client
            .get(format!("{url}/v1/schemas/Deposited"))
            .send()
            .await
            .expect("schema"),
        200,
        "the schema",
    )
    .await;
    server.kill();
    assert_verify_ok_with_archive(&restored, &cold);
}

fn assert_verify_ok_with_archive(data: &Path, cold: &str) {
    let verify = offline(&[
        "verify",
        "--data-dir",
        &data.display().to_string(),
        "--archive-url",
        cold,
    ]);
    assert!(verify.status.success(), "verify: {}", text(&verify));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backups_and_restores_refuse_what_they_must() {
    let dir = tempfile::tempdir().expect("tempdir");
    let auth = auth_file(dir.path());
    let data = dir.path().join("data");
    let server = ServeProcess::start(&data, &["--auth", &auth]);
    let url = server.url.clone();
    let client = reqwest::Client::new();
    for i in 0..10 {
        let response = client
            .post(format!("{url}/v1/aggregates/acc:{i}/events"))
            .bearer_auth(ADMIN)
            .json(&json!({"events": [{"aggregate_type": "A", "event_type": "E", "event_data": {}}]}))
            .send()
            .await
            .expect("append");
        assert!(response.status().is_success());
    }
    let backup = |token: &'static str, to: String| {
        let client = client.clone();
        let url = url.clone();
        async move {
            client
                .post(format!("{url}/v1/admin/backup"))
                .bearer_auth(token)
                .json(&json!({ "to": to }))
                .send()
                .await
                .expect("backup")
        }
    };
    let target = dir.path().join("b");
    let to = target.display().to_string();

    // Whole-store routes are refused to a prefix-limited token, whatever its role; a reader
    // is below the role. Nothing is written.
    let body = expect_status(
        backup(PREFIXED_ADMIN, to.clone()).await,
        403,
        "a prefix-limited admin",
    )
    .await;
    assert_eq!(body["error"]["code"], "forbidden");
    let body = expect_status(backup(READER, to.clone()).await, 403, "a reader").await;
    assert_eq!(body["error"]["code"], "forbidden");
    assert!(!target.exists(), "a refused backup writes nothing");
    let body = expect_status(
        backup(ADMIN, "relative/folder".into()).await,
        400,
        "a relative path",
    )
    .await;
    assert_eq!(body["error"]["code"], "invalid_request");
    let body = expect_status(
        backup(ADMIN, data.join("inside").display().to_string()).await,
        400,
        "a folder inside the data folder",
    )
    .await;
    assert_eq!(body["error"]["code"], "invalid_request");

    // A non-empty folder is refused and left alone; an empty one is taken.
    std::fs::create_dir(&target).expect("mkdir");
    std::fs::write(target.join("precious"), b"keep me").expect("write");
    let body = expect_status(backup(ADMIN, to.clone()).await, 409, "a non-empty folder").await;
    assert_eq!(body["error"]["code"], "backup_target_not_empty");
    assert_eq!(std::fs::read(target.join("precious")).expect("read"), b"keep me");
    let refused = cli(&url, ADMIN, &["backup", "--to", &to]);
    assert_eq!(refused.status.code(), Some(3), "a conflict: {}", text(&refused));
    assert!(
        String::from_utf8_lossy(&refused.stderr).contains("backup_target_not_empty"),
        "{}",
        text(&refused)
    );
    let empty = dir.path().join("empty");
    std::fs::create_dir(&empty).expect("mkdir");
    let body = expect_status(
        backup(ADMIN, empty.display().to_string()).await,
        200,
        "an empty folder",
    )
    .await;
    assert_eq!(body["head_position"], 10);
    assert!(empty.join("BACKUP_COMPLETE").exists());
    server.kill();

    // Restore: only a complete backup, only into a new or empty folder.
    let restore = |from: &Path, into: &Path| {
        offline(&[
            "restore",
            "--from",
            &from.display().to_string(),
            "--data-dir",
            &into.display().to_string(),
        ])
    };
    let occupied = dir.path().join("occupied");
    std::fs::create_dir(&occupied).expect("mkdir");
    std::fs::write(occupied.join("file"), b"x").expect("write");
    let refused = restore(&empty, &occupied);
    assert!(
        !refused.status.success() && String::from_utf8_lossy(&refused.stderr).contains("not empty"),
        "{}",
        text(&refused)
    );
    assert_eq!(
        std::fs::read_dir(&occupied).expect("list").count(),
        1,
        "nothing was added"
    );
    // The data folder itself holds no BACKUP_COMPLETE: it is no backup.
    let refused = restore(&data, &dir.path().join("from-data"));
    assert!(
        !refused.status.success() && String::from_utf8_lossy(&refused.stderr).contains("BACKUP_COMPLETE"),
        "{}",
        text(&refused)
    );
    let restored = dir.path().join("restored");
    let done = restore(&empty, &restored);
    assert!(done.status.success(), "{}", text(&done));
    assert_verify_ok(&restored);
}
