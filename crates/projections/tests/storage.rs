//! Projection storage under faults (`FaultFs`): after a crash that drops or tears unsynced
//! writes, the stored states are exactly a fold of the events up to the stored checkpoint
//! (no event applied twice, none skipped); a failed sync stops the projection instead of going
//! on; restarts resume from the checkpoint; compaction and interrupted rebuilds keep a working
//! projection.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use factstore_core::{Commit, Event, EventStore, ExpectedVersion, NewEvent};
use factstore_projections::definition::ProjectionDefinition;
use factstore_projections::fold::{EventView, apply, key_of};
use factstore_projections::storage::{JournalStorage, ProjectionStorage, replay};
use factstore_projections::{Projections, ProjectionsOptions, Status};
use factstore_testkit::faultfs::{CrashMode, FaultFs, Repeat};
use factstore_testkit::model::ModelStore;
use factstore_testkit::wait;
use serde_json::{Value, json};

const ROOT: &str = "/data/projections";

fn counting() -> ProjectionDefinition {
    serde_json::from_value(json!({
        "key": "aggregate_id",
        "initial": {"n": 0},
        "on": {"*": [
            {"op": "inc", "path": "/n"},
            {"op": "add", "path": "/sum", "from": "/event_data/amount"},
            {"op": "append", "path": "/positions", "from": "/position"}
        ]}
    }))
    .unwrap()
}

fn options() -> ProjectionsOptions {
    ProjectionsOptions {
        snapshot_every: 4,
        batch_events: 16,
        compact_bytes_min: 4096,
    }
}

async fn open(fs: &FaultFs, store: &Arc<ModelStore>) -> Projections {
    let storage = JournalStorage::open(Arc::new(fs.clone()), Path::new(ROOT)).unwrap();
    Projections::open(store.clone(), Arc::new(storage), options())
        .await
        .unwrap()
}

async fn append(store: &ModelStore, aggregate: usize, count: usize) {
    let events = (0..count)
        .map(|i| NewEvent::new("Account", "Deposited", json!({"amount": i + 1})))
        .collect();
    store
        .commit(Commit::single(
            &format!("acc:{aggregate}"),
            ExpectedVersion::Any,
            events,
        ))
        .await
        .unwrap();
}

/// Every key's state from folding `events` (those up to `position`) by `definition`.
fn model_fold(definition: &ProjectionDefinition, events: &[Event], position: u64) -> BTreeMap<String, Value> {
    let compiled = definition.compile(&factstore_core::Limits::default()).unwrap();
    let mut states = BTreeMap::new();
    for event in events
        .iter()
        .filter(|e| e.position() <= position && compiled.filter().matches(e))
    {
        let view = EventView::new(event);
        if let Some(key) = key_of(&compiled, &view).unwrap() {
            let state = states.entry(key).or_insert_with(|| compiled.initial().clone());
            apply(&compiled, state, &view).unwrap();
        }
    }
    states
}

/// Waits until the status of projection `name` passes `done`; fails with the last status.
async fn wait_until(
    projections: &Projections,
    name: &str,
    mut done: impl FnMut(&factstore_projections::ProjectionStatus) -> bool,
) {
    let what = format!("projection {name} to reach the status awaited");
    wait::until_ok(&what, Duration::from_secs(10), || {
        let status = projections.status(name).unwrap();
        let reached = done(&status);
        async move {
            if reached {
                Ok(())
            } else {
                Err(format!("{status:?}"))
            }
        }
    })
    .await;
}

async fn states(projections: &Projections, name: &str) -> BTreeMap<String, Value> {
    let page = projections.states(name, None, 100_000).unwrap();
    page.states.into_iter().collect()
}

/// What the log on disk holds for the live generation: its checkpoint and its states.
fn stored(fs: &FaultFs, name: &str) -> (u64, BTreeMap<String, Value>) {
    let storage = JournalStorage::open(Arc::new(fs.clone()), Path::new(ROOT)).unwrap();
    let mut live = None;
    for generation in storage.open_all().unwrap() {
        assert_eq!(generation.name, name);
        let replayed = replay(&generation.records, "test").unwrap();
        if replayed.live {
            live = Some(replayed);
        }
    }
    let live = live.expect("a live generation");
    (
        live.position,
        live.keys.into_iter().map(|(k, r)| (k, r.state)).collect(),
    )
}

