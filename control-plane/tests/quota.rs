//! The control plane as the quota authority, on SQLite and PostgreSQL: the grant rule's
//! exact leases, overruns, windows, PARALLEL slots (acquire, release, freed when a stream
//! ends or its holder expires), bad asks, and no more than the limit granted by two control
//! planes on one database to eight concurrent streams.
// Test helpers outside #[test] functions: a failure should stop the test loudly.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use tollgate::proto::{BudgetScope, LimitKind, QuotaAsk, QuotaLease as WireLease};
use tollgate::quota;
use tollgate::server::{self, ServeError};
use tollgate::store::{now_unix_ms, QuotaCounter, QuotaKind, QuotaLease, QuotaWant, Store};
use tollgate::sync::SyncHub;

use common::{on_both, Db, FakeFilter};

const WAIT: Duration = Duration::from_secs(10);

/// One control plane serving FilterSync on 127.0.0.1.
struct Server {
    hub: Arc<SyncHub>,
    address: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<Result<(), ServeError>>,
}

impl Server {
    async fn start(url: &str) -> Server {
        let hub = SyncHub::start(common::connect(url).await).await.unwrap();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let (stop, stopped) = oneshot::channel::<()>();
        let served = hub.clone();
        let task = tokio::spawn(async move {
            server::serve(served, listener, async {
                let _ = stopped.await;
            })
            .await
        });
        Server {
            hub,
            address,
            stop: Some(stop),
            task,
        }
    }

    async fn filter(&self) -> FakeFilter {
        let mut filter = FakeFilter::connect(self.address).await;
        filter.hello("node", "vm", 0).await;
        filter.next_snapshot().await;
        filter
    }

    async fn shutdown(mut self) {
        if let Some(stop) = self.stop.take() {
            stop.send(()).unwrap();
        }
        let result = tokio::time::timeout(WAIT, self.task)
            .await
            .expect("server did not stop");
        result.unwrap().unwrap();
    }
}

/// The start of the current minute window.
fn this_window() -> u64 {
    let now = now_unix_ms();
    now - now % quota::WINDOW_MS
}

fn window_ask(kind: LimitKind, window: u64, limit: u64, need: u64, want: u64) -> QuotaAsk {
    QuotaAsk {
        scope: BudgetScope::Key as i32,
        id: "k1".into(),
        kind: kind as i32,
        limit,
        window_start_unix_ms: window,
        need,
        want,
        overrun: 0,
        release: 0,
    }
}

fn parallel_ask(limit: u64, need: u64, want: u64, release: u64) -> QuotaAsk {
    QuotaAsk {
        scope: BudgetScope::Deployment as i32,
        id: "d1".into(),
        kind: LimitKind::Parallel as i32,
        limit,
        window_start_unix_ms: 0,
        need,
        want,
        overrun: 0,
        release,
    }
}

/// Asks `ask` alone and returns (granted, remaining), checking the lease echoes the ask.
async fn ask_one(filter: &mut FakeFilter, request_id: u64, ask: QuotaAsk) -> (u64, u64) {
    filter.ask_quota(request_id, vec![ask.clone()]).await;
    let grant = filter.next_quota_grant().await;
    assert_eq!(grant.request_id, request_id);
    assert_eq!(grant.leases.len(), 1);
    let lease = &grant.leases[0];
    assert_eq!(
        (
            lease.scope,
            &lease.id,
            lease.kind,
            lease.window_start_unix_ms
        ),
        (ask.scope, &ask.id, ask.kind, ask.window_start_unix_ms)
    );
    (lease.granted, lease.remaining)
}

