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
use tollgate_core::channel::{self, FilterToken, FILTER_TOKEN_METADATA};
use tollgate_core::proto::{self, filter_message};
use tollgate_core::{ControlPlaneTls, PluginConfig};
use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};
use tonic::codegen::http::uri::PathAndQuery;
use tonic::metadata::MetadataValue;
use tonic::transport::{Certificate, ClientTlsConfig, Endpoint, Identity};
use tonic::{Code, Status};

use crate::shared::{Installed, Shared};

/// How often queued usage is sent, counters are flushed and a shutdown noticed.
const TICK: Duration = Duration::from_millis(250);
/// Longest wait between reconnect attempts while the control plane is away.
const MAX_RECONNECT_DELAY: Duration = Duration::from_secs(5);
/// `FilterSync.Sync` of `api/proto/tollgate/v1/sync.proto`.
const SYNC_METHOD: &str = "/tollgate.v1.FilterSync/Sync";
/// Largest control-plane message accepted. tonic's default (4 MiB) refuses a snapshot of
/// about 27,000 keys; a key takes about 150 bytes, so this holds over 3 million.
const MAX_CONTROL_MESSAGE_BYTES: usize = 512 * 1024 * 1024;

/// Starts the thread of one [`Shared`] (every filter configuration of its bytes); it runs
/// until [`Shared::stop`], then drops its reference (the snapshot goes with the last one).
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
    let token = read_filter_token(&shared.config);
    let mut refusals = RefusalLog::default();
    while !shared.stopped() {
        let ended = session(shared, token.as_ref(), &mut refusals).await;
        // No stream: requests are not kept waiting for leases that cannot come.
        shared.set_quota_connected(false);
        let delivered = match ended {
            Ok(SessionEnd::Stopped) => return,
            Ok(SessionEnd::Closed { delivered }) | Err(SessionError { delivered }) => delivered,
        };
        if delivered {
            delay = base;
            refusals = RefusalLog::default();
        }
        tokio::select! {
            () = tokio::time::sleep(delay) => {}
            // The last filter configuration went while the control plane was away.
            () = shared.stop_requested() => return,
        }
        delay = (delay * 2).min(MAX_RECONNECT_DELAY);
    }
}

enum SessionEnd {
    /// The module is shutting down.
    Stopped,
    /// The server ended the stream, or the module did to get a full snapshot.
    Closed { delivered: bool },
}

struct SessionError {
    delivered: bool,
}

/// The filter token from the environment variable the configuration names; a missing or
/// unusable one is logged, and the stream goes without (a control plane that requires a
/// token refuses it, and says so in its log).
fn read_filter_token(config: &PluginConfig) -> Option<FilterToken> {
    let variable = &config.control_plane_token_env;
    match channel::filter_token(variable, |name| std::env::var(name).ok()) {
        Ok(Some(token)) => Some(token),
        Ok(None) => {
            crate::envoy::log_info(&format!(
                "tollgate: no filter token in {variable}; connecting to the control plane without one"
            ));
            None
        }
        Err(error) => {
            crate::envoy::log_error(&format!(
                "tollgate: {error}; connecting to the control plane without a token"
            ));
            None
        }
    }
}

/// Logs why opening the stream keeps failing once, not at every retry: a wrong token, a
/// bad certificate or an unreachable control plane each get one line until a stream works.
#[derive(Default)]
struct RefusalLog {
    last: Option<String>,
}

impl RefusalLog {
    fn report(&mut self, message: String) {
        if self.last.as_deref() != Some(message.as_str()) {
            crate::envoy::log_warn(&message);
            self.last = Some(message);
        }
    }
}

/// The endpoint for `control_plane_url`, with TLS when the URL is `https://`.
fn endpoint(config: &PluginConfig) -> Result<Endpoint, String> {
    let url = &config.control_plane_url;
    let endpoint = Endpoint::from_shared(url.clone())
        .map_err(|error| format!("bad control_plane_url {url:?}: {error}"))?
        .connect_timeout(Duration::from_secs(1));
    let https = url.starts_with("https://");
    match (&config.control_plane_tls, https) {
        (Some(tls), true) => endpoint
            .tls_config(client_tls(tls)?)
            .map_err(|error| format!("control_plane_tls: {error}")),
        (None, false) => Ok(endpoint),
        (None, true) => Err(format!(
            "control_plane_url {url} is https:// but control_plane_tls (its ca_file) is not set"
        )),
        (Some(_), false) => Err(format!(
            "control_plane_tls is set but control_plane_url {url} is not https://"
        )),
    }
}

/// Reads the CA and, for mutual TLS, the client certificate and key.
fn client_tls(tls: &ControlPlaneTls) -> Result<ClientTlsConfig, String> {
    let read = |what: &str, path: &str| {
        std::fs::read(path).map_err(|error| format!("control_plane_tls.{what} {path}: {error}"))
    };
    let mut config = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(read("ca_file", &tls.ca_file)?));
    match (&tls.client_cert_file, &tls.client_key_file) {
        (Some(cert), Some(key)) => {
            config = config.identity(Identity::from_pem(
                read("client_cert_file", cert)?,
                read("client_key_file", key)?,
            ));
        }
        (None, None) => {}
        _ => {
            return Err(
                "control_plane_tls needs both client_cert_file and client_key_file, or neither"
                    .to_string(),
            )
        }
    }
    if let Some(name) = &tls.server_name {
        config = config.domain_name(name.clone());
    }
    Ok(config)
}

