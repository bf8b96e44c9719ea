//! The control plane's gRPC server: the composition root that puts the filter protocol
//! ([`crate::sync`]), the management API ([`crate::grpc_api`]) and reflection on one port,
//! and stops them together.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tonic::transport::server::TcpIncoming;

use crate::manage::Manager;
use crate::proto;
use crate::sync::SyncHub;

/// Serves `FilterSync`, `Management` and gRPC reflection on `listener` until `shutdown`
/// completes; then ends the open filter streams so the server can stop.
pub async fn serve(
    hub: Arc<SyncHub>,
    listener: TcpListener,
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
    tonic::transport::Server::builder()
        // Envoy keeps one HTTP/2 connection per VM open for hours; pings notice dead peers.
        .http2_keepalive_interval(Some(Duration::from_secs(30)))
        .http2_keepalive_timeout(Some(Duration::from_secs(10)))
        .add_service(hub.service())
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
    /// The server failed.
    #[error("gRPC server: {0}")]
    Transport(tonic::transport::Error),
}
