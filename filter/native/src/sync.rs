//! The module's one stream to the control plane, on a thread of its own: Envoy's threads
//! never wait on it. It installs each snapshot it receives for every worker (decoding happens
//! here, not on a request) and sends the usage records the workers queue.

use std::io;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Buf, BufMut};
use prost::Message;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tollgate_core::proto::{self, filter_message};
use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};
use tonic::codegen::http::uri::PathAndQuery;
use tonic::Status;

use crate::shared::Shared;

/// How often queued usage is sent, counters are flushed and a shutdown noticed.
const TICK: Duration = Duration::from_millis(250);
/// Longest wait between reconnect attempts while the control plane is away.
const MAX_RECONNECT_DELAY: Duration = Duration::from_secs(5);
/// `FilterSync.Sync` of `api/proto/tollgate/v1/sync.proto`.
const SYNC_METHOD: &str = "/tollgate.v1.FilterSync/Sync";

/// Starts the thread; it runs until [`Shared::stop`].
pub fn spawn(shared: Arc<Shared>) -> io::Result<()> {
    std::thread::Builder::new()
        .name("tollgate-sync".to_string())
        .spawn(move || {
            let runtime = match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(runtime) => runtime,
                Err(error) => {
                    crate::envoy::log_error(&format!(
                        "tollgate: no runtime for the control-plane stream: {error}"
                    ));
                    return;
                }
            };
            runtime.block_on(async {
                let stats = tokio::spawn(flush_stats_every_tick(shared.clone()));
                run(&shared).await;
                stats.abort();
            });
        })
        .map(drop)
}

/// Has Envoy's main thread hand the counters over every tick, whether or not the control
/// plane is reachable.
async fn flush_stats_every_tick(shared: Arc<Shared>) {
    let mut tick = tokio::time::interval(TICK);
    while !shared.stopped() {
        tick.tick().await;
        shared.schedule_stats_flush();
    }
}

/// Connects, serves the stream until it breaks, and reconnects with exponential backoff
/// (reset once a stream delivers a message).
async fn run(shared: &Shared) {
    let base = Duration::from_millis(shared.config.reconnect_ms.max(50));
    let mut delay = base;
    while !shared.stopped() {
        let delivered = match session(shared).await {
            Ok(SessionEnd::Stopped) => return,
            Ok(SessionEnd::Closed { delivered }) | Err(SessionError { delivered }) => delivered,
        };
        if delivered {
            delay = base;
        }
        tokio::time::sleep(delay).await;
        delay = (delay * 2).min(MAX_RECONNECT_DELAY);
    }
}

enum SessionEnd {
    /// The module is shutting down.
    Stopped,
    /// The server ended the stream.
    Closed { delivered: bool },
}

struct SessionError {
    delivered: bool,
}

