//! The FilterSync service end to end: a real tonic server on 127.0.0.1 and real clients
//! playing the filter.
// Test helpers outside #[test] functions: a failure should stop the test loudly.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use tollgate::app::start_control_plane;
use tollgate::channel::{ChannelSecurity, FilterToken, ServerTlsFiles};
use tollgate::config::{self, LoadedConfig, Wire};
use tollgate::delta::{CatchUp, Served};
use tollgate::proto::management_client::ManagementClient;
use tollgate::proto::{
    self as pb, control_message, filter_message, ProviderKind as WireKind, SnapshotAck, UsageBatch,
    UsageRecord,
};
use tollgate::server::{self, ServeError};
use tollgate::store::{sha256_hex, DeploymentRecord, DeploymentSource, KeyRow, Store};
use tollgate::sync::{self, SyncHub};

use common::Update;

const WAIT: Duration = Duration::from_secs(10);

const CONFIG: &str = r#"
general_settings:
  master_key: sk-test-master
  max_request_size_mb: 3
  max_response_size_mb: 4
model_list:
  - model_name: gpt
    litellm_params:
      model: openai/gpt-4o
      api_key: os.environ/SYNC_TEST_OPENAI_KEY
  - model_name: claude
    litellm_params:
      model: anthropic/claude-sonnet
      api_base: http://127.0.0.1:9/
      api_version: "2023-06-01"
"#;

fn load(text: &str) -> LoadedConfig {
    config::parse(text, "sync-test.yaml", &|name| {
        (name == "SYNC_TEST_OPENAI_KEY").then(|| "sk-upstream".to_string())
    })
    .unwrap()
}

struct Server {
    hub: Arc<SyncHub>,
    address: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<Result<(), ServeError>>,
}

impl Server {
    async fn start(store: Store, config: &LoadedConfig) -> Server {
        let hub = start_control_plane(store, config).await.unwrap();
        Self::start_hub(hub).await
    }

    async fn start_hub(hub: Arc<SyncHub>) -> Server {
        Self::start_secured(hub, ChannelSecurity::default()).await
    }

