//! Test helpers: throwaway SQLite files and PostgreSQL databases.
// Helpers of tests: a failure should stop the test loudly.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use sqlx::{Connection, Executor, PgConnection};
use tollgate::store::Store;

/// PostgreSQL server the tests use; CI has one, so an unreachable server fails the tests.
pub fn pg_base_url() -> String {
    std::env::var("TOLLGATE_TEST_PG_URL")
        .ok()
        .filter(|url| !url.is_empty())
        .unwrap_or_else(|| "postgres://postgres@127.0.0.1:5432/test".to_string())
}

/// `base` with its database name replaced.
fn with_database(base: &str, database: &str) -> String {
    let (without_query, query) = match base.split_once('?') {
        Some((url, query)) => (url, format!("?{query}")),
        None => (base, String::new()),
    };
    let scheme_end = without_query.find("://").map_or(0, |i| i + 3);
    let path_start = without_query[scheme_end..]
        .find('/')
        .map(|i| i + scheme_end);
    let authority = match path_start {
        Some(start) => &without_query[..start],
        None => without_query,
    };
    format!("{authority}/{database}{query}")
}

/// A fresh PostgreSQL database, dropped (even after a failed assertion) when this is dropped.
pub struct PgTestDb {
    admin_url: String,
    name: String,
    /// URL of the new database.
    pub url: String,
}

impl PgTestDb {
    pub async fn create() -> PgTestDb {
        static COUNTER: AtomicU64 = AtomicU64::new(0);
        let admin_url = pg_base_url();
        let mut admin = PgConnection::connect(&admin_url)
            .await
            .unwrap_or_else(|error| {
                panic!(
                    "PostgreSQL at {admin_url} is unreachable ({error}); set TOLLGATE_TEST_PG_URL"
                )
            });
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .subsec_nanos();
        let name = format!(
            "tollgate_test_{}_{}_{}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed),
            nanos
        );
        admin
            .execute(format!("CREATE DATABASE {name}").as_str())
            .await
            .unwrap();
        admin.close().await.unwrap();
        let url = with_database(&admin_url, &name);
        PgTestDb {
            admin_url,
            name,
            url,
        }
    }
}

impl Drop for PgTestDb {
    fn drop(&mut self) {
        let admin_url = self.admin_url.clone();
        let name = self.name.clone();
        // Drop runs inside the test's runtime, which cannot block on async work: use a thread
        // with its own runtime.
        let handle = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            runtime.block_on(async {
                if let Ok(mut admin) = PgConnection::connect(&admin_url).await {
                    let _ = admin
                        .execute(format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)").as_str())
                        .await;
                    let _ = admin.close().await;
                }
            });
        });
        let _ = handle.join();
    }
}

/// A store on a fresh SQLite file; keep the directory alive as long as the store.
pub async fn sqlite_store() -> (Store, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let url = format!(
        "sqlite://{}?mode=rwc",
        dir.path().join("tollgate.db").display()
    );
    (Store::connect(&url).await.unwrap(), dir)
}

#[test]
fn database_name_replacement() {
    assert_eq!(
        with_database("postgres://postgres@127.0.0.1:5432/test", "x"),
        "postgres://postgres@127.0.0.1:5432/x"
    );
    assert_eq!(
        with_database("postgres://u:p@h/test?sslmode=disable", "x"),
        "postgres://u:p@h/x?sslmode=disable"
    );
    assert_eq!(
        with_database("postgres://h:5432", "x"),
        "postgres://h:5432/x"
    );
}
