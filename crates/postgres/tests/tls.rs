//! TLS to PostgreSQL, against a real server of the test's own (see `common/cluster.rs`): each
//! `sslmode` connects when libpq's would, and refuses with a message saying why when libpq's
//! would: a certificate from another CA, a name the certificate is not for, a server that
//! takes TLS only or offers none.

mod common;

use common::cluster::{Cluster, SERVER_NAME, Setup};
use factstore_core::{Commit, EventQuery, EventStore, ExpectedVersion, NewEvent};
use factstore_postgres::{Connector, PgOptions, PgStore};
use serde_json::json;

fn options(url: &str) -> PgOptions {
    let mut options = PgOptions::new(url);
    options.pool_size = 2;
    options
}

/// Connects with `url`; on success, says whether the connection is encrypted.
async fn connect(url: &str) -> Result<bool, String> {
    let connector = Connector::new(&options(url)).map_err(|e| e.to_string())?;
    let client = connector.connect().await.map_err(|e| e.to_string())?;
    let row = client
        .query_one("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()", &[])
        .await
        .map_err(|e| e.to_string())?;
    Ok(row.get(0))
}

async fn refused(url: &str) -> String {
    match connect(url).await {
        Ok(tls) => panic!("{url} connected (TLS: {tls}), and should not have"),
        Err(error) => error,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_sslmode_against_a_server_that_takes_tls_only() {
    let Some(cluster) = Cluster::start(Setup {
        ssl: true,
        tls_only: true,
    }) else {
        return;
    };
    let (ca, other) = (cluster.ca.display(), cluster.other_ca.display());
    // By the certificate's name, at the server's address.
    let by_name = |params: &str| {
        format!(
            "postgres://postgres@{SERVER_NAME}:{}/postgres?hostaddr=127.0.0.1&{params}",
            cluster.port
        )
    };

    for params in ["sslmode=require", "sslmode=prefer", "application_name=x"] {
        let url = cluster.url("127.0.0.1", params);
        assert_eq!(connect(&url).await, Ok(true), "{url}");
    }
    let url = by_name(&format!("sslmode=verify-full&sslrootcert={ca}"));
    assert_eq!(connect(&url).await, Ok(true), "{url}");
    // verify-ca checks the chain and not the name: the address is not the certificate's name.
    let url = cluster.url("127.0.0.1", &format!("sslmode=verify-ca&sslrootcert={ca}"));
    assert_eq!(connect(&url).await, Ok(true), "{url}");

    let error = refused(&cluster.url("127.0.0.1", &format!("sslmode=verify-full&sslrootcert={ca}"))).await;
    assert!(
        error.contains("invalid peer certificate")
            && error.contains("not valid for name")
            && error.contains("sslmode=verify-full"),
        "{error}"
    );
    for mode in ["verify-full", "verify-ca", "require"] {
        let error = refused(&by_name(&format!("sslmode={mode}&sslrootcert={other}"))).await;
        assert!(
            error.contains("invalid peer certificate")
                && error.contains("UnknownIssuer")
                && error.contains(&format!(
                    "sslmode={mode}, trusting the CA certificates of {other}"
                )),
            "{mode}: {error}"
        );
    }
    let error = refused(&cluster.url("127.0.0.1", "sslmode=disable")).await;
    assert!(
        error.contains("no pg_hba.conf entry") && error.contains("no encryption"),
        "{error}"
    );
    // Each text once, not repeated by the chain of causes.
    assert_eq!(error.matches("no pg_hba.conf entry").count(), 1, "{error}");

    // A whole store over TLS: its pool, writers and listener all connect (the server takes
    // nothing else), migrate, commit and read.
    let store = PgStore::open(options(&by_name(&format!(
        "sslmode=verify-full&sslrootcert={ca}"
    ))))
    .await
    .unwrap_or_else(|e| panic!("open over TLS: {e}\n{}", cluster.log()));
    store
        .commit(Commit::single(
            "account:1",
            ExpectedVersion::Any,
            vec![NewEvent::new("Account", "Opened", json!({"tls": true}))],
        ))
        .await
        .expect("commit over TLS");
    let page = store
        .read_events(EventQuery::all(0, 10))
        .await
        .expect("read over TLS");
    assert_eq!(page.events.len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prefer_goes_plain_and_require_refuses_when_the_server_has_no_tls() {
    let Some(cluster) = Cluster::start(Setup {
        ssl: false,
        tls_only: false,
    }) else {
        return;
    };
    assert_eq!(
        connect(&cluster.url("127.0.0.1", "sslmode=prefer")).await,
        Ok(false)
    );
    assert_eq!(
        connect(&cluster.url("127.0.0.1", "sslmode=disable")).await,
        Ok(false)
    );
    for mode in ["require", "verify-ca", "verify-full"] {
        let error = refused(&cluster.url(
            "127.0.0.1",
            &format!("sslmode={mode}&sslrootcert={}", cluster.ca.display()),
        ))
        .await;
        assert!(error.contains("server does not support TLS"), "{mode}: {error}");
    }
}