async fn rule_gives_exact_leases(db: Db) {
    let server = Server::start(db.url()).await;
    let mut filter = server.filter().await;
    let window = this_window();
    // limit 60, need 1, want 3: 3 while an eighth of what is left is at least 3, then 2,
    // then 1 each to the end, then nothing.
    let mut expected = Vec::new();
    let mut left = 60;
    for _ in 0..13 {
        left -= 3;
        expected.push((3, left));
    }
    assert_eq!(left, 21);
    for remaining in [19, 17, 15] {
        expected.push((2, remaining));
    }
    for remaining in (0..15).rev() {
        expected.push((1, remaining));
    }
    expected.push((0, 0));
    expected.push((0, 0));
    let mut got = Vec::new();
    for n in 0..expected.len() {
        let ask = window_ask(LimitKind::Requests, window, 60, 1, 3);
        got.push(ask_one(&mut filter, 100 + n as u64, ask).await);
    }
    assert_eq!(got, expected);
    let total: u64 = got.iter().map(|(granted, _)| granted).sum();
    assert_eq!(total, 60);

    // Tokens with a need of 300 (an estimate) and a limit of 1000: 300 while 300 is left,
    // then nothing although 100 remain. Two asks in one request, answered in order.
    let tokens = window_ask(LimitKind::Tokens, window, 1000, 300, 300);
    let other = QuotaAsk {
        id: "k2".into(),
        ..window_ask(LimitKind::Requests, window, 10, 1, 100)
    };
    filter
        .ask_quota(7, vec![tokens.clone(), other.clone()])
        .await;
    let grant = filter.next_quota_grant().await;
    assert_eq!(grant.request_id, 7);
    assert_eq!(
        grant.leases,
        vec![
            WireLease {
                scope: BudgetScope::Key as i32,
                id: "k1".into(),
                kind: LimitKind::Tokens as i32,
                window_start_unix_ms: window,
                granted: 300,
                remaining: 700,
            },
            // left 10: at least need (1), at most want (100) and an eighth of 10 (1).
            WireLease {
                scope: BudgetScope::Key as i32,
                id: "k2".into(),
                kind: LimitKind::Requests as i32,
                window_start_unix_ms: window,
                granted: 1,
                remaining: 9,
            },
        ]
    );
    assert_eq!(ask_one(&mut filter, 8, tokens.clone()).await, (300, 400));
    assert_eq!(ask_one(&mut filter, 9, tokens.clone()).await, (300, 100));
    assert_eq!(ask_one(&mut filter, 10, tokens).await, (0, 100));

    // The next window starts from 0.
    let next = window_ask(LimitKind::Requests, window + quota::WINDOW_MS, 60, 1, 3);
    assert_eq!(ask_one(&mut filter, 11, next).await, (3, 57));
    server.shutdown().await;
}
on_both!(
    rule_gives_exact_leases,
    rule_gives_exact_leases_sqlite,
    rule_gives_exact_leases_postgres,
    worker_threads = 2
);

async fn overrun_is_charged(db: Db) {
    let server = Server::start(db.url()).await;
    let mut filter = server.filter().await;
    let window = this_window();
    let tokens = |need, want, overrun| QuotaAsk {
        overrun,
        ..window_ask(LimitKind::Tokens, window, 1000, need, want)
    };
    // left 1000: want 100 (under an eighth).
    assert_eq!(
        ask_one(&mut filter, 1, tokens(100, 100, 0)).await,
        (100, 900)
    );
    // 850 overrun: left 50, need 10 (more than an eighth, 6).
    assert_eq!(ask_one(&mut filter, 2, tokens(10, 10, 850)).await, (10, 40));
    // Charged past the limit: nothing left, even for need 1.
    assert_eq!(ask_one(&mut filter, 3, tokens(1, 1, 100)).await, (0, 0));
    assert_eq!(ask_one(&mut filter, 4, tokens(1, 1, 0)).await, (0, 0));
    // A new window starts from 0.
    let next = QuotaAsk {
        window_start_unix_ms: window + quota::WINDOW_MS,
        ..tokens(100, 100, 0)
    };
    assert_eq!(ask_one(&mut filter, 5, next).await, (100, 900));
    server.shutdown().await;
}
on_both!(
    overrun_is_charged,
    overrun_is_charged_sqlite,
    overrun_is_charged_postgres,
    worker_threads = 2
);

async fn unused_window_quota_can_be_given_back(db: Db) {
    let server = Server::start(db.url()).await;
    let mut filter = server.filter().await;
    let window = this_window();
    let requests = |need, want, release| QuotaAsk {
        release,
        ..window_ask(LimitKind::Requests, window, 4, need, want)
    };
    for (n, remaining) in [3, 2, 1, 0].into_iter().enumerate() {
        assert_eq!(
            ask_one(&mut filter, n as u64, requests(1, 1, 0)).await,
            (1, remaining)
        );
    }
    assert_eq!(ask_one(&mut filter, 10, requests(1, 1, 0)).await, (0, 0));
    // Two leased and unused go back (a release alone, need 0): another request gets one.
    assert_eq!(ask_one(&mut filter, 11, requests(0, 0, 2)).await, (0, 2));
    assert_eq!(ask_one(&mut filter, 12, requests(1, 1, 0)).await, (1, 1));
    // More given back than was leased leaves the window at 0, not below.
    assert_eq!(ask_one(&mut filter, 13, requests(0, 0, 100)).await, (0, 4));
    server.shutdown().await;
}
on_both!(
    unused_window_quota_can_be_given_back,
    unused_window_quota_can_be_given_back_sqlite,
    unused_window_quota_can_be_given_back_postgres,
    worker_threads = 2
);

