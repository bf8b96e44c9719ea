//! Cooldowns judged from every filter's usage records, end to end: fake filters on real
//! FilterSync streams (a tonic server on 127.0.0.1) send failing usage records, and every
//! stream is pushed the deployments cooling down, a stream opened later right after its
//! snapshot.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::oneshot;

use tollgate::app::start_control_plane;
use tollgate::cooldowns::MINUTE_MS;
use tollgate::proto::{
    control_message, filter_message, DeploymentCooldown, DeploymentCooldowns, UsageBatch,
    UsageRecord,
};
use tollgate::server;
use tollgate::store::now_unix_ms;
use tollgate::sync::SyncHub;

use common::FakeFilter;

const WAIT: Duration = Duration::from_secs(10);

/// cooldown_time, in milliseconds.
const COOLDOWN_MS: u64 = 300_000;

/// Two deployments in "gpt", one alone in "solo"; 3 failures a minute allowed, a cooldown
/// of 300 s (long enough to still run when the test's records, of the previous minute,
/// tip it).
const CONFIG: &str = r#"
general_settings:
  master_key: sk-test-master
model_list:
  - model_name: gpt
    litellm_params:
      model: openai/gpt-4o
      api_key: sk-upstream-a
  - model_name: gpt
    litellm_params:
      model: openai/gpt-4o-mini
      api_key: sk-upstream-b
  - model_name: solo
    litellm_params:
      model: openai/gpt-4.1
      api_key: sk-upstream-s
router_settings:
  allowed_fails: 3
  cooldown_time: 300
"#;

/// A record of `deployment` with `status` that started at `started` and took 100 ms.
fn record(id: &str, model: &str, deployment: &str, status: u32, started: u64) -> UsageRecord {
    UsageRecord {
        id: id.into(),
        model_name: model.into(),
        deployment_id: deployment.into(),
        provider: "openai".into(),
        status,
        started_unix_ms: started,
        duration_ms: 100,
        request_id: format!("req-{id}"),
        ..Default::default()
    }
}

async fn send_batch(filter: &mut FakeFilter, batch_id: u64, records: Vec<UsageRecord>) {
    filter
        .send(filter_message::Kind::Usage(UsageBatch {
            records,
            batch_id,
        }))
        .await;
    assert_eq!(filter.next_usage_ack().await, [batch_id]);
}

/// The id of the deployment of `model` serving `upstream`.
fn deployment_id(hub: &SyncHub, model: &str, upstream: &str) -> String {
    hub.current()
        .deployments
        .iter()
        .find(|deployment| deployment.model_name == model && deployment.upstream_model == upstream)
        .unwrap()
        .id
        .clone()
}

#[tokio::test]
async fn failures_of_every_filter_cool_a_deployment_down_on_every_stream() {
    let (store, _dir) = common::sqlite_store().await;
    let hub: Arc<SyncHub> = start_control_plane(store.clone(), &common::load(CONFIG))
        .await
        .unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    let (stop, stopped) = oneshot::channel::<()>();
    let served = hub.clone();
    let server = tokio::spawn(async move {
        server::serve(served, listener, async {
            let _ = stopped.await;
        })
        .await
    });
    let a = deployment_id(&hub, "gpt", "gpt-4o");
    let solo = deployment_id(&hub, "solo", "gpt-4.1");

    // Two Envoys.
    let mut first = FakeFilter::connect(address).await;
    first.next_snapshot().await;
    first.hello("envoy-1", "0", hub.current_version()).await;
    let mut second = FakeFilter::connect(address).await;
    second.next_snapshot().await;
    second.hello("envoy-2", "0", hub.current_version()).await;

    // All in the previous minute, whenever the test runs.
    let base = (now_unix_ms() / MINUTE_MS - 1) * MINUTE_MS;
    // The first Envoy saw two server errors of `a`, a bad request (never counted), a
    // success, and four failures of the only deployment of "solo" (never cooled down).
    let mut batch = vec![
        record("f1", "gpt", &a, 500, base + 1_000),
        record("f2", "gpt", &a, 503, base + 1_500),
        record("bad", "gpt", &a, 400, base + 1_600),
        record("ok", "gpt", &a, 200, base + 1_700),
    ];
    batch.extend((0..4).map(|n| record(&format!("s{n}"), "solo", &solo, 500, base + n * 10)));
    send_batch(&mut first, 1, batch).await;
    // The second saw a third one; and f1 comes again (a filter that reconnected after a
    // lost acknowledgement resends its batch): stored once, counted once.
    send_batch(
        &mut second,
        1,
        vec![
            record("f3", "gpt", &a, 0, base + 2_000),
            record("f1", "gpt", &a, 500, base + 1_000),
        ],
    )
    .await;
    // Judged before the acknowledgement: three failures are within allowed_fails.
    assert_eq!(*hub.deployment_cooldowns(), DeploymentCooldowns::default());

    // The fourth server error, on the first Envoy, cools `a` down: until its end +
    // cooldown_time.
    send_batch(
        &mut first,
        2,
        vec![record("f4", "gpt", &a, 502, base + 3_000)],
    )
    .await;
    let expected = DeploymentCooldowns {
        cooldowns: vec![DeploymentCooldown {
            deployment_id: a.clone(),
            until_unix_ms: base + 3_100 + COOLDOWN_MS,
            ..Default::default()
        }],
    };
    assert_eq!(*hub.deployment_cooldowns(), expected);
    // Every stream is pushed the set, the one that sent none of the fourth failure too.
    assert_eq!(first.next_cooldowns().await, expected);
    assert_eq!(second.next_cooldowns().await, expected);

    // A stream opened later: its snapshot, the spend, then the set.
    let mut later = FakeFilter::connect(address).await;
    assert!(matches!(
        later.next_message().await,
        control_message::Kind::Snapshot(_)
    ));
    assert!(matches!(
        later.next_message().await,
        control_message::Kind::Spend(_)
    ));
    match later.next_message().await {
        control_message::Kind::Cooldowns(cooldowns) => assert_eq!(cooldowns, expected),
        other => panic!("expected the cooldowns after the snapshot, got {other:?}"),
    }

    stop.send(()).unwrap();
    tokio::time::timeout(WAIT, server)
        .await
        .expect("server did not stop")
        .unwrap()
        .unwrap();
}