#[tokio::test]
async fn a_crash_at_any_moment_keeps_states_and_checkpoint_consistent() {
    let mut interrupted = 0;
    for seed in 0..12u64 {
        let fs = FaultFs::new();
        let store = Arc::new(ModelStore::new());
        let projections = open(&fs, &store).await;
        // Some history to catch up with (16 events per batch), then appends racing the fold.
        for round in 0..30 {
            append(&store, round % 3, 1 + round % 4).await;
        }
        projections.put("counts", counting()).await.unwrap();
        // The interruption: every sync from the seed's on fails (the projection stops there, its
        // last record maybe half written), or, for the last seeds, a crash at whatever moment
        // the fold has reached.
        if seed < 9 {
            fs.fail_sync_after(seed, Repeat::Forever);
        }
        for round in 0..(5 + seed as usize) {
            append(&store, round % 3, 1 + round % 4).await;
            if round as u64 % 3 == seed % 3 {
                tokio::task::yield_now().await;
            }
        }
        // Time passes on purpose, a different while for each seed: the crash comes wherever
        // the fold has got to by then.
        tokio::time::sleep(Duration::from_micros(200 * seed)).await;
        let mode = if seed % 2 == 0 {
            CrashMode::DropUnsynced
        } else {
            CrashMode::PartialPersistence { seed }
        };
        fs.clear_faults();
        fs.crash_with(mode);
        projections.shutdown().await;

        let events = store.events();
        let (position, on_disk) = stored(&fs, "counts");
        let head = events.last().map_or(0, Event::position);
        if position < head {
            interrupted += 1;
        }
        assert_eq!(
            on_disk,
            model_fold(&counting(), &events, position),
            "seed {seed}: the stored states at {position}"
        );

        // A restart resumes from the checkpoint and ends at the fold of every event.
        let reopened = open(&fs, &store).await;
        wait_until(&reopened, "counts", |s| s.position >= head).await;
        assert_eq!(
            states(&reopened, "counts").await,
            model_fold(&counting(), &events, head),
            "seed {seed}"
        );
        reopened.shutdown().await;
    }
    assert!(
        interrupted > 0,
        "no crash came before the projection had caught up: the test tests nothing"
    );
}

#[tokio::test]
async fn a_failed_sync_stops_the_projection_and_a_restart_resumes_it() {
    let fs = FaultFs::new();
    let store = Arc::new(ModelStore::new());
    let projections = open(&fs, &store).await;
    projections.put("counts", counting()).await.unwrap();
    append(&store, 1, 3).await;
    wait_until(&projections, "counts", |s| s.position == 3).await;
    fs.fail_sync_after(0, Repeat::Forever);
    append(&store, 1, 2).await;
    wait_until(&projections, "counts", |s| s.status == Status::Failed).await;
    let status = projections.status("counts").unwrap();
    assert_eq!(status.position, 3, "nothing unsynced is served");
    assert!(
        status.error.as_deref().unwrap().starts_with("storage:"),
        "{status:?}"
    );
    append(&store, 2, 1).await;
    // Time passes on purpose: a window in which a log that took more would show it.
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(
        projections.status("counts").unwrap().position,
        3,
        "a poisoned log takes nothing more"
    );
    projections.shutdown().await;

    fs.clear_faults();
    fs.crash();
    let reopened = open(&fs, &store).await;
    wait_until(&reopened, "counts", |s| s.position == 6).await;
    assert_eq!(
        states(&reopened, "counts").await,
        model_fold(&counting(), &store.events(), 6)
    );
    reopened.shutdown().await;
}

#[tokio::test]
async fn compaction_and_restarts_keep_states_and_snapshots() {
    let fs = FaultFs::new();
    let store = Arc::new(ModelStore::new());
    let projections = open(&fs, &store).await;
    projections.put("counts", counting()).await.unwrap();
    for round in 0..60 {
        append(&store, round % 5, 3).await;
    }
    wait_until(&projections, "counts", |s| s.position == 180).await;
    projections.shutdown().await;
    let files = fs.file_names(format!("{ROOT}/counts"));
    assert_eq!(files, vec!["gen-1.journal".to_owned()]);
    let size = fs
        .read_file(format!("{ROOT}/counts/gen-1.journal"))
        .unwrap()
        .len();
    // 60 batches each rewriting a growing array: compaction keeps the file near its image.
    assert!(size < 64 * 1024, "the log was not compacted: {size} bytes");
    fs.crash();
    let reopened = open(&fs, &store).await;
    assert_eq!(reopened.status("counts").unwrap().position, 180);
    assert_eq!(
        states(&reopened, "counts").await,
        model_fold(&counting(), &store.events(), 180)
    );
    // Snapshots survived compaction: time travel to every version agrees with the fold.
    let events = store.events();
    for event in events.iter().filter(|e| e.aggregate_id() == "acc:0").step_by(5) {
        let query = factstore_projections::StateQuery {
            as_of: Some(event.recorded_at()),
            ..Default::default()
        };
        let state = reopened.state("counts", "acc:0", &query).await.unwrap();
        let expected: Vec<Event> = events
            .iter()
            .filter(|e| e.recorded_at() <= event.recorded_at())
            .cloned()
            .collect();
        let last = expected.last().unwrap().position();
        assert_eq!(
            Some(&state.state),
            model_fold(&counting(), &expected, last).get("acc:0")
        );
    }
    reopened.shutdown().await;
}

