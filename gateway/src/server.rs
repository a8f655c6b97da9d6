//! The gRPC server: wallet service, standard health checks and server reflection, with the edge limits.
//! Takes the world as arguments (listener, engine, shutdown signal) so tests and the binary wire it alike.

use std::future::Future;
use std::time::Duration;

use tally_proto::v1::wallet_service_server::WalletServiceServer;
use tokio::net::TcpListener;
use tokio_stream::wrappers::TcpListenerStream;
use tonic::transport::Server;

use crate::limits::{MESSAGE_BYTES_MAX, REQUEST_TIMEOUT_MS, STREAMS_PER_CONNECTION_MAX};
use crate::service::{Engine, WalletApi};

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("cannot build the reflection service: {0}")]
    Reflection(#[from] tonic_reflection::server::Error),
    #[error("grpc server failed: {0}")]
    Transport(#[from] tonic::transport::Error),
}

/// Serves until `shutdown` resolves, then stops accepting, lets in-flight calls finish, and returns.
pub async fn run(listener: TcpListener, engine: Engine, shutdown: impl Future<Output = ()> + Send) -> Result<(), ServeError> {
    let (health, health_service) = tonic_health::server::health_reporter();
    health.set_serving::<WalletServiceServer<WalletApi>>().await;
    let reflection = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(tally_proto::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1()?;
    let wallets = WalletServiceServer::new(WalletApi::new(engine))
        .max_decoding_message_size(MESSAGE_BYTES_MAX)
        .max_encoding_message_size(MESSAGE_BYTES_MAX);
    let shutdown = async move {
        shutdown.await;
        tracing::info!("shutting down: refusing new calls, finishing the ones in flight");
        health.set_not_serving::<WalletServiceServer<WalletApi>>().await;
    };
    Server::builder()
        .timeout(Duration::from_millis(REQUEST_TIMEOUT_MS))
        .max_concurrent_streams(Some(STREAMS_PER_CONNECTION_MAX))
        .tcp_nodelay(true)
        .add_service(health_service)
        .add_service(reflection)
        .add_service(wallets)
        .serve_with_incoming_shutdown(TcpListenerStream::new(listener), shutdown)
        .await?;
    Ok(())
}
