#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
//! A delta onto a version the filter does not hold is refused, and the filter gets a full
//! snapshot instead (it drops its stream; every new stream starts with one), in every VM of
//! both builds. A control plane of the test's own sends the wrong delta.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use tollgate::proto::filter_sync_server::{FilterSync, FilterSyncServer};
use tollgate::proto::{self as pb, control_message};
use tollgate::store::sha256_hex;
use tollgate_e2e::{counter, eventually, Envoy, FilterBuild, Mock, MOCK_OPENAI_KEY};
use tonic::{Request, Response, Status, Streaming};

const MASTER_KEY: &str = "sk-master-resync";
/// A key of every snapshot.
const FIRST_KEY: &str = "sk-resync-first";
/// A key only the snapshot after the wrong delta has (the delta carries it too, but is
/// refused).
const SECOND_KEY: &str = "sk-resync-second";

/// Plays the control plane: each stream gets a full snapshot; once `wrong_delta` is set,
/// the streams opened before it get a delta onto a version they do not hold, and streams
/// opened after it a snapshot that also holds [`SECOND_KEY`].
#[derive(Clone)]
struct ControlPlane {
    wrong_delta: Arc<watch::Sender<bool>>,
    streams_opened: Arc<AtomicUsize>,
    mock_url: String,
}

impl ControlPlane {
    fn snapshot(&self, version: u64, keys: &[&str]) -> pb::ControlMessage {
        pb::ControlMessage {
            kind: Some(control_message::Kind::Snapshot(pb::Snapshot {
                version,
                settings: Some(pb::Settings {
                    master_key_sha256: sha256_hex(MASTER_KEY),
                    ..Default::default()
                }),
                deployments: vec![pb::Deployment {
                    id: "gpt-mock".into(),
                    model_name: "gpt-mock".into(),
                    provider: pb::ProviderKind::Openai as i32,
                    provider_name: "openai".into(),
                    upstream_model: "mock-gpt-4o".into(),
                    api_base: format!("{}/v1", self.mock_url),
                    api_key: MOCK_OPENAI_KEY.into(),
                    ..Default::default()
                }],
                keys: keys
                    .iter()
                    .map(|key| pb::VirtualKey {
                        key_sha256: sha256_hex(key),
                        ..Default::default()
                    })
                    .collect(),
            })),
        }
    }
}

#[tonic::async_trait]
impl FilterSync for ControlPlane {
    type SyncStream = ReceiverStream<Result<pb::ControlMessage, Status>>;

    async fn sync(
        &self,
        request: Request<Streaming<pb::FilterMessage>>,
    ) -> Result<Response<Self::SyncStream>, Status> {
        self.streams_opened.fetch_add(1, Ordering::SeqCst);
        let mut inbound = request.into_inner();
        let (sender, receiver) = mpsc::channel(4);
        let mut wrong_delta = self.wrong_delta.subscribe();
        let before_the_delta = !*wrong_delta.borrow_and_update();
        let this = self.clone();
        tokio::spawn(async move {
            let first = if before_the_delta {
                this.snapshot(10, &[FIRST_KEY])
            } else {
                this.snapshot(20, &[FIRST_KEY, SECOND_KEY])
            };
            if sender.send(Ok(first)).await.is_err() {
                return;
            }
            if before_the_delta && wrong_delta.changed().await.is_ok() {
                let delta = pb::ControlMessage {
                    kind: Some(control_message::Kind::Delta(pb::SnapshotDelta {
                        // The filter holds 10.
                        base_version: 9,
                        version: 15,
                        keys: vec![pb::VirtualKey {
                            key_sha256: sha256_hex(SECOND_KEY),
                            ..Default::default()
                        }],
                        ..Default::default()
                    })),
                };
                let _ = sender.send(Ok(delta)).await;
            }
            // Hello and acknowledgements, until the filter drops the stream.
            while let Ok(Some(_)) = inbound.message().await {}
        });
        Ok(Response::new(ReceiverStream::new(receiver)))
    }
}

/// Whether every worker serves `key`: each request opens a new connection, which Envoy
/// hands to one of its two workers, so 12 agreeing answers cover both.
fn every_worker_serves(envoy: &Envoy, key: &str) -> bool {
    (0..12).all(|_| envoy.model_ids(key) == ["gpt-mock"])
}

fn snapshot_counters(envoy: &Envoy) -> (u64, u64, u64) {
    let read = |name| counter(&envoy.admin_url, name).unwrap();
    (
        read("tollgate.snapshots_installed"),
        read("tollgate.snapshot_deltas_installed"),
        read("tollgate.snapshot_resyncs"),
    )
}

#[test]
fn a_delta_onto_another_version_is_refused_and_a_full_snapshot_follows() {
    let dir = tempfile::tempdir().unwrap();
    let mock = Mock::start(dir.path()).unwrap();
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let listener = runtime
        .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
        .unwrap();
    let grpc_port = listener.local_addr().unwrap().port();
    let control_plane = ControlPlane {
        wrong_delta: Arc::new(watch::Sender::new(false)),
        streams_opened: Arc::new(AtomicUsize::new(0)),
        mock_url: mock.url.clone(),
    };
    runtime.spawn(
        tonic::transport::Server::builder()
            .add_service(FilterSyncServer::new(control_plane.clone()))
            .serve_with_incoming(tonic::transport::server::TcpIncoming::from(listener)),
    );
    let envoy = Envoy::start(dir.path(), "envoy-resync", grpc_port).unwrap();
    let streams = match FilterBuild::chosen().unwrap() {
        FilterBuild::Wasm(_) => 3,
        // One for the module: the gateway listener's and the attempts listener's filter
        // configurations (the same bytes) share it.
        FilterBuild::Native(_) => 1,
    };

    assert!(
        eventually(Duration::from_secs(30), || every_worker_serves(
            &envoy, FIRST_KEY
        )),
        "the first snapshot never arrived"
    );
    assert!(envoy.model_ids(SECOND_KEY).is_empty());
    assert!(eventually(Duration::from_secs(5), || snapshot_counters(
        &envoy
    ) == (streams, 0, 0)));
    assert_eq!(
        control_plane.streams_opened.load(Ordering::SeqCst),
        streams as usize
    );

    control_plane.wrong_delta.send_replace(true);
    // The second key only ever reaches the filter in a full snapshot on a new stream.
    assert!(
        eventually(Duration::from_secs(30), || every_worker_serves(
            &envoy, SECOND_KEY
        )),
        "no full snapshot after the refused delta"
    );
    assert!(
        eventually(Duration::from_secs(5), || snapshot_counters(&envoy)
            == (2 * streams, 0, streams)),
        "snapshots, deltas, resyncs: {:?}",
        snapshot_counters(&envoy)
    );
    assert_eq!(
        control_plane.streams_opened.load(Ordering::SeqCst),
        2 * streams as usize
    );
    assert!(every_worker_serves(&envoy, FIRST_KEY));
}
