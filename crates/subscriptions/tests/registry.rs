//! `Subscriptions` over the reference store: group commit of concurrent acks, a failing
//! journal poisoning one group only, long polls woken by appends, and deletion ending polls.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use factstore_core::{Commit, EventStore, ExpectedVersion, NewEvent};
use factstore_subscriptions::{
    GroupDefinition, GroupLog, Options, Storage, SubscriptionError, Subscriptions,
};
use factstore_testkit::model::ModelStore;
use factstore_testkit::wait::{spawn_waiting, within};
use parking_lot::Mutex;

/// Journals in memory whose appends take a while (a slow disk), counted; a group named
/// `broken` fails every append after its creation.
#[derive(Debug, Default)]
struct SlowStorage {
    appends: Arc<AtomicU64>,
    logs: Mutex<BTreeMap<String, Arc<SlowLog>>>,
}

#[derive(Debug)]
struct SlowLog {
    appends: Arc<AtomicU64>,
    broken: bool,
    records: Mutex<Vec<Vec<u8>>>,
}

impl GroupLog for SlowLog {
    fn append(&self, records: &[&[u8]]) -> Result<(), SubscriptionError> {
        // Slow on purpose: acks that come while a write is under way wait for the next.
        std::thread::sleep(Duration::from_millis(30));
        if self.broken {
            return Err(SubscriptionError::Unavailable("the disk is gone".into()));
        }
        self.appends.fetch_add(1, Ordering::SeqCst);
        self.records.lock().extend(records.iter().map(|r| r.to_vec()));
        Ok(())
    }

    fn rewrite(&self, records: &[&[u8]]) -> Result<(), SubscriptionError> {
        *self.records.lock() = records.iter().map(|r| r.to_vec()).collect();
        Ok(())
    }

    fn len(&self) -> u64 {
        0
    }
}

impl Storage for SlowStorage {
    fn load(&self) -> Result<Vec<(String, Arc<dyn GroupLog>, Vec<Vec<u8>>)>, SubscriptionError> {
        Ok(Vec::new())
    }

    fn create(&self, group: &str, records: &[&[u8]]) -> Result<Arc<dyn GroupLog>, SubscriptionError> {
        let log = Arc::new(SlowLog {
            appends: self.appends.clone(),
            broken: group == "broken",
            records: Mutex::new(records.iter().map(|r| r.to_vec()).collect()),
        });
        self.logs.lock().insert(group.to_owned(), log.clone());
        Ok(log)
    }

    fn delete(&self, group: &str) -> Result<(), SubscriptionError> {
        self.logs.lock().remove(group);
        Ok(())
    }
}

async fn append(store: &ModelStore, aggregate: &str, n: usize) {
    let events = (0..n)
        .map(|_| NewEvent::new("A", "E", serde_json::json!({})))
        .collect();
    store
        .commit(Commit::single(aggregate, ExpectedVersion::Any, events))
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_acks_share_journal_writes() {
    let store = Arc::new(ModelStore::new());
    append(&store, "a", 40).await;
    let storage = Arc::new(SlowStorage::default());
    let subscriptions = Subscriptions::open(store.clone(), storage.clone(), Options::default())
        .await
        .unwrap();
    subscriptions.put("g", GroupDefinition::default()).await.unwrap();
    let got = subscriptions
        .poll("g", "w", 40, Duration::from_secs(5))
        .await
        .unwrap();
    assert_eq!(got.len(), 40);
    let before = storage.appends.load(Ordering::SeqCst);
    let mut acks = Vec::new();
    for delivery in got {
        let subscriptions = subscriptions.clone();
        let p = delivery.event.position();
        acks.push(tokio::spawn(async move { subscriptions.ack("g", &[p]).await }));
    }
    within("the acks", Duration::from_secs(30), async {
        for ack in acks {
            ack.await.unwrap().unwrap();
        }
    })
    .await;
    let writes = storage.appends.load(Ordering::SeqCst) - before;
    assert!(writes < 20, "40 concurrent acks took {writes} journal writes");
    assert_eq!(subscriptions.status("g").unwrap().checkpoint, 40);
    subscriptions.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_journal_poisons_its_group_only() {
    let store = Arc::new(ModelStore::new());
    append(&store, "a", 2).await;
    let subscriptions = Subscriptions::open(
        store.clone(),
        Arc::new(SlowStorage::default()),
        Options::default(),
    )
    .await
    .unwrap();
    subscriptions
        .put("broken", GroupDefinition::default())
        .await
        .unwrap();
    subscriptions
        .put("fine", GroupDefinition::default())
        .await
        .unwrap();
    for group in ["broken", "fine"] {
        let got = subscriptions
            .poll(group, "w", 1, Duration::from_secs(5))
            .await
            .unwrap();
        assert_eq!(got.len(), 1);
    }
    let error = subscriptions.ack("broken", &[1]).await.unwrap_err();
    assert!(matches!(error, SubscriptionError::Unavailable(_)), "{error:?}");
    let error = subscriptions
        .poll("broken", "w", 1, Duration::ZERO)
        .await
        .unwrap_err();
    assert!(matches!(error, SubscriptionError::Unavailable(_)), "{error:?}");
    subscriptions.ack("fine", &[1]).await.unwrap();
    assert_eq!(
        subscriptions
            .poll("fine", "w", 5, Duration::ZERO)
            .await
            .unwrap()
            .len(),
        1
    );
    subscriptions.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleting_a_group_ends_its_long_polls() {
    let store = Arc::new(ModelStore::new());
    let subscriptions = Subscriptions::open(
        store.clone(),
        Arc::new(SlowStorage::default()),
        Options::default(),
    )
    .await
    .unwrap();
    subscriptions.put("g", GroupDefinition::default()).await.unwrap();
    let waiting = {
        let subscriptions = subscriptions.clone();
        spawn_waiting("a long poll of an empty group", async move {
            subscriptions.poll("g", "w", 5, Duration::from_secs(30)).await
        })
        .await
    };
    subscriptions.delete("g").await.unwrap();
    let answer = within(
        "the long poll, once its group was deleted",
        Duration::from_secs(5),
        waiting,
    )
    .await
    .unwrap();
    assert!(
        matches!(answer, Err(SubscriptionError::NotFound { .. })),
        "{answer:?}"
    );
    // A new group of the same name starts afresh.
    append(&store, "a", 1).await;
    subscriptions.put("g", GroupDefinition::default()).await.unwrap();
    let got = subscriptions
        .poll("g", "w", 5, Duration::from_secs(5))
        .await
        .unwrap();
    assert_eq!(got[0].attempt, 1);
    subscriptions.close().await;
}
