#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
//! No usage record is lost to a control-plane outage: under steady load the control plane
//! hangs (the filters' batches reach its socket and are never stored), is killed, requests go
//! on, it comes back on the same database, and then the ledger holds exactly one record per
//! answered request. Runs on SQLite, and on PostgreSQL with `TOLLGATE_E2E_DB=postgres`.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::json;
use tollgate_e2e::{
    client, eventually, free_port, mock_config, port_open, test_database, ControlPlane, Envoy, Mock,
};

const KEY: &str = "sk-usage-outage";
/// Client threads keeping the load steady.
const CLIENTS: usize = 2;

/// Rows in the control plane's usage ledger.
fn stored_records(database_url: &str) -> u64 {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let store = tollgate::store::Store::connect(database_url).await.unwrap();
        let count = store.usage_count().await.unwrap();
        store.close().await;
        count
    })
}

#[test]
fn every_answered_request_is_stored_once_across_a_control_plane_outage() {
    let dir = tempfile::tempdir().unwrap();
    let mock = Mock::start(dir.path()).unwrap();
    let config_path = dir.path().join("config.yaml");
    std::fs::write(&config_path, mock_config(&mock, Some(KEY))).unwrap();
    let (database, _pg) = test_database(dir.path()).unwrap();
    let grpc_port = free_port().unwrap();
    let mut control_plane =
        ControlPlane::start(dir.path(), &config_path, grpc_port, &database).unwrap();
    let envoy = Envoy::start(dir.path(), "envoy-usage", grpc_port).unwrap();
    // Every worker holds the first snapshot (each listing opens a new connection).
    assert!(
        eventually(Duration::from_secs(15), || (0..12)
            .all(|_| !envoy.model_ids(KEY).is_empty())),
        "the first snapshot never arrived"
    );

    // Steady load: each client sends one request after another until told to stop.
    let stop = Arc::new(AtomicBool::new(false));
    let answered = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicU64::new(0));
    let clients: Vec<_> = (0..CLIENTS)
        .map(|client_number| {
            let (stop, answered, failed) = (stop.clone(), answered.clone(), failed.clone());
            let url = envoy.url.clone();
            std::thread::spawn(move || {
                let http = client();
                let mut n = 0u64;
                while !stop.load(Ordering::SeqCst) {
                    n += 1;
                    let content = format!("client {client_number} request {n}");
                    let model = if n.is_multiple_of(2) { "gpt-mock" } else { "claude-mock" };
                    let sent = http
                        .post(format!("{url}/v1/chat/completions"))
                        .bearer_auth(KEY)
                        .json(&json!({"model": model, "messages": [{"role": "user", "content": content}]}))
                        .send();
                    match sent {
                        Ok(response) if response.status() == 200 => {
                            answered.fetch_add(1, Ordering::SeqCst);
                        }
                        other => {
                            if failed.fetch_add(1, Ordering::SeqCst) < 3 {
                                let what = match other {
                                    Ok(response) => format!("{} {}", response.status(), response.text().unwrap_or_default()),
                                    Err(error) => error.to_string(),
                                };
                                eprintln!("request failed: {what}");
                            }
                        }
                    }
                }
            })
        })
        .collect();
    let answered_by = |at_least: u64, within: Duration| {
        let deadline = Instant::now() + within;
        while answered.load(Ordering::SeqCst) < at_least && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        answered.load(Ordering::SeqCst)
    };

    // Load with the control plane up, then it hangs (its sockets still accept what the
    // filters send: batches that are sent but never stored) and dies mid-load.
    let before_outage = answered_by(100, Duration::from_secs(30));
    assert!(before_outage >= 100, "the gateway is not serving");
    control_plane.process.signal("STOP");
    let hung = answered_by(before_outage + 100, Duration::from_secs(30));
    // A few of the filters' ticks pass while it hangs.
    std::thread::sleep(Duration::from_millis(800));
    control_plane.process.signal("KILL");
    control_plane.process.wait_exit(Duration::from_secs(10));
    assert!(!port_open(grpc_port));
    let during = answered_by(hung + 150, Duration::from_secs(30));
    assert!(
        during >= hung + 150,
        "the gateway stopped serving during the outage"
    );

    // Back on the same database; load goes on a little, then stops.
    let _control_plane =
        ControlPlane::start(dir.path(), &config_path, grpc_port, &database).unwrap();
    answered_by(during + 100, Duration::from_secs(30));
    stop.store(true, Ordering::SeqCst);
    for client in clients {
        client.join().unwrap();
    }
    let answered = answered.load(Ordering::SeqCst);
    assert_eq!(
        failed.load(Ordering::SeqCst),
        0,
        "every request was answered"
    );

    // Every record arrives (the filters resend what was never acknowledged) ...
    let all_stored = eventually(Duration::from_secs(30), || {
        stored_records(&database) >= answered
    });
    assert!(
        all_stored,
        "stored {} of {answered} records",
        stored_records(&database)
    );
    // ... and none twice, even after more ticks have passed.
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(stored_records(&database), answered);
}