/// One stream, from connect to its end.
async fn session(shared: &Shared) -> Result<SessionEnd, SessionError> {
    let mut delivered = false;
    let fail = |what: &str, error: &dyn std::fmt::Display, delivered: bool| {
        if delivered {
            crate::envoy::log_warn(&format!(
                "tollgate: lost the control-plane stream ({what}: {error}); serving the last snapshot and reconnecting"
            ));
        }
        SessionError { delivered }
    };
    let url = &shared.config.control_plane_url;
    let endpoint = tonic::transport::Endpoint::from_shared(url.clone())
        .map_err(|error| fail("bad control_plane_url", &error, true))?
        .connect_timeout(Duration::from_secs(1));
    let channel = endpoint
        .connect()
        .await
        .map_err(|error| fail("connect", &error, false))?;
    let mut grpc = tonic::client::Grpc::new(channel);
    grpc.ready()
        .await
        .map_err(|error| fail("connect", &error, false))?;

    let (outbound, receiver) = mpsc::channel::<Vec<u8>>(64);
    let hello = proto::FilterMessage {
        kind: Some(filter_message::Kind::Hello(proto::Hello {
            node_id: shared.config.node_id.clone(),
            vm_id: shared.instance_id.clone(),
            snapshot_version: shared.state_version(),
            filter_version: env!("CARGO_PKG_VERSION").to_string(),
        })),
    }
    .encode_to_vec();
    // Batches the last stream sent but the control plane did not acknowledge go again on
    // this one.
    shared.usage().stream_lost();
    // The channel is empty: this cannot wait.
    let _ = outbound.send(hello).await;
    let response = grpc
        .streaming(
            tonic::Request::new(ReceiverStream::new(receiver)),
            PathAndQuery::from_static(SYNC_METHOD),
            SyncCodec,
        )
        .await
        .map_err(|status| fail("open", &status, false))?;
    let mut inbound = response.into_inner();
    let mut tick = tokio::time::interval(TICK);
    loop {
        tokio::select! {
            message = inbound.message() => match message {
                Ok(Some(message)) => {
                    if !delivered {
                        crate::envoy::log_info(&format!("tollgate: connected to the control plane at {url}"));
                        delivered = true;
                    }
                    if let Some(batch_ids) = proto::acknowledged_batches(&message) {
                        shared.usage().acknowledge(&batch_ids);
                        continue;
                    }
                    if let Some(version) = shared.install(&message) {
                        let ack = proto::FilterMessage {
                            kind: Some(filter_message::Kind::Ack(proto::SnapshotAck { version })),
                        };
                        if outbound.send(ack.encode_to_vec()).await.is_err() {
                            return Err(fail("send", &"stream closed", delivered));
                        }
                    }
                }
                Ok(None) => {
                    if delivered {
                        crate::envoy::log_warn("tollgate: the control plane closed the stream; serving the last snapshot and reconnecting");
                    }
                    return Ok(SessionEnd::Closed { delivered });
                }
                Err(status) => return Err(fail("receive", &status, delivered)),
            },
            _ = tick.tick() => {
                if shared.stopped() {
                    return Ok(SessionEnd::Stopped);
                }
                send_usage(shared, &outbound).await.map_err(|()| fail("send", &"stream closed", delivered))?;
            }
        }
    }
}

/// Sends what the usage queue has for this stream: unacknowledged batches after a
/// reconnect, then new ones. A send that fails leaves them all for the next stream.
async fn send_usage(shared: &Shared, outbound: &mpsc::Sender<Vec<u8>>) -> Result<(), ()> {
    loop {
        // Copied out so the queue's lock is not held across the await.
        let Some(message) = shared.usage().next_message().map(<[u8]>::to_vec) else {
            return Ok(());
        };
        if outbound.send(message).await.is_err() {
            shared.usage().stream_lost();
            return Err(());
        }
    }
}

/// Sends encoded [`proto::FilterMessage`]s (usage batches are kept encoded until
/// acknowledged, and resent as they are) and receives control-plane messages as their bytes,
/// which [`tollgate_core::State::check_control_message`] decodes one key at a time.
struct SyncCodec;

impl Codec for SyncCodec {
    type Encode = Vec<u8>;
    type Decode = Vec<u8>;
    type Encoder = BytesEncoder;
    type Decoder = BytesDecoder;

    fn encoder(&mut self) -> Self::Encoder {
        BytesEncoder
    }

    fn decoder(&mut self) -> Self::Decoder {
        BytesDecoder
    }
}

struct BytesEncoder;

impl Encoder for BytesEncoder {
    type Item = Vec<u8>;
    type Error = Status;

    fn encode(&mut self, item: Self::Item, dst: &mut EncodeBuf<'_>) -> Result<(), Self::Error> {
        dst.put_slice(&item);
        Ok(())
    }
}

struct BytesDecoder;

impl Decoder for BytesDecoder {
    type Item = Vec<u8>;
    type Error = Status;

    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<Self::Item>, Self::Error> {
        let mut message = vec![0; src.remaining()];
        src.copy_to_slice(&mut message);
        Ok(Some(message))
    }
}