    async fn start_secured(hub: Arc<SyncHub>, security: ChannelSecurity) -> Server {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let (stop, stopped) = oneshot::channel::<()>();
        let served = hub.clone();
        let task = tokio::spawn(async move {
            server::serve_secured(served, listener, &security, async {
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

    /// Stops the server and checks that it really stops although streams are open.
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

fn usage(id: &str) -> UsageRecord {
    UsageRecord {
        id: id.into(),
        model_name: "gpt".into(),
        deployment_id: "d".into(),
        provider: "openai".into(),
        status: 200,
        prompt_tokens: Some(3),
        completion_tokens: None,
        cached_prompt_tokens: None,
        started_unix_ms: 1,
        duration_ms: 2,
        stream: false,
        key_hash: String::new(),
        request_id: format!("req-{id}"),
        ..Default::default()
    }
}

#[tokio::test]
async fn filters_get_snapshots_and_usage_is_stored_once() {
    let (store, _dir) = common::sqlite_store().await;
    let server = Server::start(store.clone(), &load(CONFIG)).await;
    let hub = server.hub.clone();

    // First stream: the snapshot comes first, before the filter says anything.
    let mut first = common::FakeFilter::connect(server.address).await;
    let snapshot = first.next_snapshot().await;
    assert_eq!(snapshot, *hub.current());
    assert!(
        snapshot.version >= 1_600_000_000_000,
        "version is not time-based: {}",
        snapshot.version
    );
    let settings = snapshot.settings.clone().unwrap();
    assert_eq!(settings.master_key_sha256, sha256_hex("sk-test-master"));
    assert_eq!(settings.max_request_body_bytes, 3 * 1024 * 1024);
    assert_eq!(settings.max_response_body_bytes, 4 * 1024 * 1024);
    assert_eq!(snapshot.deployments.len(), 2);
    let gpt = &snapshot.deployments[0];
    assert_eq!(gpt.model_name, "gpt");
    assert_eq!(gpt.provider, WireKind::Openai as i32);
    assert_eq!(gpt.provider_name, "openai");
    assert_eq!(gpt.upstream_model, "gpt-4o");
    assert_eq!(gpt.api_base, "https://api.openai.com/v1");
    assert_eq!(gpt.api_key, "sk-upstream");
    assert_eq!(gpt.default_max_tokens, 0);
    let claude = &snapshot.deployments[1];
    assert_eq!(claude.provider, WireKind::Anthropic as i32);
    assert_eq!(claude.api_base, "http://127.0.0.1:9");
    assert_eq!(claude.api_key, "");
    assert_eq!(claude.default_max_tokens, 4096);
    assert_eq!(claude.api_version, "2023-06-01");

    // Hello registers the stream with its node and VM.
    first.hello("envoy-a", "1", 0).await;
    assert!(
        hub.wait_for_streams(WAIT, |streams| streams
            .iter()
            .any(|s| s.hello && s.node_id == "envoy-a" && s.vm_id == "1"))
            .await
    );
    assert_eq!(hub.connected_streams(), 1);
    // Without acknowledgements a stream counts as holding the snapshot only after a grace.
    assert_eq!(hub.streams_holding_current(Duration::from_secs(3600)), 0);
    assert_eq!(hub.streams_holding_current(Duration::ZERO), 1);
    let info = hub.streams().into_iter().next().unwrap();
    assert_eq!(info.sent_version, snapshot.version);
    assert_eq!(info.filter_version, "0.1.0-test");
    assert!(info.peer.is_some_and(|peer| peer.ip().is_loopback()));

    // The same batch twice (a resend after a reconnect): stored once, acknowledged each
    // time it is stored.
    let batch = UsageBatch {
        records: vec![usage("r1"), usage("r2")],
        batch_id: 7,
    };
    first.send(filter_message::Kind::Usage(batch.clone())).await;
    first.send(filter_message::Kind::Usage(batch.clone())).await;
    assert!(
        hub.wait_for_streams(WAIT, |streams| streams.iter().any(|s| s.usage_records == 4))
            .await
    );
    assert_eq!(first.next_usage_ack().await, [7]);
    assert_eq!(first.next_usage_ack().await, [7]);
    assert_eq!(store.usage_count().await.unwrap(), 2);
    let stored = store.usage_records().await.unwrap();
    assert_eq!(
        stored, batch.records,
        "request ids kept apart from record ids"
    );

    // Acknowledgements are recorded.
    first
        .send(filter_message::Kind::Ack(SnapshotAck {
            version: snapshot.version,
        }))
        .await;
    assert!(
        hub.wait_for_streams(WAIT, |streams| streams
            .iter()
            .any(|s| s.acked_version == snapshot.version))
            .await
    );
    // An acknowledging filter holds the snapshot at once, whatever the grace.
    assert_eq!(hub.streams_holding_current(Duration::from_secs(3600)), 1);

    // A second stream also gets the current snapshot.
    let mut second = common::FakeFilter::connect(server.address).await;
    assert_eq!(second.next_snapshot().await, snapshot);
    second.hello("envoy-a", "2", 0).await;
    assert!(
        hub.wait_for_streams(WAIT, |streams| streams.iter().filter(|s| s.hello).count()
            == 2)
            .await
    );

    // A new snapshot reaches both streams.
    store
        .upsert_deployment(&DeploymentRecord {
            id: "api-1".into(),
            model_name: "mini".into(),
            provider_name: "openai".into(),
            kind: Wire::OpenAi,
            upstream_model: "gpt-4o-mini".into(),
            api_base: "https://api.openai.com/v1".into(),
            api_key: None,
            api_version: None,
            default_max_tokens: None,
            model_info: None,
            pricing: Default::default(),
            limits: Default::default(),
            provider_settings: Default::default(),
            default_params: Default::default(),
            routing: Default::default(),
            source: DeploymentSource::Api,
            position: 0,
        })
        .await
        .unwrap();
    let new_version = hub.republish().await.unwrap();
    assert!(new_version > snapshot.version);
    for filter in [&mut first, &mut second] {
        let update = filter.next_snapshot().await;
        assert_eq!(update.version, new_version);
        let names: Vec<&str> = update
            .deployments
            .iter()
            .map(|d| d.model_name.as_str())
            .collect();
        assert_eq!(names, ["gpt", "claude", "mini"]);
    }
    assert!(
        hub.wait_for_streams(WAIT, |streams| streams
            .iter()
            .all(|s| s.sent_version == new_version))
            .await
    );
    // The acknowledging stream holds the new version only once it says so.
    assert_eq!(
        hub.streams_holding_current(Duration::ZERO),
        1,
        "only the non-acking stream"
    );
    first
        .send(filter_message::Kind::Ack(SnapshotAck {
            version: new_version,
        }))
        .await;
    assert!(
        hub.wait_for_streams(WAIT, |streams| streams
            .iter()
            .any(|s| s.acked_version == new_version))
            .await
    );
    assert_eq!(hub.streams_holding_current(Duration::ZERO), 2);

    // A closed stream leaves the registry.
    drop(second);
    assert!(
        hub.wait_for_streams(WAIT, |streams| streams.len() == 1)
            .await,
        "{:?}",
        hub.streams()
    );
    assert_eq!(hub.streams()[0].vm_id, "1");

    // Shutdown ends the open stream instead of waiting for it forever.
    server.shutdown().await;
    let end = tokio::time::timeout(WAIT, first.inbound.message())
        .await
        .expect("stream not ended");
    assert!(matches!(end, Ok(None) | Err(_)), "{end:?}");
    assert!(
        hub.wait_for_streams(WAIT, |streams| streams.is_empty())
            .await
    );
}

#[tokio::test]
async fn filter_closing_its_side_ends_the_stream() {
    let (store, _dir) = common::sqlite_store().await;
    let server = Server::start(store, &load(CONFIG)).await;
    let mut filter = common::FakeFilter::connect(server.address).await;
    filter.next_snapshot().await;
    filter.hello("envoy-b", "7", 0).await;
    assert!(
        server
            .hub
            .wait_for_streams(WAIT, |streams| streams.iter().any(|s| s.hello))
            .await
    );
    // The filter half-closes (a VM closing its stream): the server finishes the response
    // and forgets the stream, without waiting for the next snapshot to notice.
    let mut inbound = filter.close_sending();
    // Spend updates may still be on their way; then the response ends.
    let end = tokio::time::timeout(WAIT, async {
        loop {
            match inbound.message().await {
                Ok(Some(tollgate::proto::ControlMessage {
                    kind: Some(tollgate::proto::control_message::Kind::Spend(_)),
                })) => continue,
                other => return other,
            }
        }
    })
    .await
    .expect("response not finished");
    assert!(matches!(end, Ok(None)), "{end:?}");
    assert!(
        server
            .hub
            .wait_for_streams(WAIT, |streams| streams.is_empty())
            .await
    );
    server.shutdown().await;
}

#[tokio::test]
async fn restart_with_a_changed_config_serves_a_newer_snapshot() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}?mode=rwc", dir.path().join("cp.db").display());

    let store = common::connect(&url).await;
    let server = Server::start(store.clone(), &load(CONFIG)).await;
    let mut filter = common::FakeFilter::connect(server.address).await;
    let before = filter.next_snapshot().await;
    server.shutdown().await;
    store.close().await;

    let changed = load(
        "model_list:\n  - model_name: only\n    litellm_params: {model: groq/llama-3.1-8b-instant}\n",
    );
    let store = common::connect(&url).await;
    let server = Server::start(store.clone(), &changed).await;
    // The filter reconnects to the new control plane.
    let mut filter = common::FakeFilter::connect(server.address).await;
    filter.hello("envoy-a", "1", before.version).await;
    let after = filter.next_snapshot().await;
    assert!(
        after.version > before.version,
        "{} <= {}",
        after.version,
        before.version
    );
    assert_eq!(after.deployments.len(), 1);
    assert_eq!(after.deployments[0].model_name, "only");
    assert_eq!(
        after.deployments[0].api_base,
        "https://api.groq.com/openai/v1"
    );
    assert_eq!(after.settings.unwrap().master_key_sha256, "");
    server.shutdown().await;
}

#[tokio::test]
async fn sync_works_on_postgres_too() {
    let db = common::PgTestDb::create().await;
    let store = common::connect(&db.url).await;
    let server = Server::start(store.clone(), &load(CONFIG)).await;
    let mut filter = common::FakeFilter::connect(server.address).await;
    let snapshot = filter.next_snapshot().await;
    assert_eq!(snapshot.deployments.len(), 2);
    filter.hello("envoy-pg", "1", 0).await;
    let batch = UsageBatch {
        records: vec![usage("p1"), usage("p2"), usage("p3")],
        batch_id: 1,
    };
    filter
        .send(filter_message::Kind::Usage(batch.clone()))
        .await;
    filter.send(filter_message::Kind::Usage(batch)).await;
    assert!(
        server
            .hub
            .wait_for_streams(WAIT, |streams| streams.iter().any(|s| s.usage_records == 6))
            .await
    );
    assert_eq!(store.usage_count().await.unwrap(), 3);
    server.shutdown().await;
    store.close().await;
}

#[tokio::test]
async fn reflection_lists_the_service() {
    use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
    use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
    use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;
    use tonic_reflection::pb::v1::ServerReflectionRequest;

    let (store, _dir) = common::sqlite_store().await;
    let server = Server::start(store, &load(CONFIG)).await;
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{}", server.address))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut client = ServerReflectionClient::new(channel);
    let request = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut responses = client
        .server_reflection_info(tokio_stream::iter(vec![request]))
        .await
        .unwrap()
        .into_inner();
    let response = responses.message().await.unwrap().unwrap();
    let Some(MessageResponse::ListServicesResponse(list)) = response.message_response else {
        panic!("unexpected reflection response {response:?}");
    };
    let names: Vec<String> = list
        .service
        .into_iter()
        .map(|service| service.name)
        .collect();
    assert!(
        names.contains(&"tollgate.v1.FilterSync".to_string()),
        "{names:?}"
    );
    server.shutdown().await;
}

const FILTER_TOKEN: &str = "filter-token-for-the-sync-tests";

fn with_token(token: &str) -> common::FilterConnection {
    common::FilterConnection {
        token: Some(token.into()),
        tls: None,
    }
}

#[tokio::test]
async fn streams_without_the_filter_token_get_nothing() {
    let (store, _dir) = common::sqlite_store().await;
    let hub = start_control_plane(store, &load(CONFIG)).await.unwrap();
    let security = ChannelSecurity {
        filter_token: Some(FilterToken::new(FILTER_TOKEN).unwrap()),
        tls: None,
    };
    let server = Server::start_secured(hub, security).await;

    let refused =
        common::FakeFilter::try_connect(server.address, &common::FilterConnection::default())
            .await
            .err();
    assert_eq!(
        refused.as_deref(),
        Some("Unauthenticated: filter stream refused: no filter token")
    );
    let refused =
        common::FakeFilter::try_connect(server.address, &with_token("filter-token-guessed"))
            .await
            .err();
    assert_eq!(
        refused.as_deref(),
        Some("Unauthenticated: filter stream refused: wrong filter token")
    );
    // Refused streams never reached the hub: nothing was registered or sent.
    assert!(server.hub.streams().is_empty());

    let mut filter = common::FakeFilter::try_connect(server.address, &with_token(FILTER_TOKEN))
        .await
        .unwrap();
    assert_eq!(filter.next_snapshot().await, *server.hub.current());
    assert_eq!(server.hub.streams().len(), 1);

    // The management service on the same port keeps its own (master key) authentication
    // and needs no filter token.
    let mut management = ManagementClient::connect(format!("http://{}", server.address))
        .await
        .unwrap();
    let mut request = tonic::Request::new(tollgate::proto::ListModelsRequest {});
    request
        .metadata_mut()
        .insert("authorization", "Bearer sk-test-master".parse().unwrap());
    let models = management.list_models(request).await.unwrap().into_inner();
    assert_eq!(models.models.len(), 2);
    server.shutdown().await;
}

fn trusting(pki: &tollgate_test_pki::TestPki) -> tonic::transport::ClientTlsConfig {
    let ca = std::fs::read(&pki.ca).unwrap();
    tonic::transport::ClientTlsConfig::new()
        .ca_certificate(tonic::transport::Certificate::from_pem(ca))
}

#[tokio::test]
async fn tls_and_mutual_tls_protect_the_channel() {
    let dir = tempfile::tempdir().unwrap();
    let pki = tollgate_test_pki::TestPki::create(dir.path(), "cp").unwrap();
    let stranger = tollgate_test_pki::TestPki::create(dir.path(), "stranger").unwrap();
    let (store, _db) = common::sqlite_store().await;
    let hub = start_control_plane(store, &load(CONFIG)).await.unwrap();
    let mut files = ServerTlsFiles {
        cert: pki.server_cert.clone(),
        key: pki.server_key.clone(),
        client_ca: None,
    };
    let security = |files: &ServerTlsFiles| ChannelSecurity {
        filter_token: Some(FilterToken::new(FILTER_TOKEN).unwrap()),
        tls: Some(files.load().unwrap()),
    };

    // TLS: a filter trusting the CA gets its snapshot; one trusting another CA, or speaking
    // plain HTTP/2, gets nothing.
    let server = Server::start_secured(hub.clone(), security(&files)).await;
    let over_tls = common::FilterConnection {
        token: Some(FILTER_TOKEN.into()),
        tls: Some(trusting(&pki)),
    };
    let mut filter = common::FakeFilter::try_connect(server.address, &over_tls)
        .await
        .unwrap();
    assert_eq!(filter.next_snapshot().await.deployments.len(), 2);
    let wrong_ca = common::FilterConnection {
        tls: Some(trusting(&stranger)),
        ..over_tls.clone()
    };
    let error = common::FakeFilter::try_connect(server.address, &wrong_ca)
        .await
        .err()
        .unwrap();
    assert!(error.contains("UnknownIssuer"), "{error}");
    let error = common::FakeFilter::try_connect(server.address, &with_token(FILTER_TOKEN))
        .await
        .err();
    // Plain HTTP/2 to a TLS port: the server's TLS record is no HTTP/2 frame.
    assert!(
        error
            .as_deref()
            .is_some_and(|error| error.contains("frame with invalid size")),
        "{error:?}"
    );
    drop(filter);
    server.shutdown().await;

    // Mutual TLS: only a client with a certificate from the client CA gets in. (A stopped
    // server's hub refuses new streams: the next server gets its own.)
    files.client_ca = Some(pki.ca.clone());
    let hub = start_control_plane(hub.store().clone(), &load(CONFIG))
        .await
        .unwrap();
    let server = Server::start_secured(hub, security(&files)).await;
    let identity = |pki: &tollgate_test_pki::TestPki| {
        tonic::transport::Identity::from_pem(
            std::fs::read(&pki.client_cert).unwrap(),
            std::fs::read(&pki.client_key).unwrap(),
        )
    };
    let mutual = common::FilterConnection {
        tls: Some(trusting(&pki).identity(identity(&pki))),
        ..over_tls.clone()
    };
    let mut filter = common::FakeFilter::try_connect(server.address, &mutual)
        .await
        .unwrap();
    assert_eq!(filter.next_snapshot().await.deployments.len(), 2);
    let error = common::FakeFilter::try_connect(server.address, &over_tls)
        .await
        .err();
    assert!(
        error
            .as_deref()
            .is_some_and(|error| error.ends_with("received fatal alert: CertificateRequired")),
        "a client without a certificate must be refused: {error:?}"
    );
    let foreign_certificate = common::FilterConnection {
        tls: Some(trusting(&pki).identity(identity(&stranger))),
        ..over_tls.clone()
    };
    let error = common::FakeFilter::try_connect(server.address, &foreign_certificate)
        .await
        .err();
    assert!(
        error
            .as_deref()
            .is_some_and(|error| error.ends_with("received fatal alert: UnknownCA")),
        "a certificate from another CA must be refused: {error:?}"
    );
    // The token is still checked under mutual TLS.
    let no_token = common::FilterConnection {
        token: None,
        ..mutual.clone()
    };
    let error = common::FakeFilter::try_connect(server.address, &no_token)
        .await
        .err();
    assert_eq!(
        error.as_deref(),
        Some("Unauthenticated: filter stream refused: no filter token")
    );
    drop(filter);
    server.shutdown().await;
}

#[tokio::test]
async fn unusable_tls_files_are_reported_at_start() {
    let dir = tempfile::tempdir().unwrap();
    let pki = tollgate_test_pki::TestPki::create(dir.path(), "cp").unwrap();
    let missing = ServerTlsFiles {
        cert: dir.path().join("absent.pem"),
        key: pki.server_key.clone(),
        client_ca: None,
    };
    let error = missing.load().unwrap_err().to_string();
    assert!(
        error.starts_with("cannot read the TLS certificate ") && error.contains("absent.pem"),
        "{error}"
    );
    // A key that does not belong to anything PEM can carry.
    std::fs::write(dir.path().join("garbage.pem"), "not a key").unwrap();
    let garbage = ServerTlsFiles {
        cert: pki.server_cert.clone(),
        key: dir.path().join("garbage.pem"),
        client_ca: None,
    };
    let error = garbage.load().unwrap_err().to_string();
    assert!(
        error.starts_with("the gRPC TLS certificate or key is unusable"),
        "{error}"
    );
}

/// A stored key with clear key `sk-delta-{i}`.
fn key_row(i: usize) -> KeyRow {
    KeyRow {
        budget: Default::default(),
        model_max_budget: Default::default(),
        model_budget_durations: Default::default(),
        limits: Default::default(),
        model_rpm_limit: Default::default(),
        model_tpm_limit: Default::default(),
        token: sha256_hex(&format!("sk-delta-{i}")),
        key_name: format!("sk-...{i:04}"),
        key_alias: Some(format!("delta-{i}")),
        user_id: None,
        team_id: None,
        models: vec!["gpt".into()],
        blocked: false,
        expires_ms: None,
        metadata: serde_json::json!({}),
        created_at: 1,
        updated_at: 1,
    }
}

/// The snapshot entry of `key_row(i)`.
fn wire_key(i: usize, blocked: bool) -> pb::VirtualKey {
    pb::VirtualKey {
        key_sha256: sha256_hex(&format!("sk-delta-{i}")),
        key_alias: format!("delta-{i}"),
        models: vec!["gpt".into()],
        blocked,
        ..Default::default()
    }
}

#[tokio::test]
async fn after_the_first_snapshot_a_key_change_arrives_as_a_delta_of_that_key() {
    let (store, _dir) = common::sqlite_store().await;
    let server = Server::start(store.clone(), &load(CONFIG)).await;
    let hub = server.hub.clone();
    for i in 0..200 {
        store.insert_key(&key_row(i)).await.unwrap();
    }
    hub.refresh().await.unwrap();

    let mut filter = common::FakeFilter::connect(server.address).await;
    let Update::Snapshot(first) = filter.next_update().await else {
        panic!("the first message is not a full snapshot");
    };
    assert_eq!(first.keys.len(), 200);
    filter.hello("envoy-d", "1", 0).await;

    // Block one key: the delta holds that key and nothing else.
    store
        .update_key(
            &KeyRow {
                blocked: true,
                ..key_row(7)
            },
            None,
        )
        .await
        .unwrap();
    let blocked_at = hub.refresh().await.unwrap();
    let Update::Delta(delta) = filter.next_update().await else {
        panic!("a key change was sent as a full snapshot");
    };
    assert_eq!(
        delta,
        pb::SnapshotDelta {
            base_version: first.version,
            version: blocked_at,
            keys: vec![wire_key(7, true)],
            ..Default::default()
        }
    );

    // Delete one, regenerate another (its hash changes), add one.
    store
        .delete_keys(&[sha256_hex("sk-delta-3")], &[])
        .await
        .unwrap();
    store
        .update_key(
            &key_row(5),
            Some((&sha256_hex("sk-delta-5-new"), "sk-...new")),
        )
        .await
        .unwrap();
    store.insert_key(&key_row(500)).await.unwrap();
    let changed_at = hub.refresh().await.unwrap();
    let Update::Delta(delta) = filter.next_update().await else {
        panic!("key changes were sent as a full snapshot");
    };
    let mut removed = vec![sha256_hex("sk-delta-3"), sha256_hex("sk-delta-5")];
    removed.sort();
    let mut added = vec![
        pb::VirtualKey {
            key_sha256: sha256_hex("sk-delta-5-new"),
            ..wire_key(5, false)
        },
        wire_key(500, false),
    ];
    added.sort_by(|a, b| a.key_sha256.cmp(&b.key_sha256));
    assert_eq!(
        delta,
        pb::SnapshotDelta {
            base_version: blocked_at,
            version: changed_at,
            keys: added,
            removed_key_sha256: removed,
            ..Default::default()
        }
    );
    // What the deltas add up to is the served state, which is the stored one.
    assert_eq!(filter.held.as_ref(), Some(hub.current().as_ref()));
    assert_eq!(*hub.current(), sync::load_snapshot(&store).await.unwrap());
    assert!(
        hub.wait_for_streams(WAIT, |streams| streams
            .iter()
            .any(|s| s.snapshots_sent == 1
                && s.deltas_sent == 2
                && s.sent_version == changed_at))
            .await,
        "{:?}",
        hub.streams()
    );

    // A reconnecting filter gets a full snapshot, whatever it says it holds.
    drop(filter);
    let mut again = common::FakeFilter::connect(server.address).await;
    again.hello("envoy-d", "1", changed_at).await;
    let Update::Snapshot(full) = again.next_update().await else {
        panic!("a new stream did not start with a full snapshot");
    };
    assert_eq!(full, *hub.current());
    assert_eq!(full.keys.len(), 200);
    server.shutdown().await;
}

const ROUTED: &str = r#"
model_list:
  - model_name: gpt
    litellm_params: {model: openai/gpt-4o, weight: 3, tags: [eu]}
  - model_name: claude
    litellm_params: {model: anthropic/claude-sonnet, api_base: "http://127.0.0.1:9/"}
router_settings:
  routing_strategy: latency-based-routing
  fallbacks: [{gpt: [claude]}]
"#;

#[tokio::test]
async fn router_settings_reach_the_filter_and_their_change_arrives_as_a_delta() {
    let (store, _dir) = common::sqlite_store().await;
    let server = Server::start(store.clone(), &load(ROUTED)).await;
    let hub = server.hub.clone();
    let mut filter = common::FakeFilter::connect(server.address).await;
    let Update::Snapshot(first) = filter.next_update().await else {
        panic!("the first message is not a full snapshot");
    };
    let settings = first.settings.clone().unwrap();
    let router = settings.router.clone().unwrap();
    assert_eq!(router, load(ROUTED).config.router.to_proto());
    assert_eq!(router.strategy, pb::RoutingStrategy::LatencyBased as i32);
    assert_eq!(
        router.fallbacks,
        [pb::Fallbacks {
            model: "gpt".into(),
            fallbacks: vec!["claude".into()]
        }]
    );
    // LiteLLM's defaults, explicit.
    assert_eq!(router.retries.as_ref().unwrap().num_retries, 2);
    assert_eq!(router.cooldown.as_ref().unwrap().allowed_fails, 3);
    assert_eq!(router.cooldown.as_ref().unwrap().cooldown_ms, 5000);
    assert_eq!(first.deployments[0].weight, 3.0);
    assert_eq!(first.deployments[0].tags, ["eu"]);
    assert_eq!(first.deployments[1].weight, 0.0);
    filter.hello("envoy-r", "1", 0).await;

    // Only the router settings change: the delta carries the settings and no deployment.
    let changed = load(&ROUTED.replace("latency-based-routing", "least-busy"));
    store.replace_config(&changed.config).await.unwrap();
    let changed_at = hub.refresh().await.unwrap();
    let Update::Delta(delta) = filter.next_update().await else {
        panic!("a settings change was sent as a full snapshot");
    };
    let expected_router = changed.config.router.to_proto();
    assert_eq!(
        expected_router.strategy,
        pb::RoutingStrategy::LeastBusy as i32
    );
    assert_eq!(
        delta,
        pb::SnapshotDelta {
            base_version: first.version,
            version: changed_at,
            settings: Some(pb::Settings {
                router: Some(expected_router),
                ..settings.clone()
            }),
            ..Default::default()
        }
    );

    // A deployment's weight changes: that deployment, and the settings are left out.
    let reweighted = load(
        &ROUTED
            .replace("latency-based-routing", "least-busy")
            .replace("weight: 3", "weight: 1"),
    );
    store.replace_config(&reweighted.config).await.unwrap();
    let reweighted_at = hub.refresh().await.unwrap();
    let Update::Delta(delta) = filter.next_update().await else {
        panic!("a deployment change was sent as a full snapshot");
    };
    assert_eq!(delta.base_version, changed_at);
    assert_eq!(delta.version, reweighted_at);
    assert_eq!(delta.settings, None);
    assert_eq!(delta.deployments.len(), 1);
    assert_eq!(delta.deployments[0].model_name, "gpt");
    assert_eq!(delta.deployments[0].weight, 1.0);
    assert_eq!(filter.held.as_ref(), Some(hub.current().as_ref()));
    server.shutdown().await;
}

#[tokio::test]
async fn a_snapshot_larger_than_tonics_default_limit_reaches_a_filter() {
    let (store, _dir) = common::sqlite_store().await;
    let server = Server::start(store.clone(), &load(CONFIG)).await;
    // About 9 MB of keys: over the 4 MiB tonic refuses by default.
    let keys: Vec<pb::VirtualKey> = (0..60_000).map(|i| wire_key(i, false)).collect();
    let mut snapshot = (*server.hub.current()).clone();
    snapshot.version += 1;
    snapshot.keys = keys;
    assert!(server.hub.publish_if_newer(snapshot.clone()));
    let mut filter = common::FakeFilter::connect(server.address).await;
    let Update::Snapshot(received) = filter.next_update().await else {
        panic!("no full snapshot");
    };
    assert_eq!(received.keys.len(), 60_000);
    assert!(prost::Message::encoded_len(&received) > 4 * 1024 * 1024);
    assert_eq!(received, *server.hub.current());
    server.shutdown().await;
}

/// A snapshot of keys `keys` (with `blocked` ones blocked) and deployments `deployments`.
fn snapshot_of(
    version: u64,
    keys: std::ops::Range<usize>,
    blocked: &[usize],
    deployments: &[(&str, &str)],
    master_key: &str,
) -> pb::Snapshot {
    pb::Snapshot {
        version,
        settings: Some(pb::Settings {
            master_key_sha256: sha256_hex(master_key),
            ..Default::default()
        }),
        deployments: deployments
            .iter()
            .map(|(id, upstream)| pb::Deployment {
                id: (*id).into(),
                model_name: "gpt".into(),
                provider: WireKind::Openai as i32,
                upstream_model: (*upstream).into(),
                api_base: "http://127.0.0.1:9/v1".into(),
                ..Default::default()
            })
            .collect(),
        keys: {
            let mut keys: Vec<pb::VirtualKey> =
                keys.map(|i| wire_key(i, blocked.contains(&i))).collect();
            keys.sort_by(|a, b| a.key_sha256.cmp(&b.key_sha256));
            keys
        },
    }
}

#[test]
fn a_stream_that_missed_versions_gets_one_delta_over_them_or_a_full_snapshot() {
    let versions = [
        snapshot_of(10, 0..20, &[], &[("a", "m1"), ("b", "m2")], "k1"),
        // A key blocked, one added.
        snapshot_of(11, 0..21, &[7], &[("a", "m1"), ("b", "m2")], "k1"),
        // Keys removed, a deployment changed, one added in front (a new order).
        snapshot_of(
            12,
            5..21,
            &[7],
            &[("c", "m3"), ("a", "m1"), ("b", "m2b")],
            "k1",
        ),
        // The block lifted, a deployment removed, the settings changed.
        snapshot_of(13, 5..21, &[], &[("c", "m3"), ("b", "m2b")], "k2"),
    ];
    let mut served = Served::new(versions[0].clone(), None);
    for next in &versions[1..] {
        served.replace(next.clone(), None);
    }
    assert_eq!(served.snapshot(), versions[3]);
    for base in &versions[..3] {
        let CatchUp::Delta { message, version } = served.catch_up(base.version) else {
            panic!("no delta from {}", base.version);
        };
        assert_eq!(version, 13);
        let Some(control_message::Kind::Delta(delta)) = &message.kind else {
            panic!("not a delta");
        };
        let mut held = base.clone();
        common::apply_delta(&mut held, delta);
        assert_eq!(held, versions[3], "from {}", base.version);
        // Built once per version: every stream at that version shares it.
        let CatchUp::Delta { message: again, .. } = served.catch_up(base.version) else {
            panic!("no delta the second time");
        };
        assert!(std::sync::Arc::ptr_eq(&message, &again));
    }
    // From 11 to 13 the key blocked and unblocked again is in the delta once, as it is now.
    let CatchUp::Delta { message, .. } = served.catch_up(11) else {
        panic!("no delta");
    };
    let Some(control_message::Kind::Delta(delta)) = &message.kind else {
        panic!("not a delta");
    };
    assert_eq!(delta.keys, vec![wire_key(7, false)]);
    assert_eq!(delta.removed_key_sha256.len(), 5);
    assert_eq!(delta.deployment_order, ["c", "b"]);
    assert!(delta.settings.is_some());
    assert!(matches!(served.catch_up(13), CatchUp::UpToDate));
    // A version the history never held: a full snapshot.
    let CatchUp::Full(full) = served.catch_up(9) else {
        panic!("no full snapshot for an unknown version");
    };
    assert_eq!(*full, versions[3]);
}

#[test]
fn the_history_is_bounded_and_older_streams_get_a_full_snapshot() {
    let mut served = Served::new(snapshot_of(1, 0..10, &[], &[("a", "m")], "k"), None);
    for version in 2..=200u64 {
        let blocked = [usize::try_from(version % 10).unwrap()];
        served.replace(
            snapshot_of(version, 0..10, &blocked, &[("a", "m")], "k"),
            None,
        );
    }
    assert!(matches!(served.catch_up(1), CatchUp::Full(_)));
    assert!(matches!(served.catch_up(190), CatchUp::Delta { .. }));
}

/// A key with a budget gets its spend pushed (0 at first), then, after a usage
/// batch is stored and acknowledged with its ledger sequence, an update at least that far
/// along the ledger that counts the batch's cost (once, though the batch was sent twice);
/// a key without a budget is not pushed.
async fn spend_reaches_the_filter_and_counts_each_batch_once(store: Store) {
    let server = Server::start(store.clone(), &load(CONFIG)).await;
    let hub = server.hub.clone();
    let budgeted = KeyRow {
        budget: tollgate::store::BudgetFields {
            max_budget: Some(1.0),
            ..Default::default()
        },
        ..key_row(1)
    };
    store.insert_key(&budgeted).await.unwrap();
    store.insert_key(&key_row(2)).await.unwrap();
    hub.refresh().await.unwrap();

    let mut filter = common::FakeFilter::connect(server.address).await;
    let snapshot = filter.next_snapshot().await;
    let key = snapshot
        .keys
        .iter()
        .find(|key| key.key_sha256 == budgeted.token)
        .unwrap();
    assert_eq!(key.max_budget, Some(1.0));
    filter.hello("envoy-s", "1", snapshot.version).await;
    // The first update of the stream is full; the key's budget may reach the spend push
    // in a later one (it reads budgets from the served state every 100 ms).
    let first = filter
        .spend_update_where(|update| update.spend.iter().any(|spend| spend.id == budgeted.token))
        .await;
    assert_eq!(
        first.spend,
        vec![pb::Spend {
            scope: pb::BudgetScope::Key as i32,
            id: budgeted.token.clone(),
            spend: 0.0,
            reset_at_unix_ms: 0,
        }]
    );

    let record = |id: &str, key: &str| pb::UsageRecord {
        id: id.into(),
        key_hash: key.into(),
        model_name: "gpt".into(),
        cost: Some(0.25),
        ..Default::default()
    };
    let batch = UsageBatch {
        records: vec![
            record("s1", &budgeted.token),
            record("s2", &budgeted.token),
            record("s3", &key_row(2).token),
        ],
        batch_id: 1,
    };
    filter
        .send(filter_message::Kind::Usage(batch.clone()))
        .await;
    let ack = filter.next_ack().await;
    assert_eq!(ack.batch_ids, [1]);
    assert!(ack.ledger_seq >= 1, "{ack:?}");
    let counted = filter
        .spend_update_where(|update| {
            update.ledger_seq >= ack.ledger_seq
                && update.spend.iter().any(|spend| spend.spend > 0.0)
        })
        .await;
    assert_eq!(
        counted.spend,
        vec![pb::Spend {
            scope: pb::BudgetScope::Key as i32,
            id: budgeted.token.clone(),
            spend: 0.5,
            reset_at_unix_ms: 0,
        }],
        "only the budgeted key, its two records once"
    );
    // Sent again (a lost acknowledgement): stored once, so the spend does not move.
    filter.send(filter_message::Kind::Usage(batch)).await;
    let again = filter.next_ack().await;
    assert!(again.ledger_seq > ack.ledger_seq);
    let after = filter
        .spend_update_where(|update| update.ledger_seq >= again.ledger_seq)
        .await;
    assert!(after.spend.is_empty(), "nothing changed: {after:?}");
    assert_eq!(
        store
            .spend_total(tollgate::store::SpendScope::Key, &budgeted.token)
            .await
            .unwrap()
            .map(|(spend, _)| spend),
        Some(0.5)
    );
    server.shutdown().await;
}

#[tokio::test]
async fn spend_reaches_the_filter_and_counts_each_batch_once_on_sqlite() {
    let (store, _dir) = common::sqlite_store().await;
    spend_reaches_the_filter_and_counts_each_batch_once(store).await;
}

#[tokio::test]
async fn spend_reaches_the_filter_and_counts_each_batch_once_on_postgres() {
    let database = common::PgTestDb::create().await;
    let store = common::connect(&database.url).await;
    spend_reaches_the_filter_and_counts_each_batch_once(store).await;
}

/// Receives the JSON bodies POSTed to it.
async fn webhook_capture() -> (
    String,
    tokio::sync::mpsc::UnboundedReceiver<serde_json::Value>,
) {
    let (sender, receiver) = tokio::sync::mpsc::unbounded_channel();
    let app = axum::Router::new().route(
        "/hook",
        axum::routing::post(move |axum::Json(body): axum::Json<serde_json::Value>| {
            let sender = sender.clone();
            async move {
                let _ = sender.send(body);
                "ok"
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    (format!("http://{address}/hook"), receiver)
}

/// Crossing a key's soft budget, then its budget, POSTs one event each to the alert webhook
/// in LiteLLM's shape; the same window's alert is claimed once (so replicas send it once).
async fn budget_alerts_reach_the_webhook_once(store: Store) {
    let server = Server::start(store.clone(), &load(CONFIG)).await;
    let hub = server.hub.clone();
    let (url, mut alerts) = webhook_capture().await;
    hub.set_alert_webhook(url);
    let key = KeyRow {
        budget: tollgate::store::BudgetFields {
            max_budget: Some(1.0),
            soft_budget: Some(0.5),
            ..Default::default()
        },
        ..key_row(3)
    };
    store.insert_key(&key).await.unwrap();
    hub.refresh().await.unwrap();
    let mut filter = common::FakeFilter::connect(server.address).await;
    let snapshot = filter.next_snapshot().await;
    filter.hello("envoy-w", "1", snapshot.version).await;
    let spend_of = |update: &pb::SpendUpdate| {
        update
            .spend
            .iter()
            .find(|spend| spend.id == key.token)
            .map(|spend| spend.spend)
    };
    filter
        .spend_update_where(|update| spend_of(update) == Some(0.0))
        .await;
    let charge = |id: u64, cost: f64| {
        filter_message::Kind::Usage(UsageBatch {
            records: vec![pb::UsageRecord {
                id: format!("w{id}"),
                key_hash: key.token.clone(),
                model_name: "gpt".into(),
                cost: Some(cost),
                ..Default::default()
            }],
            batch_id: id,
        })
    };
    filter.send(charge(1, 0.25)).await;
    filter
        .spend_update_where(|update| spend_of(update) == Some(0.25))
        .await;
    filter.send(charge(2, 0.5)).await;
    let soft = tokio::time::timeout(WAIT, alerts.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        soft,
        serde_json::json!({
            "spend": 0.75, "max_budget": 1.0, "soft_budget": 0.5, "token": key.token,
            "customer_id": null, "user_id": null, "team_id": null, "user_email": null,
            "key_alias": "delta-3", "projected_exceeded_date": null, "projected_spend": null,
            "event": "soft_budget_crossed", "event_group": "key",
            "event_message": "Key Budget: Soft Budget Crossed",
        })
    );
    filter
        .spend_update_where(|update| spend_of(update) == Some(0.75))
        .await;
    filter.send(charge(3, 0.5)).await;
    let max = tokio::time::timeout(WAIT, alerts.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(max["event"], "budget_crossed");
    assert_eq!(max["spend"], 1.25);
    // Nothing else was sent, and the window's alerts are taken.
    filter
        .spend_update_where(|update| spend_of(update) == Some(1.25))
        .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(alerts.try_recv().is_err(), "an alert was sent twice");
    for kind in [
        tollgate::store::BudgetAlertKind::Soft,
        tollgate::store::BudgetAlertKind::Max,
    ] {
        assert!(!store
            .claim_budget_alert("key", &key.token, kind, 0)
            .await
            .unwrap());
    }
    server.shutdown().await;
}

#[tokio::test]
async fn budget_alerts_reach_the_webhook_once_on_sqlite() {
    let (store, _dir) = common::sqlite_store().await;
    budget_alerts_reach_the_webhook_once(store).await;
}

#[tokio::test]
async fn budget_alerts_reach_the_webhook_once_on_postgres() {
    let database = common::PgTestDb::create().await;
    let store = common::connect(&database.url).await;
    budget_alerts_reach_the_webhook_once(store).await;
}