#[tokio::test]
async fn a_rebuild_interrupted_by_a_crash_leaves_the_old_projection_serving_and_resumes() {
    let fs = FaultFs::new();
    let store = Arc::new(ModelStore::new());
    let projections = open(&fs, &store).await;
    projections.put("counts", counting()).await.unwrap();
    for round in 0..40 {
        append(&store, round % 4, 5).await;
    }
    wait_until(&projections, "counts", |s| s.position == 200).await;
    let mut changed = counting();
    changed.initial = json!({"n": 1000});
    // The second generation's first syncs go through, then every sync fails: the rebuild stops
    // part way (a crash would leave the same files).
    fs.fail_sync_after(6, Repeat::Forever);
    projections.put("counts", changed.clone()).await.unwrap();
    wait_until(&projections, "counts", |s| s.status == Status::Failed).await;
    assert_eq!(
        projections.definition("counts").unwrap(),
        counting(),
        "the old definition serves"
    );
    projections.shutdown().await;
    assert_eq!(
        fs.file_names(format!("{ROOT}/counts")).len(),
        2,
        "the rebuild was interrupted"
    );
    fs.clear_faults();
    fs.crash();
    let reopened = open(&fs, &store).await;
    // Either the old definition still serves (rebuild resumed) or the new one has swapped in;
    // both end at the fold of the new definition.
    wait_until(&reopened, "counts", |s| {
        s.status == Status::Running && s.position == 200
    })
    .await;
    assert_eq!(
        states(&reopened, "counts").await,
        model_fold(&changed, &store.events(), 200)
    );
    assert_eq!(reopened.definition("counts").unwrap(), changed);
    reopened.shutdown().await;
    assert_eq!(
        fs.file_names(format!("{ROOT}/counts")).len(),
        1,
        "the old generation is removed"
    );
}

#[tokio::test]
async fn a_delete_interrupted_after_the_live_log_is_gone_is_finished_at_open() {
    let fs = FaultFs::new();
    let store = Arc::new(ModelStore::new());
    let projections = open(&fs, &store).await;
    projections.put("counts", counting()).await.unwrap();
    append(&store, 0, 3).await;
    wait_until(&projections, "counts", |s| s.position == 3).await;
    projections.delete("counts").await.unwrap();
    assert!(projections.status("counts").is_err());
    projections.shutdown().await;
    fs.crash();
    let reopened = open(&fs, &store).await;
    assert!(reopened.list().is_empty());
    reopened.shutdown().await;
}

/// Names valid by the rules (1 to 100 bytes) whose `%XX` folder name would pass 255 bytes:
/// on a real file system creating them failed ("File name too long"). Each is created, serves,
/// and opens again after a restart, next to a name in the older, short form.
#[tokio::test]
async fn the_longest_valid_names_live_on_a_real_file_system() {
    use factstore_engine::io::StdFileSystem;
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("projections");
    let store = Arc::new(ModelStore::new());
    let open_real = || async {
        let storage = JournalStorage::open(Arc::new(StdFileSystem), &root).unwrap();
        Projections::open(store.clone(), Arc::new(storage), options())
            .await
            .unwrap()
    };
    let names = [".".repeat(100), "é".repeat(50), "short name".to_owned()];
    let projections = open_real().await;
    for name in &names {
        projections.put(name, counting()).await.unwrap();
    }
    append(&store, 0, 3).await;
    for name in &names {
        wait_until(&projections, name, |s| s.position == 3).await;
    }
    projections.shutdown().await;
    let mut folders: Vec<String> = std::fs::read_dir(&root)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    folders.sort();
    assert!(folders.iter().all(|f| f.len() <= 255), "{folders:?}");
    assert!(
        folders.contains(&"short%20name".to_owned()),
        "the short form is kept: {folders:?}"
    );
    let reopened = open_real().await;
    let mut listed: Vec<String> = reopened.list().into_iter().map(|s| s.name).collect();
    listed.sort();
    let mut expected = names.to_vec();
    expected.sort();
    assert_eq!(listed, expected);
    for name in &names {
        wait_until(&reopened, name, |s| s.position == 3).await;
    }
    reopened.shutdown().await;
}