async fn parallel_slots(db: Db) {
    let server = Server::start(db.url()).await;
    let mut a = server.filter().await;
    let mut b = server.filter().await;
    // Limit 4.
    assert_eq!(ask_one(&mut a, 1, parallel_ask(4, 1, 1, 0)).await, (1, 3));
    // want 10, but an eighth of 3 is 0: need (1).
    assert_eq!(ask_one(&mut a, 2, parallel_ask(4, 1, 10, 0)).await, (1, 2));
    assert_eq!(ask_one(&mut b, 3, parallel_ask(4, 2, 2, 0)).await, (2, 0));
    assert_eq!(ask_one(&mut a, 4, parallel_ask(4, 1, 1, 0)).await, (0, 0));
    // A released slot is granted again in the same ask.
    assert_eq!(ask_one(&mut a, 5, parallel_ask(4, 1, 1, 1)).await, (1, 0));
    // A release only (need 0), of more than held: A's 2 slots go back.
    assert_eq!(ask_one(&mut a, 6, parallel_ask(4, 0, 0, 5)).await, (0, 2));
    let store = server.hub.store().clone();
    let counter = QuotaCounter {
        scope: "deployment",
        id: "d1",
    };
    assert_eq!(
        store
            .quota_slots_held(counter, now_unix_ms())
            .await
            .unwrap(),
        2
    );
    // B's stream ends: its slots are freed at once (before the stream is unregistered).
    drop(b);
    assert!(
        server
            .hub
            .wait_for_streams(WAIT, |streams| streams.len() == 1)
            .await
    );
    assert_eq!(
        store
            .quota_slots_held(counter, now_unix_ms())
            .await
            .unwrap(),
        0
    );
    assert_eq!(ask_one(&mut a, 7, parallel_ask(4, 4, 4, 0)).await, (4, 0));
    let hub = server.hub.clone();
    server.shutdown().await;
    // The shutdown ended A's stream too, and freed its slots.
    assert!(
        hub.wait_for_streams(WAIT, |streams| streams.is_empty())
            .await
    );
    assert_eq!(
        store
            .quota_slots_held(counter, now_unix_ms())
            .await
            .unwrap(),
        0
    );
}
on_both!(
    parallel_slots,
    parallel_slots_sqlite,
    parallel_slots_postgres,
    worker_threads = 2
);

async fn bad_asks_get_nothing(db: Db) {
    let server = Server::start(db.url()).await;
    let mut filter = server.filter().await;
    let window = this_window();
    let good = window_ask(LimitKind::Requests, window, 60, 1, 3);
    let asks = vec![
        QuotaAsk {
            kind: LimitKind::Unspecified as i32,
            ..good.clone()
        },
        QuotaAsk {
            window_start_unix_ms: window + 12_345,
            ..good.clone()
        },
        QuotaAsk {
            window_start_unix_ms: 60_000,
            ..parallel_ask(4, 1, 1, 0)
        },
        QuotaAsk {
            need: 0,
            ..good.clone()
        },
        QuotaAsk {
            scope: BudgetScope::Unspecified as i32,
            ..good.clone()
        },
        // Ended long ago (it may have been pruned), and far ahead.
        QuotaAsk {
            window_start_unix_ms: window - 5 * quota::WINDOW_MS,
            ..good.clone()
        },
        QuotaAsk {
            window_start_unix_ms: window + 5 * quota::WINDOW_MS,
            ..good.clone()
        },
        QuotaAsk {
            kind: 99,
            ..good.clone()
        },
        good.clone(),
    ];
    filter.ask_quota(42, asks.clone()).await;
    let grant = filter.next_quota_grant().await;
    assert_eq!(grant.request_id, 42);
    let got: Vec<(i32, u64, u64, u64)> = grant
        .leases
        .iter()
        .map(|l| (l.kind, l.window_start_unix_ms, l.granted, l.remaining))
        .collect();
    let mut expected: Vec<(i32, u64, u64, u64)> = asks
        .iter()
        .map(|ask| (ask.kind, ask.window_start_unix_ms, 0, 0))
        .collect();
    *expected.last_mut().unwrap() = (LimitKind::Requests as i32, window, 3, 57);
    assert_eq!(got, expected);
    // The stream still works.
    assert_eq!(ask_one(&mut filter, 43, good).await, (3, 54));
    server.shutdown().await;
}
on_both!(
    bad_asks_get_nothing,
    bad_asks_get_nothing_sqlite,
    bad_asks_get_nothing_postgres,
    worker_threads = 2
);

