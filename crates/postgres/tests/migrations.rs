//! Migrations: applied once, recorded, and a schema this binary does not know is refused.

mod common;

use common::TestSchema;
use factstore_postgres::PgStore;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn migrations_apply_once_and_are_recorded() {
    let Some(schema) = TestSchema::create().await else {
        return;
    };
    let options = schema.options();
    let first = factstore_postgres::store::migrate(&options)
        .await
        .expect("migrate");
    assert_eq!(first, vec![1, 2, 4]);
    let again = factstore_postgres::store::migrate(&options)
        .await
        .expect("migrate again");
    assert!(again.is_empty(), "a second run applies nothing");
    let client = schema.connect().await;
    let versions: Vec<i32> = client
        .query("SELECT version FROM schema_migrations ORDER BY version", &[])
        .await
        .expect("query")
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(versions, vec![1, 2, 4]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn servers_starting_together_migrate_once() {
    let Some(schema) = TestSchema::create().await else {
        return;
    };
    let opens: Vec<_> = (0..4).map(|_| PgStore::open(schema.options())).collect();
    for opened in futures::future::join_all(opens).await {
        opened.expect("every server opens");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unmigrated_or_newer_schema_is_refused() {
    let Some(schema) = TestSchema::create().await else {
        return;
    };
    let mut options = schema.options();
    options.migrate = false;
    let error = PgStore::open(options.clone()).await.expect_err("not migrated");
    assert!(error.to_string().contains("factstore migrate"), "{error}");

    factstore_postgres::store::migrate(&options)
        .await
        .expect("migrate");
    PgStore::open(options.clone()).await.expect("opens once migrated");
    let client = schema.connect().await;
    client
        .execute(
            "INSERT INTO schema_migrations (version, name) VALUES (999, 'future')",
            &[],
        )
        .await
        .expect("insert");
    let error = factstore_postgres::store::migrate(&options)
        .await
        .expect_err("a newer schema");
    assert!(
        error.to_string().contains("newer than this factstore knows"),
        "{error}"
    );
}
