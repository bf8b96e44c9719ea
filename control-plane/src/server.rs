//! The control plane's gRPC server: the composition root that puts the filter protocol
//! ([`crate::sync`]), the management API ([`crate::grpc_api`]) and reflection on one port,
//! secures the port ([`crate::channel`]: the filter token, TLS) and stops it all together.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::server::TcpIncoming;

use crate::channel::{ChannelSecurity, FilterAuth};
use crate::manage::Manager;
use crate::proto;
use crate::sync::SyncHub;

/// Serves `FilterSync`, `Management` and gRPC reflection on `listener`, without filter
/// tokens or TLS (tests and loopback setups), until `shutdown` completes.
pub async fn serve(
    hub: Arc<SyncHub>,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), ServeError> {
    serve_secured(hub, listener, &ChannelSecurity::default(), shutdown).await
}

/// Serves `FilterSync` (each stream checked against `security`'s filter token), `Management`
/// and gRPC reflection on `listener`, over TLS when `security` has it, until `shutdown`
/// completes; then ends the open filter streams so the server can stop.
pub async fn serve_secured(
    hub: Arc<SyncHub>,
    listener: TcpListener,
    security: &ChannelSecurity,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), ServeError> {
    let reflection = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(proto::FILE_DESCRIPTOR_SET)
        .build_v1()
        .map_err(ServeError::Reflection)?;
    let closer = hub.clone();
    let signal = async move {
        shutdown.await;
        closer.close_streams();
    };
    let mut builder = tonic::transport::Server::builder();
    if let Some(tls) = &security.tls {
        builder = builder.tls_config(tls.clone()).map_err(ServeError::Tls)?;
    }
    let filter_sync = InterceptedService::new(
        hub.service(),
        FilterAuth::new(security.filter_token.as_ref()),
    );
    builder
        // Envoy keeps one HTTP/2 connection per VM open for hours; pings notice dead peers.
        .http2_keepalive_interval(Some(Duration::from_secs(30)))
        .http2_keepalive_timeout(Some(Duration::from_secs(10)))
        .add_service(filter_sync)
        .add_service(crate::grpc_api::service(Manager::new(hub.clone())))
        .add_service(reflection)
        .serve_with_incoming_shutdown(TcpIncoming::from(listener), signal)
        .await
        .map_err(ServeError::Transport)
}

/// Why the gRPC server stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// The reflection service could not read the descriptor set.
    #[error("gRPC reflection: {0}")]
    Reflection(tonic_reflection::server::Error),
    /// The TLS configuration was refused.
    #[error("gRPC TLS: {}", error_chain(.0))]
    Tls(tonic::transport::Error),
    /// The server failed.
    #[error("gRPC server: {0}")]
    Transport(tonic::transport::Error),
}

/// An error with its sources: tonic's transport errors keep the reason (a bad PEM file, a
/// TLS alert) in a source.
pub fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}