/// Two control planes on one database, eight streams (four on each) asking for one request
/// at a time on one counter of limit 60: exactly 60 granted, never more.
async fn two_replicas_never_grant_past_the_limit(db: Db) {
    let servers = [Server::start(db.url()).await, Server::start(db.url()).await];
    assert_ne!(
        servers[0].hub.quota().replica_id(),
        servers[1].hub.quota().replica_id()
    );
    let window = this_window();
    let mut tasks = Vec::new();
    for n in 0..8u64 {
        let mut filter = servers[(n % 2) as usize].filter().await;
        tasks.push(tokio::spawn(async move {
            let mut granted = 0u64;
            let mut asks = 0u64;
            loop {
                asks += 1;
                let ask = window_ask(LimitKind::Requests, window, 60, 1, 1);
                let (got, remaining) = ask_one(&mut filter, n * 1000 + asks, ask).await;
                if got == 0 {
                    assert_eq!(remaining, 0);
                    return granted;
                }
                assert_eq!(got, 1);
                granted += got;
            }
        }));
    }
    let mut total = 0;
    for task in tasks {
        total += task.await.unwrap();
    }
    assert_eq!(total, 60, "on {}", db.name());
    // And once exhausted, it stays so on both.
    for server in &servers {
        let mut filter = server.filter().await;
        let ask = window_ask(LimitKind::Requests, window, 60, 1, 1);
        assert_eq!(ask_one(&mut filter, 1, ask).await, (0, 0));
    }
    for server in servers {
        server.shutdown().await;
    }
}
on_both!(
    two_replicas_never_grant_past_the_limit,
    two_replicas_never_grant_past_the_limit_sqlite,
    two_replicas_never_grant_past_the_limit_postgres,
    worker_threads = 2
);