/// One stream, from connect to its end.
async fn session(
    shared: &Shared,
    token: Option<&FilterToken>,
    refusals: &mut RefusalLog,
) -> Result<SessionEnd, SessionError> {
    let mut connected = false;
    // Whether a message changed the state: proof that the stream works (resets the backoff).
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
    let endpoint = endpoint(&shared.config).map_err(|error| {
        refusals.report(format!(
            "tollgate: cannot open the control-plane stream: {error}"
        ));
        SessionError { delivered: false }
    })?;
    let channel = endpoint.connect().await.map_err(|error| {
        refusals.report(format!(
            "tollgate: cannot open the control-plane stream to {url}: {}",
            error_chain(&error)
        ));
        SessionError { delivered: false }
    })?;
    let mut grpc =
        tonic::client::Grpc::new(channel).max_decoding_message_size(MAX_CONTROL_MESSAGE_BYTES);
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
    let mut request = tonic::Request::new(ReceiverStream::new(receiver));
    if let Some(token) = token {
        // filter_token admits only visible ASCII, which a metadata value always holds.
        if let Ok(value) = MetadataValue::try_from(token.expose()) {
            request.metadata_mut().insert(FILTER_TOKEN_METADATA, value);
        }
    }
    let response = grpc
        .streaming(request, PathAndQuery::from_static(SYNC_METHOD), SyncCodec)
        .await
        .map_err(|status| {
            let why = if status.code() == Code::Unauthenticated {
                format!(
                    "{}; check {}",
                    status.message(),
                    shared.config.control_plane_token_env
                )
            } else {
                error_chain(&status)
            };
            refusals.report(format!(
                "tollgate: cannot open the control-plane stream to {url}: {why}"
            ));
            SessionError { delivered: false }
        })?;
    let mut inbound = response.into_inner();
    // Rate limits ask this stream for leases from now on.
    shared.set_quota_connected(true);
    let mut tick = tokio::time::interval(TICK);
    loop {
        tokio::select! {
            message = inbound.message() => match message {
                Ok(Some(message)) => {
                    if !connected {
                        crate::envoy::log_info(&format!("tollgate: connected to the control plane at {url}"));
                        connected = true;
                    }
                    if let Some(ack) = proto::acknowledged_batches(&message) {
                        shared.usage().acknowledge(&ack.batch_ids, ack.ledger_seq);
                        // Batches wait for room in flight (UsageQueue::MAX_IN_FLIGHT).
                        send_usage(shared, &outbound).map_err(|()| fail("send", &"stream closed", delivered))?;
                        continue;
                    }
                    if let Some(update) = proto::spend_update(&message) {
                        shared.usage().spend.apply(&update);
                        continue;
                    }
                    if let Some(grant) = proto::quota_grant(&message) {
                        shared.apply_grant(&grant);
                        send_quota_asks(shared, &outbound).map_err(|()| fail("send", &"stream closed", delivered))?;
                        continue;
                    }
                    match shared.install(&message) {
                        Installed::Version(version) => {
                            delivered = true;
                            let ack = proto::FilterMessage {
                                kind: Some(filter_message::Kind::Ack(proto::SnapshotAck { version })),
                            };
                            if outbound.send(ack.encode_to_vec()).await.is_err() {
                                return Err(fail("send", &"stream closed", delivered));
                            }
                        }
                        Installed::Nothing => {}
                        // A new stream starts with a full snapshot.
                        Installed::NeedsSnapshot => return Ok(SessionEnd::Closed { delivered }),
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
            () = shared.quota_asks.notified() => {
                send_quota_asks(shared, &outbound).map_err(|()| fail("send", &"stream closed", delivered))?;
            }
            _ = tick.tick() => {
                if shared.stopped() {
                    return Ok(SessionEnd::Stopped);
                }
                shared.quota_tick();
                // Asks a full channel held back.
                send_quota_asks(shared, &outbound).map_err(|()| fail("send", &"stream closed", delivered))?;
                send_usage(shared, &outbound).map_err(|()| fail("send", &"stream closed", delivered))?;
            }
        }
    }
}

/// An error with its sources (a TLS failure hides under "transport error").
fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

/// Sends the quota book's asks for the authority. Never waits: this loop also ends the
/// waits the authority leaves too long (its tick), which a stalled control plane must not
/// hold up; with the channel full the asks stay in the book for the next tick.
fn send_quota_asks(shared: &Shared, outbound: &mpsc::Sender<Vec<u8>>) -> Result<(), ()> {
    let Some(permit) = reserve(outbound)? else {
        return Ok(());
    };
    if let Some(request) = shared.quota().take_request() {
        permit.send(proto::quota_message(request));
    }
    Ok(())
}

/// Sends what the usage queue has for this stream (as much as may be in flight):
/// unacknowledged batches after a reconnect, then new ones. Never waits, as
/// [`send_quota_asks`]; what the channel has no room for goes on a later tick or
/// acknowledgement.
fn send_usage(shared: &Shared, outbound: &mpsc::Sender<Vec<u8>>) -> Result<(), ()> {
    loop {
        let Some(permit) = reserve(outbound).inspect_err(|()| shared.usage().stream_lost())? else {
            return Ok(());
        };
        let Some(message) = shared.usage().next_message().map(<[u8]>::to_vec) else {
            return Ok(());
        };
        permit.send(message);
    }
}

/// Room for one message on the stream: `None` when the channel is full, `Err` when the
/// stream is gone.
fn reserve(outbound: &mpsc::Sender<Vec<u8>>) -> Result<Option<mpsc::Permit<'_, Vec<u8>>>, ()> {
    match outbound.try_reserve() {
        Ok(permit) => Ok(Some(permit)),
        Err(mpsc::error::TrySendError::Full(())) => Ok(None),
        Err(mpsc::error::TrySendError::Closed(())) => Err(()),
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