/// Store level, with explicit clocks: a holder's slots stop counting when it expires, a
/// refresh keeps them, and pruning removes old windows and expired holders only.
async fn holders_expire_and_windows_are_pruned(db: Db) {
    let store: Store = common::connect(db.url()).await;
    let counter = QuotaCounter {
        scope: "deployment",
        id: "d1",
    };
    let want = |need, release| QuotaWant {
        limit: 2,
        need,
        want: need,
        overrun: 0,
        release,
    };
    let lease = |granted, remaining| QuotaLease { granted, remaining };
    let t = 1_000_000u64;
    assert_eq!(
        store
            .grant_quota_parallel(counter, "crashed/1", want(1, 0), t, t + 30_000)
            .await
            .unwrap(),
        lease(1, 1)
    );
    assert_eq!(
        store
            .grant_quota_parallel(counter, "alive/1", want(1, 0), t, t + 30_000)
            .await
            .unwrap(),
        lease(1, 0)
    );
    // Only the live holder is refreshed.
    assert_eq!(
        store
            .refresh_quota_holders(&["alive/1".to_string()], t + 50_000)
            .await
            .unwrap(),
        1
    );
    assert_eq!(
        store
            .grant_quota_parallel(counter, "other/1", want(1, 0), t + 29_999, t + 60_000)
            .await
            .unwrap(),
        lease(0, 0)
    );
    // The crashed holder expired: its slot is free, the live one's is not.
    assert_eq!(
        store
            .grant_quota_parallel(counter, "other/1", want(1, 0), t + 30_000, t + 60_000)
            .await
            .unwrap(),
        lease(1, 0)
    );
    assert_eq!(
        store.quota_slots_held(counter, t + 30_000).await.unwrap(),
        2
    );
    assert_eq!(store.release_quota_holder("other/1").await.unwrap(), 1);
    assert_eq!(store.release_quota_holder("other/1").await.unwrap(), 0);

    let key = QuotaCounter {
        scope: "key",
        id: "k",
    };
    let ask = QuotaWant {
        limit: 10,
        need: 1,
        want: 1,
        overrun: 0,
        release: 0,
    };
    let old = 60_000 * 100;
    let recent = old + 3 * 60_000;
    for window in [old, recent] {
        assert_eq!(
            store
                .grant_quota_window(key, QuotaKind::Requests, window, ask, window)
                .await
                .unwrap(),
            lease(1, 9)
        );
    }
    // At recent + 1 minute the old window ended 3 minutes before and goes; the recent one
    // (ended a minute before) stays. The holder refreshed to t + 50,000 has expired by then
    // and goes, and with it the parallel counter no one holds.
    let now = recent + 60_000;
    let deleted = quota::prune(&store, now).await.unwrap();
    assert_eq!(deleted, 3);
    assert_eq!(
        store
            .grant_quota_window(key, QuotaKind::Requests, recent, ask, now)
            .await
            .unwrap(),
        lease(1, 8)
    );
    assert_eq!(
        store
            .grant_quota_window(key, QuotaKind::Requests, old, ask, now)
            .await
            .unwrap(),
        // Pruned: it starts again, which is why the stream refuses asks for such windows.
        lease(1, 9)
    );
    assert_eq!(store.quota_slots_held(counter, t).await.unwrap(), 0);
}
on_both!(
    holders_expire_and_windows_are_pruned,
    holders_expire_and_windows_are_pruned_sqlite,
    holders_expire_and_windows_are_pruned_postgres,
    worker_threads = 2
);

/// Not a check of speed: measures one grant (p50 and p99 of 1,000 asks) straight on the
/// store and over a stream, printed for the notes (`--nocapture`).
async fn grant_latency(db: Db) {
    let server = Server::start(db.url()).await;
    let store = server.hub.store().clone();
    let window = this_window();
    let counter = QuotaCounter {
        scope: "key",
        id: "bench",
    };
    let ask = QuotaWant {
        limit: 1_000_000,
        need: 1,
        want: 1,
        overrun: 0,
        release: 0,
    };
    let mut times = Vec::with_capacity(1000);
    for _ in 0..1000 {
        let started = Instant::now();
        let lease = store
            .grant_quota_window(counter, QuotaKind::Requests, window, ask, now_unix_ms())
            .await
            .unwrap();
        times.push(started.elapsed());
        assert_eq!(lease.granted, 1);
    }
    let (p50, p99) = percentiles(&mut times);
    eprintln!(
        "{}: window grant on the store: p50 {p50:?}, p99 {p99:?}",
        db.name()
    );

    let mut times = Vec::with_capacity(1000);
    for _ in 0..1000 {
        let started = Instant::now();
        let lease = store
            .grant_quota_parallel(
                counter,
                "bench/1",
                QuotaWant { release: 1, ..ask },
                now_unix_ms(),
                u64::MAX / 4,
            )
            .await
            .unwrap();
        times.push(started.elapsed());
        assert_eq!(lease.granted, 1);
    }
    let (p50, p99) = percentiles(&mut times);
    eprintln!(
        "{}: parallel grant on the store: p50 {p50:?}, p99 {p99:?}",
        db.name()
    );

    let mut filter = server.filter().await;
    let mut times = Vec::with_capacity(1000);
    for n in 0..1000 {
        let started = Instant::now();
        let ask = window_ask(LimitKind::Requests, window, 1_000_000, 1, 1);
        let (granted, _) = ask_one(&mut filter, n, ask).await;
        times.push(started.elapsed());
        assert_eq!(granted, 1);
    }
    let (p50, p99) = percentiles(&mut times);
    eprintln!(
        "{}: window grant over a stream: p50 {p50:?}, p99 {p99:?}",
        db.name()
    );
    server.shutdown().await;
}
on_both!(
    grant_latency,
    grant_latency_sqlite,
    grant_latency_postgres,
    worker_threads = 2
);

fn percentiles(times: &mut [Duration]) -> (Duration, Duration) {
    times.sort();
    (times[times.len() / 2], times[times.len() * 99 / 100])
}
